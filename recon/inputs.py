"""Files: which inputs a run reads, and each one as a normalised waveform (or the reason it failed).

The one walker of input folders is :mod:`recon.folders` (re-exported here): ``infer.py``, ``recon
encode``/``decode``/``info`` and the training data all list their files with :func:`find_files`,
in the same deterministic order.
"""

from __future__ import annotations

import math
from pathlib import Path

import soundfile as sf
from torch.utils.data import Dataset, Sampler

from . import distributed
from .audio_source import AudioSource
from .audio import AudioLoadError, AudioSpec, load_audio, normalisation_gain, normalise, source_format
from .folders import AUDIO_EXTENSIONS, LIST_SUFFIXES, find_audio_files, find_files, read_list  # noqa: F401 (re-exported)
from .outputs import describe_error

MIN_SECONDS = 0.1
COMPRESSED_BYTES_PER_SECOND = 16000  # 128 kbit/s: a duration estimate for formats without a soundfile header


def output_relpath(relpath: str) -> str:
    """Where an input's outputs go, relative to each output folder: its name with a .wav suffix."""
    return Path(relpath).with_suffix(".wav").as_posix()


class InferenceFiles(Dataset):
    """Whole input files (normalised once, like AudioLDM2 does per clip), or the reason one failed.

    Items: ``{"index", "relpath", "wav" [samples] | None, "level", "error" str | None}``, where
    ``level`` is the factor that restores the file's own loudness (codec files record it). A file
    that cannot be read is an item with an error, so the other files go on. A file longer than
    ``stream_above`` seconds (by its header) is not loaded: its item carries an
    :class:`~recon.audio_source.AudioSource` under ``"source"`` instead of ``"wav"``.
    """

    def __init__(self, inputs: list[str | Path], spec: AudioSpec = AudioSpec(), stream_above: float | None = None):
        self.spec = spec
        self.stream_above = stream_above
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
            if self.stream_above is not None and file_durations([path])[0] > self.stream_above:
                # Too long to hold: read by offset as it is processed (recon.streamed).
                source = AudioSource(path, self.spec)
                item.update(source=source, level=source.level, source_format=source_format(path))
                return item
            wav = load_audio(path, self.spec)
            if wav.numel() < MIN_SECONDS * self.spec.sample_rate:
                raise AudioLoadError(path, f"too short: {wav.numel() / self.spec.sample_rate:.3f} s < {MIN_SECONDS} s")
            item["wav"] = normalise(wav)
            item["level"] = normalisation_gain(wav)
            item["source_format"] = source_format(path)  # recorded in the file's codec headers
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
    ``files_per_step`` files (default ``batch_size``, the segments per forward pass) and
    ``max(batch_size, files_per_step)`` segments (a longer file is a batch of its own, so the
    outputs a batch holds in memory stay small), with fewer files per batch where that would leave
    a rank without work. A file longer than ``alone_above`` seconds (a streamed one) is always a
    batch of its own. The plan depends on the file
    list alone: a resumed run forms the same batches, so every file sees the same forward passes as
    in an uninterrupted run. Batches whose files are all ``finished`` are dropped.

    Ranks get batches by duration, not by count: each batch, longest first, goes to the rank with
    the least work so far (work = padded seconds + ``FILE_OVERHEAD_S`` per file). The rank and
    world size are read when the loader is iterated (after the process group exists).
    """

    FILE_OVERHEAD_S = 0.05  # loading, writing and scoring a file, in seconds of audio, roughly

    def __init__(self, durations: list[float], batch_size: int, world: int = 1, finished: set[int] = frozenset(),
                 segment_seconds: float = AudioSpec().duration, files_per_step: int | None = None, alone_above: float | None = None):
        self.durations = durations
        order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
        files_cap = files_per_step or batch_size
        size = max(1, min(files_cap, math.ceil(len(order) / max(world, 1))))
        segment_cap = max(batch_size, size)
        batches: list[list[int]] = []
        segments = 0
        for i in order:
            need = max(1, math.ceil(durations[i] / segment_seconds))
            if alone_above is not None and durations[i] > alone_above:
                need = segment_cap + 1  # nothing shares its batch
            if not batches or len(batches[-1]) == size or segments + need > segment_cap:
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
