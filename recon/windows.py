"""Windows: files cut into the segments the networks see, grouped by length, and encoded.

A file is cut into full 10.24 s segments and a shorter last one (:func:`recon.audio.split_file`);
consecutive segments may overlap, and their outputs are then crossfaded back into one signal
(:func:`recon.audio.crossfade_join`).
Segments of equal length from any file share a forward pass (:func:`recon.audio.length_chunks`).
:func:`encode_windows` is the one call from waveform to VAE posterior: the variant runner, the
codec's encoder and the latent cache all encode through it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .audio import AudioSpec, length_chunks, split_file


def encode_windows(frontend, backbone, wav: Tensor):
    """(log-mel ``[B, 1, frames, mels]``, posterior) of a batch of equal-length segments ``[B, samples]``."""
    logmel = frontend(wav)
    return logmel, backbone.encode(logmel)


class Windows:
    """The segments of several files, flat, with the file each belongs to.

    ``segments[s]`` is segment ``s``; ``owner[s]`` the position of its file in the list given;
    ``of_file(f)`` the positions of file ``f``'s segments, in order; consecutive segments of a file
    share ``overlap`` samples.
    """

    def __init__(self, wavs: list[Tensor], spec: AudioSpec = AudioSpec(), overlap: int = 0):
        self.overlap = overlap
        per_file = [split_file(wav, spec, overlap=overlap) for wav in wavs]
        self.segments: list[Tensor] = [s for parts in per_file for s in parts]
        self.owner: list[int] = [f for f, parts in enumerate(per_file) for _ in parts]
        self._starts = [0]
        for parts in per_file:
            self._starts.append(self._starts[-1] + len(parts))

    def __len__(self) -> int:
        return len(self.segments)

    def of_file(self, f: int) -> range:
        return range(self._starts[f], self._starts[f + 1])

    def lengths(self, members: list[int] | range | None = None) -> list[int]:
        members = range(len(self)) if members is None else members
        return [self.segments[s].shape[-1] for s in members]

    def chunks(self, batch_size: int) -> list[list[int]]:
        """Segments grouped into forward passes: equal lengths, at most ``batch_size`` each."""
        return length_chunks(self.lengths(), batch_size)

    def by_file(self, members: list[int]) -> list[list[int]]:
        """``members`` split by the file they belong to (first-seen order)."""
        grouped: dict[int, list[int]] = {}
        for s in members:
            grouped.setdefault(self.owner[s], []).append(s)
        return list(grouped.values())

    def stack(self, members: list[int]) -> Tensor:
        return torch.stack([self.segments[s] for s in members])

    def encoded(self, frontend, backbone, batch_size: int, device: torch.device | None = None) -> Iterator[tuple[list[int], Tensor, object]]:
        """(members, log-mel, posterior) of every forward pass, in :meth:`chunks` order."""
        for chunk in self.chunks(batch_size):
            wav = self.stack(chunk)
            yield chunk, *encode_windows(frontend, backbone, wav.to(device) if device is not None else wav)
