"""Files: which inputs a run reads, and each one as a normalised waveform (or the reason it failed).

The one walker of input folders is :mod:`recon.folders` (re-exported here): ``infer.py``, ``recon
encode``/``decode``/``info`` and the training data all list their files with :func:`find_files`,
in the same deterministic order.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .audio import AudioLoadError, AudioSpec, load_audio, normalisation_gain, normalise
from .folders import AUDIO_EXTENSIONS, find_audio_files, find_files  # noqa: F401 (re-exported)
from .outputs import describe_error

MIN_SECONDS = 0.1


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

