"""The one walker of input folders, without torch (``recon info`` lists files with it too)."""

from __future__ import annotations

from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".m4a")


def find_audio_files(root: str | Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """Files under ``root`` (recursive) whose suffix is one of ``extensions``, or ``[root]`` for a
    single file, in a deterministic (sorted) order."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)


def find_files(entries: list[str | Path], extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[tuple[Path, str]]:
    """(path, name relative to its folder argument) of every file the command-line ``entries`` name.

    A folder contributes its files with ``extensions`` (recursively, names relative to the folder);
    a file contributes itself under its own name.
    """
    found: list[tuple[Path, str]] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found += [(p, p.relative_to(entry).as_posix()) for p in find_audio_files(entry, extensions)]
        elif entry.is_file():
            found.append((entry, entry.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    return found
