"""Files: which inputs a run reads, and each one as a normalised waveform (or the reason it failed).

The one walker of input folders lives here: ``infer.py``, ``recon encode``/``decode`` and the
training data all list their files with :func:`find_files`, in the same deterministic order.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import soundfile as sf
from torch.utils.data import Dataset, Sampler

from . import distributed
from .audio import AudioLoadError, AudioSpec, load_audio, normalisation_gain, normalise
from .outputs import describe_error

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".m4a")
# Inputs with these suffixes are lists of files (one per line, or a CSV with a "path" column).
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv", ".tsv")
MIN_SECONDS = 0.1
COMPRESSED_BYTES_PER_SECOND = 16000  # 128 kbit/s: a duration estimate for formats without a soundfile header


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


def output_relpath(relpath: str) -> str:
    """Where an input's outputs go, relative to each output folder: its name with a .wav suffix."""
    return Path(relpath).with_suffix(".wav").as_posix()


class InferenceFiles(Dataset):
    """Whole input files (normalised once, like AudioLDM2 does per clip), or the reason one failed.

    Items: ``{"index", "relpath", "wav" [samples] | None, "level", "error" str | None}``, where
    ``level`` is the factor that restores the file's own loudness (codec files record it). A file
    that cannot be read is an item with an error, so the other files go on.
    """

    def __init__(self, inputs: list[str | Path], spec: AudioSpec = AudioSpec()):
        self.spec = spec
        self.items: list[tuple[Path, str]] = find_files(inputs)
        seen: dict[str, Path] = {}
        for path, rel in self.items:
            out = output_relpath(rel)
            if out in seen:
                raise ValueError(f"{path} and {seen[out]} would both be written as {out}; rename one")
            seen[out] = path

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, rel = self.items[index]
        item = {"index": index, "relpath": rel, "path": str(path), "wav": None, "level": 1.0, "error": None}
        try:
            wav = load_audio(path, self.spec)
            if wav.numel() < MIN_SECONDS * self.spec.sample_rate:
                raise AudioLoadError(path, f"too short: {wav.numel() / self.spec.sample_rate:.3f} s < {MIN_SECONDS} s")
            item["wav"] = normalise(wav)
            item["level"] = normalisation_gain(wav)
        except AudioLoadError as err:
            # Reported in errors.csv and on stderr by the writer; the other files go on.
            item["error"] = err.reason
        except Exception as err:  # e.g. MemoryError resampling a huge file: still one file's error
            item["error"] = describe_error(err)
        return item


def collate_files(items: list[dict]) -> list[dict]:
    return items


def file_durations(paths: list[Path]) -> list[float]:
    """Each file's duration in seconds from its header (no audio is decoded), to plan the batches.

    Formats soundfile cannot open (mp3, m4a) are estimated from their size at 128 kbit/s rather
    than decoded; a file that cannot be opened at all weighs 0 (the loader reports its error).
    """
    out = []
    for path in paths:
        try:
            info = sf.info(str(path))
            out.append(info.frames / info.samplerate)
        except Exception:  # not a soundfile format, or not audio: an estimate is enough for a plan
            try:
                out.append(path.stat().st_size / COMPRESSED_BYTES_PER_SECOND)
            except OSError:
                out.append(0.0)
    return out


class FileBatches(Sampler[list[int]]):
    """The batch plan of a run: which files share a step, and which rank runs each batch.

    Files are ordered by duration (longest first, then by position), so a batch holds files of
    similar length and its forward passes are full; consecutive files form batches of at most
    ``batch_size`` files and ``batch_size`` segments (a longer file is a batch of its own, so the
    outputs a batch holds in memory stay small), with fewer files per batch where ``batch_size``
    would leave a rank without work. The plan depends on the file
    list alone: a resumed run forms the same batches, so every file sees the same forward passes as
    in an uninterrupted run. Batches whose files are all ``finished`` are dropped.

    Ranks get batches by duration, not by count: each batch, longest first, goes to the rank with
    the least work so far (work = padded seconds + ``FILE_OVERHEAD_S`` per file). The rank and
    world size are read when the loader is iterated (after the process group exists).
    """

    FILE_OVERHEAD_S = 0.05  # loading, writing and scoring a file, in seconds of audio, roughly

    def __init__(self, durations: list[float], batch_size: int, world: int = 1, finished: set[int] = frozenset(),
                 segment_seconds: float = AudioSpec().duration):
        self.durations = durations
        order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
        size = max(1, min(batch_size, math.ceil(len(order) / max(world, 1))))
        batches: list[list[int]] = []
        segments = 0
        for i in order:
            need = max(1, math.ceil(durations[i] / segment_seconds))
            if not batches or len(batches[-1]) == size or segments + need > size:
                batches.append([])
                segments = 0
            batches[-1].append(i)
            segments += need
        self.batches = [b for b in batches if not set(b) <= finished]

    def cost(self, batch: list[int]) -> float:
        # The tail segment is padded; a rough 1.28 s quantum is enough to weigh batches.
        return sum(math.ceil(self.durations[i] / 1.28) * 1.28 + self.FILE_OVERHEAD_S for i in batch)

    def shares(self, world: int) -> list[list[list[int]]]:
        """Each rank's batches, in plan order."""
        load = [0.0] * world
        owner = []
        for batch in self.batches:
            rank = min(range(world), key=lambda r: (load[r], r))
            load[rank] += self.cost(batch)
            owner.append(rank)
        return [[b for b, o in zip(self.batches, owner) if o == r] for r in range(world)]

    def _mine(self) -> list[list[int]]:
        return self.shares(distributed.world_size())[distributed.rank()]

    def __iter__(self):
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())
