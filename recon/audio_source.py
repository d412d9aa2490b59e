"""One input file read by offset as the normalised 16 kHz mono signal, in memory bounded by a block.

:class:`AudioSource` gives, for any range ``[start, stop)``, the samples of
``normalise(load_audio(path))`` -- the whole-file front-end of :mod:`recon.audio` -- without holding
the file:

* **Statistics pass.** On construction the file is read once, block by block (``block_seconds`` of
  output per step), mixed down and resampled as below; the pass sums (float64), and takes the
  minimum and maximum of, the 16 kHz signal, and :func:`~recon.audio.normalisation_terms` -- the
  function :func:`~recon.audio.normalise` itself uses -- turns them into ``mean`` and
  ``peak = max(max - mean, mean - min)``: ``read`` returns ``0.5 * (x - mean) / (peak + eps)``
  and ``level = (peak + eps) / 0.5`` (:func:`~recon.audio.normalisation_gain`). Files that
  ``load_audio`` refuses (missing, empty, unreadable, no samples, NaN or infinite samples on any
  channel) raise the same :class:`~recon.audio.AudioLoadError` here, during the pass.
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
  within 4e-8 for opus. Formats soundfile cannot open (m4a, aac, ...) are decoded by audioread,
  the backend ``load_audio`` falls back to through librosa, into the same 16-bit samples, front to
  back: audioread cannot seek, so the frames of the last read are kept and a read moves forward
  from them; a read that starts before them decodes again from the start. The statistics pass and
  a front-to-back reading (what infer.py and ``recon encode`` do) decode the file twice in all.

Tolerance: streamed samples equal ``normalise(load_audio(path))`` within ``READ_ATOL`` = 5e-7
absolute (the normalised signal peaks at 0.5). Both take their mean and peak from float64 sums
through the same function (the sum's order alone differs), so ``level`` and the samples of a 16 kHz
file came out bit-exact. Resampled files differ only where the convolution orders the same
products differently on a shorter input: reads of 163 840 samples (a segment) or more were
bit-exact at every rate; reads of 1 to 30 000 samples differ by up to 2.4e-7. Measured on 3-minute
files at 16, 44.1 (stereo), 48, 22.05 and 8 kHz; ``tests/test_audio_source.py`` checks it.

Cost, measured with ``python bench/audio_source.py --minutes 60`` (a 60-min 44.1 kHz stereo
16-bit wav written to /tmp; each way in a fresh process, one torch thread, on 2 shared CPU cores;
peak RSS from ``wait4``, the figure ``/usr/bin/time -v`` prints, which gave the same 648 MB):

* ``AudioSource`` (statistics pass, then ``blocks(163840)``): peak RSS 648 MB -- what the imports
  alone take (660 MB for a 2-min file) -- in 20.4 s;
* ``normalise(load_audio(path))``: peak RSS 3369 MB in 26.6 s.

The streamed way decodes and resamples the file twice, yet was not slower here. The same hour as
96 kbit/s AAC in an m4a (``--m4a``; ffmpeg's own command through a pipe): 649 MB in 18.0 s
streamed, 4314 MB in 25.6 s whole; with ``--pause 0.1`` (a reader slower than ffmpeg, as infer.py
is) still 648 MB. Through audioread's ffmpeg reader, which queues what ffmpeg decodes without
bound, it was 817 MB with no pause, and a slower reader would queue up to the whole decoded file.
On a file that long, torchaudio's whole-file resampler rounds its output length in float32 and
gave one sample fewer (57 600 348) than the exact ``ceil`` length a block-wise read reaches
(57 600 349).
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from .audio import (
    AudioLoadError,
    AudioSpec,
    Mixdown,
    _soundfile_info,
    mix_down,
    normalisation_terms,
    require_finite,
    require_samples,
    resampler,
    undecodable,
)

READ_ATOL = 5e-7  # measured max 2.4e-7 (module docstring)
LEVEL_RTOL = 2e-7  # measured 0: an ulp of float32, should the float64 sums round apart


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


def _ffmpeg_command(decoder) -> str | None:
    """The ffmpeg command audioread decodes with, when ``decoder`` (an open audioread file) is its
    ffmpeg backend's; None for its other backends."""
    from audioread.ffdec import FFmpegAudioFile

    return decoder.proc.args[0] if isinstance(decoder, FFmpegAudioFile) else None


class _FFmpegPipe:
    """``ffmpeg -i PATH -f s16le -``, the command audioread's ffmpeg backend runs (so the same
    bytes), read in the calling thread: the pipe holds ffmpeg back to what has been read. audioread
    itself queues everything ffmpeg decodes, without bound, while its reader waits on a model."""

    BLOCK_BYTES = 1 << 16

    def __init__(self, command: str, path: Path):
        self._errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen([command, "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._errors)
        except OSError:
            self._errors.close()
            raise

    def __iter__(self) -> Iterator[bytes]:
        while data := self.proc.stdout.read(self.BLOCK_BYTES):
            yield data
        status = self.proc.wait()
        if status != 0:
            self._errors.seek(0)
            message = " ".join(self._errors.read().decode(errors="replace").split())
            raise RuntimeError(f"{self.proc.args[0]} exited with status {status}: {message[-300:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self._errors.close()


class _DecodedFrames:
    """Mono (mixed-down) frames of a file soundfile cannot open, ``[a, b)`` at a time, decoded into
    the samples ``librosa.load`` gives through audioread (16-bit little-endian PCM over 32768): by
    the ffmpeg command audioread would run, read through a pipe (:class:`_FFmpegPipe`), where
    audioread decodes with ffmpeg; by audioread itself otherwise.

    Front to back only (module docstring): frames before a read's start are dropped as they are
    decoded, so what is held is one read's frames and one decoded buffer, whatever the file's length.
    """

    def __init__(self, path: Path, mixdown: Mixdown):
        self.path, self.mixdown = path, mixdown
        with self._open() as f:
            self.samplerate, self.channels = int(f.samplerate), int(f.channels)
            self.ffmpeg = _ffmpeg_command(f)
        self._reset()

    def __getstate__(self):  # an open decoder does not pickle: decoding restarts on demand
        return {k: getattr(self, k) for k in ("path", "mixdown", "samplerate", "channels", "ffmpeg")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def _reset(self) -> None:
        self._decoder = self._buffers = self._closer = None
        self._partial = b""
        self._start, self._mono = 0, torch.empty(0)  # the kept frames and the index of the first

    def close(self) -> None:
        if self._closer is not None:
            self._closer()  # closes the decoder, once
        self._reset()

    def _open(self):
        import audioread

        try:
            return audioread.audio_open(str(self.path))
        except Exception as err:  # audioread's backends raise their own error types
            raise undecodable(self.path, err) from err

    def _decode(self) -> Tensor | None:
        """The next decoded buffer as mono frames; None at the end of the file."""
        if self._buffers is None:
            try:
                decoder = _FFmpegPipe(self.ffmpeg, self.path) if self.ffmpeg else self._open()
            except OSError as err:
                raise undecodable(self.path, err) from err
            self._decoder, self._buffers = decoder, iter(decoder)
            # A decoder left open (a process, and audioread's reader threads) is closed when this
            # object goes, or at exit: audioread's own clean-up at interpreter shutdown aborts.
            self._closer = weakref.finalize(self, decoder.close)
        try:
            data = self._partial + bytes(next(self._buffers))
        except StopIteration:
            return None
        except Exception as err:
            raise undecodable(self.path, err) from err
        whole = len(data) - len(data) % (2 * self.channels)  # a frame split across buffers waits for the rest
        self._partial = data[whole:]
        frames = np.frombuffer(data[:whole], "<i2").astype(np.float32) * np.float32(1 / 32768)
        return mix_down(frames.reshape(-1, self.channels).T, self.mixdown)

    def read(self, a: int, b: int) -> Tensor:
        """Frames ``[a, b)``, fewer where the file ends first."""
        if a < self._start:
            self.close()
        parts, end = [self._mono], self._start + self._mono.numel()
        try:
            while end < b:
                block = self._decode()
                if block is None:
                    break
                parts.append(block)
                end += block.numel()
                if end <= a:  # all before the read: dropped as it comes
                    parts = []
        except BaseException:
            self.close()  # the decoder has moved past the frames kept: a later read starts again
            raise
        kept = parts[0] if len(parts) == 1 else torch.cat(parts) if parts else torch.empty(0)
        first = end - kept.numel()  # <= a: the kept frames start at or before it, or none are left
        self._start, self._mono = a, kept[a - first :]
        return self._mono[: b - a]


class AudioSource:
    """One input file, read by offset as the normalised 16 kHz mono signal that ``load_audio`` +
    ``normalise`` give for the whole file (module docstring: how, and within what tolerance).

    Attributes: ``path``; ``num_samples``, the 16 kHz length (``load_audio(path, spec).numel()``, but
    for files of other rates past about 17 minutes, where torchaudio's float32 rounding of the whole
    file's resampled length can make that a few samples shorter than the exact length given here);
    ``level``, :func:`~recon.audio.normalisation_gain` of the whole file.
    """

    def __init__(self, path: str | Path, spec: AudioSpec = AudioSpec(), *, mixdown: Mixdown = "mean", block_seconds: float = 30.0):
        if not block_seconds > 0:
            raise ValueError(f"block_seconds must be positive, got {block_seconds}")
        self.path, self.spec = Path(path), spec
        self._block = max(1, round(block_seconds * spec.sample_rate))
        info = _soundfile_info(self.path)
        if info is None:  # not a soundfile format: decoded by audioread, front to back (module docstring)
            self._frames: _SourceFrames | _DecodedFrames = _DecodedFrames(self.path, mixdown)
            self._rate = self._frames.samplerate
        else:
            self._frames, self._rate = _SourceFrames(self.path, mixdown), info.samplerate
        if self._rate != spec.sample_rate:
            self._resampler = resampler(self._rate, spec.sample_rate)
            g = math.gcd(self._rate, spec.sample_rate)
            self._period_in, self._period_out = self._rate // g, spec.sample_rate // g
            self._margin_periods = -(-self._resampler.width // self._period_in)
        count, total, low, high = self._statistics()
        self.num_samples = count
        self._mean, self._denominator = normalisation_terms(torch.tensor(total, dtype=torch.float64), count, torch.tensor(low), torch.tensor(high))
        self.level = float(self._denominator) / 0.5

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
