"""One input file read by offset as the normalised 16 kHz mono signal, in memory bounded by a block.

:class:`AudioSource` gives, for any range ``[start, stop)``, the samples of
``normalise(load_audio(path))`` -- the whole-file front-end of :mod:`recon.audio` -- without holding
the file:

* **Statistics pass.** On construction the file is read once, block by block (``block_seconds`` of
  output per step), mixed down and resampled as below; the pass sums (float64), and takes the
  minimum and maximum of, the 16 kHz signal. Then ``mean = sum / n`` and the peak of ``x - mean``
  is ``max(max - mean, mean - min)``: ``read`` returns ``0.5 * (x - mean) / (peak + NORMALISE_EPS)``
  and ``level = (peak + NORMALISE_EPS) / 0.5`` (:func:`~recon.audio.normalisation_gain`). Files
  that ``load_audio`` refuses (missing, empty, unreadable, no samples, NaN or infinite samples on
  any channel) raise the same :class:`~recon.audio.AudioLoadError` here, during the pass.
* **Block-wise resampling, equal to the whole-file one.** :func:`recon.audio.resampler` (torchaudio's
  windowed sinc) reduces the rates by their gcd to ``O`` input and ``N`` output samples per period;
  output sample ``k = m*N + j`` is a dot product of input samples ``[m*O - w, m*O + O + w)``, ``w``
  the kernel's ``width``, zero outside the file, and a file of ``L`` samples gives ``ceil(N*L/O)``.
  To produce outputs ``[k0, k1)`` (periods ``m0 = k0 // N`` to ``m1 = (k1 - 1) // N``) the input
  ``[s, (m1 + 1)*O + w)`` is resampled, with ``s = max(0, m0 - ceil(w / O)) * O``: a multiple of
  ``O``, so that the chunk's periods are the file's, and at least ``w`` before ``m0*O``, so that no
  needed sample is the chunk's zero padding; outputs ``k0 - s*N/O`` onwards of the chunk are the
  file's ``k0`` onwards. Files at 16 kHz are read as they are, with no margin.
* **Reading.** Files that soundfile opens (wav, flac, ogg, mp3, ...) are read with one open handle;
  a read that continues where the last one ended reuses its overlap and never seeks, so the
  statistics pass and :meth:`AudioSource.blocks` decode exactly the samples of a whole-file read in
  every format. A random :meth:`AudioSource.read` seeks: measured exact for PCM, mp3 and vorbis,
  within 4e-8 for opus. Formats soundfile cannot open (m4a, aac, ... through librosa's audioread
  backend) are **decoded whole on construction and held**, with the memory of ``load_audio``:
  audioread cannot seek (librosa's ``offset`` decodes and discards everything before it), so
  reading them block by block would cost time quadratic in their length.

Tolerance: streamed samples equal ``normalise(load_audio(path))`` within ``READ_ATOL`` = 5e-7
absolute (the normalised signal peaks at 0.5). Two roundings differ: the mean is summed in float64
rather than float32, so mean and peak may differ by an ulp (alone: <= 1.2e-7); and the convolution
may order the same products differently on a shorter input (reads of 30 000 samples: bit-exact raw
16 kHz signal; reads of 1 to 4 097 samples: <= 2.4e-7). Measured on 3-minute files at 16, 44.1
(stereo), 48, 22.05 and 8 kHz, reads of 1 to 10^7 samples: max abs error 3.0e-7; ``level`` within
1e-7 relative. ``tests/test_audio_source.py`` checks both.

Cost, measured with ``python bench/audio_source.py --minutes 60`` (a 60-min 44.1 kHz stereo
16-bit wav written to /tmp; each way in a fresh process, one torch thread, on 2 shared CPU cores;
peak RSS from ``wait4``, the figure ``/usr/bin/time -v`` prints, which gave the same 648 MB):

* ``AudioSource`` (statistics pass, then ``blocks(163840)``): peak RSS 648 MB -- what the imports
  alone take (660 MB for a 2-min file) -- in 20.4 s;
* ``normalise(load_audio(path))``: peak RSS 3369 MB in 26.6 s.

The streamed way decodes and resamples the file twice, yet was not slower here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import soundfile as sf
import torch
from torch import Tensor

from .audio import (
    NORMALISE_EPS,
    AudioLoadError,
    AudioSpec,
    Mixdown,
    _soundfile_info,
    load_audio,
    mix_down,
    require_finite,
    require_samples,
    resampler,
)

READ_ATOL = 5e-7  # measured max 3.0e-7 (module docstring)
LEVEL_RTOL = 1e-6  # measured max 8.4e-8


class _SourceFrames:
    """Mono (mixed-down) frames of one soundfile-readable file at its own rate, ``[a, b)`` at a time.

    The last read is kept: a read starting inside it takes the overlap from it and reads only the
    rest, from where the handle stands (no seek). Every raw block is checked for NaN/inf on all
    channels, as ``load_audio`` checks the whole file.
    """

    def __init__(self, path: Path, mixdown: Mixdown):
        self.path, self.mixdown = path, mixdown
        self._file: sf.SoundFile | None = None
        self._start, self._mono = 0, torch.empty(0)

    def __getstate__(self):  # an open handle does not pickle (DataLoader workers): reopened on demand
        return {"path": self.path, "mixdown": self.mixdown}

    def __setstate__(self, state):
        self.__init__(state["path"], state["mixdown"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._start, self._mono = None, 0, torch.empty(0)

    def _unreadable(self, err: Exception) -> AudioLoadError:
        return AudioLoadError(self.path, f"unreadable audio ({err})")

    def _raw(self, at: int, count: int) -> Tensor:
        try:
            if self._file is None:
                self._file = sf.SoundFile(str(self.path))
            if at >= self._file.frames:
                return torch.empty(0)
            if self._file.tell() != at:
                self._file.seek(at)
            data = self._file.read(count, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise self._unreadable(err) from err
        data = data.T
        require_finite(data, self.path)
        return mix_down(data, self.mixdown)

    def read(self, a: int, b: int) -> Tensor:
        """Frames ``[a, b)``, fewer where the file ends first."""
        end = self._start + self._mono.numel()
        if self._start <= a <= end:
            kept = self._mono[a - self._start :]
            if b <= end:
                return kept[: b - a]
            fresh = self._raw(end, b - end)
            mono = torch.cat([kept, fresh]) if kept.numel() else fresh
        else:
            mono = self._raw(a, b - a)
        self._start, self._mono = a, mono
        return mono


class AudioSource:
    """One input file, read by offset as the normalised 16 kHz mono signal that ``load_audio`` +
    ``normalise`` give for the whole file (module docstring: how, and within what tolerance).

    Attributes: ``path``; ``num_samples``, the 16 kHz length (``load_audio(path, spec).numel()``);
    ``level``, :func:`~recon.audio.normalisation_gain` of the whole file.
    """

    def __init__(self, path: str | Path, spec: AudioSpec = AudioSpec(), *, mixdown: Mixdown = "mean", block_seconds: float = 30.0):
        if not block_seconds > 0:
            raise ValueError(f"block_seconds must be positive, got {block_seconds}")
        self.path, self.spec = Path(path), spec
        self._block = max(1, round(block_seconds * spec.sample_rate))
        self._held: Tensor | None = None
        self._frames = _SourceFrames(self.path, mixdown)
        info = _soundfile_info(self.path)
        if info is None:  # not a soundfile format: decoded whole by librosa (module docstring)
            self._held = load_audio(self.path, spec, mixdown=mixdown)
        else:
            self._rate = info.samplerate
            if self._rate != spec.sample_rate:
                self._resampler = resampler(self._rate, spec.sample_rate)
                g = math.gcd(self._rate, spec.sample_rate)
                self._period_in, self._period_out = self._rate // g, spec.sample_rate // g
                self._margin_periods = -(-self._resampler.width // self._period_in)
        count, total, low, high = self._statistics()
        self.num_samples = count
        mean = total / count
        peak = max(high - mean, mean - low)
        self.level = (peak + NORMALISE_EPS) / 0.5
        self._mean = torch.tensor(mean, dtype=torch.float32)
        self._denominator = torch.tensor(peak + NORMALISE_EPS, dtype=torch.float32)

    def _statistics(self) -> tuple[int, float, float, float]:
        """Length, float64 sum, min and max of the raw 16 kHz signal, one block at a time."""
        count, total, low, high = 0, 0.0, math.inf, -math.inf
        while True:
            block = self._raw(count, count + self._block)
            if block.numel():
                count += block.numel()
                total += float(block.double().sum())
                low, high = min(low, float(block.min())), max(high, float(block.max()))
            if block.numel() < self._block:
                break
        require_samples(count, self.path)
        self._frames.close()
        return count, total, low, high

    def _raw(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` of ``load_audio(path)`` (before normalisation), fewer at the end."""
        if self._held is not None:
            return self._held[start:stop]
        if self._rate == self.spec.sample_rate:
            return self._frames.read(start, stop)
        period_in, period_out, width = self._period_in, self._period_out, self._resampler.width
        first, last = start // period_out, (stop - 1) // period_out
        origin = max(0, first - self._margin_periods)
        chunk = self._frames.read(origin * period_in, (last + 1) * period_in + width)
        if not chunk.numel():
            return chunk
        skip = origin * period_out
        return self._resampler(chunk)[start - skip : stop - skip]

    def read(self, start: int, stop: int) -> Tensor:
        """Normalised samples ``[start, stop)`` (``stop`` clipped to ``num_samples``), float32."""
        if not 0 <= start <= stop:
            raise ValueError(f"cannot read samples [{start}, {stop}) of {self.path}")
        stop = min(stop, self.num_samples)
        if start >= stop:
            return torch.empty(0)
        return 0.5 * (self._raw(start, stop) - self._mean) / self._denominator

    def blocks(self, size: int) -> Iterator[Tensor]:
        """Consecutive reads of ``size`` samples (the last one shorter) covering the file."""
        if size <= 0:
            raise ValueError(f"block size must be positive, got {size}")
        for start in range(0, self.num_samples, size):
            yield self.read(start, start + size)

    def close(self) -> None:
        """Close the file handle now (it reopens on the next read)."""
        self._frames.close()
