"""Every file recon writes goes through here, atomically: a reader sees the old file or the new one.

Each writer fills a temporary file in the target's folder and renames it over the target
(``os.replace`` is atomic within one file system); an interrupted write leaves no partial file.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

# mkstemp creates files readable by their owner only; outputs get the permissions of any new file.
_UMASK = os.umask(0)
os.umask(_UMASK)

import numpy as np
import soundfile as sf


def _write_atomic(path: Path, mode: str, fill: Callable[[IO], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {})) as f:
            fill(f)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    _write_atomic(path, "wb", lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    _write_atomic(path, "w", lambda f: f.write(text))


def write_wav(path: Path, wav: np.ndarray, sample_rate: int, subtype: str = "FLOAT", format: str = "WAV") -> None:
    """A mono audio file, float32 WAV unless told another soundfile ``format`` / ``subtype``;
    ``wav`` is a host array (the writer never touches a device)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wav, dtype=np.float32), sample_rate, format=format, subtype=subtype)
    write_bytes(path, buffer.getvalue())


class WavStream:
    """A mono WAV written block by block (for outputs too long to hold), as atomically as
    :func:`write_wav`: the blocks go to a hidden temporary file in the target's folder, which
    :meth:`commit` renames over the target and :meth:`discard` (or leaving a ``with`` block by an
    exception) removes, so a run that fails half-way leaves no partial file.

    Float32 WAV unless told another ``subtype``; past 4 GiB of samples (about 4.6 hours of 16 kHz
    float32) libsndfile's WAV header cannot say the size, so such outputs need ``format="RF64"``.
    """

    def __init__(self, path: Path, sample_rate: int, subtype: str = "FLOAT", format: str = "WAV"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            self._file = sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype=subtype, format=format)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        self.frames = 0

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32)
        self._file.write(block)
        self.frames += block.shape[0]

    def close(self) -> None:
        """Finish the file under its temporary name (it can then be read back); commit still renames it."""
        if not self._file.closed:
            self._file.close()

    def commit(self) -> Path:
        self.close()
        try:
            os.chmod(self.tmp, 0o666 & ~_UMASK)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self.path

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "WavStream":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.discard()


def write_npy(path: Path, array: np.ndarray) -> None:
    _write_atomic(path, "wb", lambda f: np.save(f, array))


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict]) -> None:
    """A CSV with a header; a missing or None value is an empty cell."""
    columns = tuple(columns)

    def fill(f: IO) -> None:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})

    _write_atomic(path, "w", fill)
