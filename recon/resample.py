"""Resampling a signal too long to hold, block by block, as it is resampled whole.

recon resamples with one resampler, :func:`recon.audio.resampler` (torchaudio's windowed sinc with
the front-end's parameters). It reduces ``orig / new`` to ``q / p`` and computes output frame ``n``
(its ``p`` samples ``n p .. n p + p - 1``) from the inputs ``n q - w .. n q + q + w - 1``, zero
outside the signal, ``w`` the kernel's ``width``. So frames whose inputs have all arrived are final,
and resampling a slice that starts on a frame boundary (a multiple of ``q``) gives the same frames
as the whole signal, once the zero padding at the slice's edges is out of their reach:
:class:`StreamResampler` resamples each block with a margin of at least ``w`` input samples on
either side and keeps exactly the frames it determines. (:class:`recon.audio_source.AudioSource`
applies the same rule when it reads by offset.) The result equals the whole-signal resampling up
to the float rounding of the convolution on another length (tests: within 1e-6 of full scale).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .audio import resampler


class StreamResampler:
    """``recon.audio.resampler(orig_freq, new_freq)(x)`` of a ``[samples]`` signal pushed
    in blocks of any size: :meth:`push` returns the output samples that are final so far,
    :meth:`finish` the rest (as many samples in all as torchaudio gives). Equal rates pass the
    blocks through unchanged. Holds at most one block plus ``2 w + q`` input samples."""

    def __init__(self, orig_freq: int, new_freq: int):
        g = math.gcd(orig_freq, new_freq)
        self.q, self.p = orig_freq // g, new_freq // g
        self._resample = None if self.identity else resampler(orig_freq, new_freq)
        # Whole frames, so that every slice starts on a frame.
        self.margin = 0 if self.identity else math.ceil(self._resample.width / self.q) * self.q
        self._buffer: Tensor | None = None  # inputs from _buffer_start on
        self._buffer_start = 0
        self._received = 0
        self._frames_done = 0

    @property
    def identity(self) -> bool:
        return self.p == self.q

    def push(self, block: Tensor) -> Tensor:
        if self.identity:
            return block
        self._buffer = block if self._buffer is None else torch.cat([self._buffer, block])
        self._received += block.shape[-1]
        # Frame n is final once inputs up to n q + q + w - 1 are in (margin >= w).
        ready = max((self._received - self.margin) // self.q, self._frames_done)
        return self._frames(ready, self._received)

    def finish(self) -> Tensor:
        """The remaining output, after the last block (the signal's end is zero padding, as whole)."""
        if self.identity or self._buffer is None:
            return torch.zeros(0)
        # torchaudio's output length, computed as it does (in float32, which can round p L / q down).
        total = int(torch.ceil(torch.as_tensor(self.p * self._received / self.q)))
        remaining = total - self._frames_done * self.p
        out = self._frames(math.ceil(total / self.p), self._received)
        self._buffer = None
        return out[:remaining]

    def _frames(self, stop: int, available: int) -> Tensor:
        """Output frames ``[_frames_done, stop)``, from a slice of the buffered input starting on a
        frame ``margin`` samples before the first (or at 0) and ending ``margin`` past the last."""
        start_frame = self._frames_done
        if stop <= start_frame:
            return self._buffer.new_zeros(0)
        lo = max(start_frame * self.q - self.margin, 0)
        hi = min(stop * self.q + self.margin, available)
        piece = self._buffer[lo - self._buffer_start : hi - self._buffer_start]
        out = self._resample(piece)
        first = (start_frame - lo // self.q) * self.p
        out = out[first : first + (stop - start_frame) * self.p]
        self._frames_done = stop
        # Keep what the next frames reach back to.
        keep_from = max(stop * self.q - self.margin, 0)
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        return out
