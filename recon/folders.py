"""The one walker of input folders and list files, without torch (``recon info`` lists files with it too)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".m4a")
# Inputs with these suffixes are lists of files (one per line, or a CSV with a "path" column).
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv", ".tsv")


def find_audio_files(root: str | Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """Files under ``root`` (recursive) whose suffix is one of ``extensions``, or ``[root]`` for a
    single file, in a deterministic (sorted) order."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)


def read_list(path: Path) -> list[Path]:
    """The files a list file names, in its order: one path per line (blank lines and lines starting
    with ``#`` skipped), or a CSV (``.csv``/``.tsv``) with a ``path`` column. Relative paths resolve
    against the list file's folder."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if "path" not in (rows.fieldnames or []):
            raise ValueError(f"{path} has no 'path' column (columns: {', '.join(rows.fieldnames or []) or 'none'})")
        names = [row["path"].strip() for row in rows if (row["path"] or "").strip()]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [path.parent / Path(name).expanduser() for name in names]


def _listed(path: Path) -> list[tuple[Path, str]]:
    """A list file's entries with their names: relative to the list's folder where they lie under it,
    else relative to the deepest folder all of them share (never with ``..``)."""
    paths = [Path(os.path.normpath(p)) for p in read_list(path)]
    if not paths:
        return []
    base = Path(os.path.normpath(path.parent))
    if not all(p.is_relative_to(base) for p in paths):
        base = Path(os.path.commonpath([p.parent for p in paths]))
    return [(p, p.relative_to(base).as_posix()) for p in paths]


def find_files(entries: list[str | Path], extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[tuple[Path, str]]:
    """(path, name relative to its folder argument) of every file the command-line ``entries`` name.

    A folder contributes its files with ``extensions`` (recursively, names relative to the folder);
    a list file (suffix in ``LIST_SUFFIXES``, see :func:`read_list`) the files it names, which need
    not exist yet (a missing one is that file's error, not the run's); another file, itself under its
    own name.
    """
    found: list[tuple[Path, str]] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found += [(p, p.relative_to(entry).as_posix()) for p in find_audio_files(entry, extensions)]
        elif entry.is_file() and entry.suffix.lower() in LIST_SUFFIXES:
            found += _listed(entry)
        elif entry.is_file():
            found.append((entry, entry.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    return found
