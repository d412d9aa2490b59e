"""Whole-file waveform metrics of a long file, fed block by block in bounded memory.

:class:`MetricStream` gives, for one 16 kHz reference and ``V`` estimates fed as consecutive blocks
of any sizes, the values ``compute_all(reference.expand(V, -1), estimates, frontend,
include_perceptual=False)`` gives for the whole signals (:data:`recon.metrics.WAVEFORM_METRICS`),
without holding the signals.

How: every waveform metric is a formula of sums over frames or samples (see ``recon.metrics``:
``<metric>_sums`` and ``<metric>_from_sums``, which ``compute_all`` uses too). The stream cuts each
framing of the whole signal out of the blocks as they arrive and adds the sums of each complete
frame once:

* centred STFTs (``torch.stft(center=True, pad_mode="reflect")``, every ``(n_fft, hop)`` the metrics
  use, each computed once per frame and shared): the first ``n_fft / 2 + 1`` samples give the left
  reflection, the buffer keeps the samples of the next frame on (fewer than ``n_fft``), and
  ``finish()`` appends the right reflection of the last ``n_fft / 2`` samples. Each frame holds
  exactly the samples of the whole-signal STFT's frame, so its magnitudes are bit-identical;
* the envelope's unpadded frames of 1024 samples (hop 256), one zero-padded frame for a signal
  shorter than 1024 samples, as ``frame_rms``;
* SNR: ``sum ref^2``, ``sum (ref - est)^2``; SI-SDR and correlation: each block's float64 centred
  moments, merged exactly with Chan et al.'s pairwise update (no ratio is ever averaged over blocks);
* ``mel_db_mae`` (and its bands) floors each signal 80 dB below its peak over the whole file, so
  it takes two passes (:attr:`MetricStream.passes` is 2 when one of them is asked for): pass 0
  finds the peaks (and computes every other metric), pass 1 re-feeds the same blocks and sums the
  floored differences;
* ``hf_retention`` is the one metric without a streamed form: its whole-file DFT cannot be cut
  into blocks. Its band energies come from a 16384-point Hann STFT (hop 4096, 0.98 Hz bins, the
  signal zero-padded so every sample has the same total window weight ``sum w^2 / hop = 1.5``)::

      E_band = sum_frames sum_k g_k |S[k]|^2 / (16384 * 1.5),   g_k = 1 above 4 kHz, 1/2 at 4 kHz, 0 below

  which estimates the whole-file ``sum_{f_k > 4 kHz} |X[k]|^2 / N``: the two split the energy within a
  few Hz of 4 kHz differently (the window's main lobe against the DFT's bins), and treat the file's
  two ends differently (zero padding here, the DFT's wrap-around there), an effect that shrinks as
  the file grows, and the DFT leaks energy across 4 kHz that a Hann window does not: where an
  estimate has almost nothing above 4 kHz, that leakage is most of its whole-file value. Measured
  differences are in :data:`EXACTNESS`.

Sums of a block's frames are float32 (as ``compute_all``'s), added across blocks in float64, so
the error does not grow with the number of blocks; the moments of SI-SDR and the correlation are
float64 throughout.
Memory: per signal, one block plus fewer than ``n_fft`` buffered samples per framing (the largest is
16384), and ``[V, k]`` float64 sums; no per-frame vector is kept (tested).

Errors: what ``compute_all`` raises on the whole signals, the stream raises when pass 0 ends (at
``finish()``, or at the first block of pass 1): a signal of at most 1024 samples is too short for the
reflect padding of the 2048-point STFT (torch's ``RuntimeError``, from the same
``torch.nn.functional.pad`` call); no samples at all is a ``ValueError``. A malformed block is a
``ValueError``; misuse of the protocol (pass 1 before pass 0, back to pass 0, pass 1 longer or
shorter than pass 0 or with another reference, ``finish()`` before pass 1, anything after
``finish()``) is a ``RuntimeError`` that says what to do. An estimate fed other samples in pass 1
than in pass 0 (checked by float64 sums of ``x^2`` and of ``(w_i x_i)^2``, ``w_i`` a sawtooth in
``i``) gets NaN for ``mel_db_mae`` and its bands, with a warning; its other metrics are pass 0's.

Speed, ``python bench/metric_stream.py --threads 1`` (a 10-minute pair, V = 2, blocks of 10.24 s, both
passes; one run at load average 10 on 2 cores): the stream took 8.5 s of CPU against 52.6 s for
``compute_all`` on the whole tensors, ratio 0.16 (wall 32 s against 190 s). With torch's 2 threads
on the same busy cores (``python bench/metric_stream.py``): 115 s against 133 s wall, ratio 0.86; the
stream's block-sized tensors lose more to two threads that wait on each other. Largest relative
difference from ``compute_all`` there: 1.7e-7 (``stft_mag_mse``), ``hf_retention`` 3e-5.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recon import metrics as M
from recon.audio import AudioSpec, MelFrontEnd
from recon.precision import fp32_island

logger = logging.getLogger(__name__)

# hf_retention's band-energy STFT: 2^14 points at 16 kHz are 0.98 Hz bins; hop n / 4 makes the
# Hann windows' squares add to a constant (1.5), so every sample counts once in the energy.
HF_N_FFT = 2**14
HF_HOP = HF_N_FFT // 4
HF_CUTOFF_HZ = 4000.0  # compute_all's (high_frequency_retention's default)

MEL_DB_METRICS = ("mel_db_mae", "mel_db_mae_low", "mel_db_mae_high")

EXACTNESS: dict[str, str] = {
    **{name: "exact" for name in M.WAVEFORM_METRICS},
    "hf_retention": (
        "approximate: band energies from a 16384-point Hann STFT instead of one whole-file DFT, which differ near 4 kHz, "
        "at the file's two ends (zero padding against the DFT's wrap-around) and by the DFT's own leakage; measured "
        "relative error <= 3e-4 on broadband synthetic signals of 0.5 s to 10 min (1.5e-2 at 1025-3000 samples), and on "
        "infer.py outputs of real audio <= 3e-3 where the estimate keeps its high band, 1.3e-2 for Opus (band edge at "
        "4 kHz), about 2e-1 where the band holds < 1e-5 of the energy (values near 1e-6, set by leakage)"
    ),
}


class _Framer:
    """Consecutive frames of ``n_fft`` samples, ``hop`` apart, of signals ``[C, samples]`` arriving block by block.

    ``pad``: ``"reflect"`` - torch.stft's centred framing (``n_fft // 2`` reflected samples at each end,
    frames ``0 .. samples // hop``); ``"zero"`` - ``n_fft - hop`` zeros before and ``n_fft`` after, so
    every sample lies in all the frames of the grid that overlap it; ``"none"`` - frames inside the
    signal only, and one zero-padded frame for a signal shorter than ``n_fft`` (``frame_rms``).
    ``push`` and ``close`` return the padded samples of the frames completed, ``[C, (T - 1) hop + n_fft]``,
    or None; the framer keeps fewer than ``n_fft`` samples between calls.
    """

    def __init__(self, n_fft: int, hop: int, pad: str):
        if pad == "reflect" and hop >= n_fft // 2:
            raise ValueError(f"a reflect framing needs hop < n_fft / 2 (its right reflection is cut from the buffer), got {n_fft}, {hop}")
        self.n_fft, self.hop, self.pad = n_fft, hop, pad
        self.samples = 0
        self._buffer: Tensor | None = None  # from the first sample of the next frame on
        self._left_padded = pad == "none"

    def push(self, x: Tensor) -> Tensor | None:
        self.samples += x.shape[-1]
        if self._buffer is None and self.pad == "zero":
            self._buffer = x.new_zeros(x.shape[0], self.n_fft - self.hop)
        self._buffer = x if self._buffer is None else torch.cat([self._buffer, x], dim=-1)
        if not self._left_padded:
            half = self.n_fft // 2
            if self.pad == "reflect":
                if self._buffer.shape[-1] <= half:  # the reflection needs samples 1 .. n_fft / 2
                    return None
                self._buffer = torch.cat([self._buffer[:, 1 : half + 1].flip(-1), self._buffer], dim=-1)
            self._left_padded = True
        return self._take()

    def close(self) -> Tensor | None:
        """The last frames, with the end padding; the framer is spent after it."""
        if self._buffer is None:
            return None
        half = self.n_fft // 2
        if self.pad == "reflect":
            if not self._left_padded:
                # At most n_fft / 2 samples: torch.stft's own reflect padding refuses them; raise its error.
                F.pad(self._buffer[:, None], (half, half), mode="reflect")
            self._buffer = torch.cat([self._buffer, self._buffer[:, -(half + 1) : -1].flip(-1)], dim=-1)
        elif self.pad == "zero":
            self._buffer = F.pad(self._buffer, (0, self.n_fft))
        elif self.samples < self.n_fft:
            self._buffer = F.pad(self._buffer, (0, self.n_fft - self.samples))
        segment, self._buffer = self._take(), None
        return segment

    def _take(self) -> Tensor | None:
        held = self._buffer.shape[-1]
        if held < self.n_fft:
            return None
        frames = (held - self.n_fft) // self.hop + 1
        segment = self._buffer[:, : (frames - 1) * self.hop + self.n_fft]
        self._buffer = self._buffer[:, frames * self.hop :].clone()  # not a view that pins the block
        return segment


def _magnitude(segment: Tensor, n_fft: int, hop: int) -> Tensor:
    """``|STFT|`` ``[C, n_fft // 2 + 1, frames]`` of already padded frames: the whole-signal STFT's columns."""
    window = M._hann(n_fft, segment.device)
    return torch.stft(segment, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=False, return_complex=True).abs()


@functools.lru_cache(maxsize=None)
def _hf_band_weights(device: torch.device) -> Tensor:
    """``[n_fft / 2 + 1]``: ``g_k / (n_fft * sum w^2 / hop)`` (see the module docstring)."""
    freqs = torch.arange(HF_N_FFT // 2 + 1, device=device) * (M.SAMPLE_RATE / HF_N_FFT)
    weights = (freqs > HF_CUTOFF_HZ).float() + 0.5 * (freqs == HF_CUTOFF_HZ).float()
    return weights / (HF_N_FFT * M._hann(HF_N_FFT, device).pow(2).sum() / HF_HOP)


def _hf_band_energy(magnitude: Tensor) -> Tensor:
    """``[C]``: these frames' share of each signal's band energy ``sum_{f_k > 4 kHz} |X[k]|^2 / N``."""
    return (_hf_band_weights(magnitude.device)[None, :, None] * magnitude.pow(2)).sum(dim=(1, 2))


def _merge_moments(a: Tensor, count_a: int, b: Tensor, count_b: int) -> Tensor:
    """:func:`recon.metrics.centred_moments` of two consecutive stretches -> of both (Chan et al. 1979)."""
    count = count_a + count_b
    d_ref, d_est = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    weight = count_a * count_b / count
    return torch.stack(
        [
            a[:, 0] + d_ref * (count_b / count),
            a[:, 1] + d_est * (count_b / count),
            a[:, 2] + b[:, 2] + d_ref * d_ref * weight,
            a[:, 3] + b[:, 3] + d_ref * d_est * weight,
            a[:, 4] + b[:, 4] + d_est * d_est * weight,
        ],
        dim=1,
    )


class _Sums:
    """Float64 sums ``[V, k]`` over the frames seen so far, and how many frames."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.frames = 0

    def add(self, sums: Tensor, frames: int) -> None:
        sums = sums.double()
        self.total = sums if self.total is None else self.total + sums
        self.frames += frames


class _Framing:
    """One framer over the reference and the estimates together, and what each complete chunk of frames feeds."""

    def __init__(self, n_fft: int, hop: int, pad: str, transform):
        self.framer = _Framer(n_fft, hop, pad)
        self.transform = transform  # padded segment [C, n] -> per-frame data [C, ..., frames]
        self.consumers = []  # (reference data [1, ...], estimates' data [V, ...], index of the first frame)
        self.frames = 0

    def push(self, signals: Tensor) -> None:
        self._feed(self.framer.push(signals))

    def close(self) -> None:
        self._feed(self.framer.close())

    def _feed(self, segment: Tensor | None) -> None:
        if segment is None:
            return
        data = self.transform(segment)
        for consume in self.consumers:
            consume(data[:1], data[1:], self.frames)
        self.frames += data.shape[-1]


class MetricStream:
    """Whole-file waveform metrics of one reference and V estimates, fed as consecutive blocks.

    ``finish()`` gives ``compute_all(reference.expand(V, -1), estimates, frontend,
    include_perceptual=False)[name].tolist()`` for every ``name`` in ``names``, within the float32
    summation order (see :attr:`exactness`; ``hf_retention`` is the one approximation).

    Protocol: ``update(reference_block, estimates_block)`` for each consecutive block, then, if
    :attr:`passes` is 2, the same blocks again from the start with ``pass_index=1``; then ``finish()``.
    """

    def __init__(self, variants: int, frontend: MelFrontEnd | None = None, names: Sequence[str] = M.WAVEFORM_METRICS, device=None):
        if not isinstance(variants, int) or variants < 1:
            raise ValueError(f"variants must be a positive int, got {variants!r}")
        names = tuple(names)
        unknown = [name for name in names if name not in M.WAVEFORM_METRICS]
        if unknown:
            raise ValueError(f"unknown waveform metrics {unknown}; known: {', '.join(M.WAVEFORM_METRICS)}")
        if frontend is not None and frontend.spec.win_length != frontend.spec.n_fft:
            raise ValueError(f"MetricStream needs a frontend whose window spans its n_fft, got win_length {frontend.spec.win_length} and n_fft {frontend.spec.n_fft}")
        self.variants = variants
        self.names = names
        self.passes = 2 if any(name in MEL_DB_METRICS for name in names) else 1
        self.exactness = {name: EXACTNESS[name] for name in names}
        self._frontend = frontend
        self._device = torch.device(device) if device is not None else None
        self._framings: dict[tuple[int, int, str], _Framing] | None = None  # built at the first block
        self._sums: dict[str, _Sums] = {}
        self._moments: Tensor | None = None
        self._samples_fed = 0  # samples of pass 0 so far
        self._pass = 0
        self._length: int | None = None  # samples of pass 0, known once it ends
        self._refed = 0  # samples of pass 1 so far
        self._peaks: Tensor | None = None  # [1 + V] max of the unfloored mel dB of each signal (pass 0)
        self._fingerprints = [None, None]  # per pass, to check that pass 1 re-fed the samples of pass 0
        self._estimates_changed: Tensor | None = None  # [V] bool: fed other samples in pass 1 than in pass 0
        self._dropped: set[int] = set()  # estimates whose values the caller will not use (see drop)
        self._second: _Framing | None = None
        self._finished = False

    # -- protocol -------------------------------------------------------------------------------

    def update(self, reference: Tensor, estimates: Tensor, pass_index: int = 0) -> None:
        """``reference [n]``, ``estimates [V, n]``: the next ``n >= 1`` samples of the 16 kHz signals.
        Pass 0, then (if :attr:`passes` is 2) pass 1 re-feeds the same blocks from the start."""
        if self._finished:
            raise RuntimeError("update() after finish(): a MetricStream measures one file")
        if pass_index not in range(self.passes):
            raise ValueError(f"pass_index {pass_index!r}: this stream has {self.passes} pass(es), 0{' and 1' if self.passes == 2 else ''}")
        if pass_index < self._pass:
            raise RuntimeError("pass 0 has ended (pass 1 has begun): a stream cannot go back to it")
        signals = self._check_block(reference, estimates)
        if self._framings is None:
            self._build(signals.device)
        if pass_index > self._pass:
            if self._samples_fed == 0:
                raise RuntimeError("pass 1 before any block of pass 0: feed the blocks with pass_index=0 first")
            self._end_pass_zero()
            self._pass = 1
        if self._pass == 0:
            self._add_block(signals)
            return
        if self._refed + signals.shape[-1] > self._length:
            raise RuntimeError(
                f"pass 1 re-fed {self._refed + signals.shape[-1]} samples, more than the {self._length} of pass 0: "
                "it must re-feed the same blocks"
            )
        self._fingerprint(1, signals, self._refed)
        self._refed += signals.shape[-1]
        self._second.push(signals)

    def drop(self, index: int) -> None:
        """Estimate ``index`` is no longer scored (its signal failed half-way): it may be fed anything
        from now on, zeros say, and its values are meaningless."""
        self._dropped.add(index)

    def finish(self) -> dict[str, list[float]]:
        """``{name: [one value per estimate]}``, as ``compute_all(...)[name].tolist()`` for the whole signals."""
        if self._finished:
            raise RuntimeError("finish() was already called")
        if self._framings is None:
            raise ValueError("reference and estimate have no samples (no block was fed)")
        if self.passes == 2:
            if self._pass == 0:
                raise RuntimeError(
                    f"finish() after pass 0 of 2: re-feed the same {self._samples_fed} samples with pass_index=1 first "
                    "(mel_db_mae needs each signal's peak before its sums)"
                )
            if self._refed != self._length:
                raise RuntimeError(f"pass 1 re-fed {self._refed} of the {self._length} samples of pass 0: re-feed all of them")
            same = torch.isclose(self._fingerprints[1], self._fingerprints[0], rtol=1e-9, atol=0.0).all(dim=1)
            if not same[0]:
                raise RuntimeError("pass 1 was fed another reference than pass 0 (its energy, or how it is spread in time, differs)")
            self._estimates_changed = ~same[1:]
            self._second.close()
        else:
            self._end_pass_zero()
        self._finished = True
        values = self._values()
        return {name: values[name].float().tolist() for name in self.names}

    # -- internals ------------------------------------------------------------------------------

    def _check_block(self, reference: Tensor, estimates: Tensor) -> Tensor:
        if not isinstance(reference, Tensor) or not isinstance(estimates, Tensor):
            raise TypeError("reference and estimates must be torch tensors")
        if reference.dim() != 1 or estimates.dim() != 2 or estimates.shape != (self.variants, reference.shape[0]):
            raise ValueError(
                f"update() expects reference [n] and estimates [{self.variants}, n], got {tuple(reference.shape)} and {tuple(estimates.shape)}"
            )
        if reference.shape[0] == 0:
            raise ValueError("an empty block: each update() needs n >= 1 samples")
        device = self._device if self._device is not None else reference.device
        return torch.cat([reference[None].to(device).float(), estimates.to(device).float()])

    def _build(self, device: torch.device) -> None:
        self._device = device
        self._framings = {}
        want = set(self.names)

        def framing(n_fft: int, hop: int, pad: str = "reflect") -> _Framing:
            key = (n_fft, hop, pad)
            if key not in self._framings:
                if pad == "none":  # frames of samples, [C, n_fft, frames]
                    self._framings[key] = _Framing(n_fft, hop, pad, lambda seg: seg.unfold(-1, n_fft, hop).transpose(1, 2))
                else:
                    self._framings[key] = _Framing(n_fft, hop, pad, lambda seg: _magnitude(seg, n_fft, hop))
            return self._framings[key]

        def summed(name: str, sums_of, keep=None):
            """A consumer adding ``sums_of(ref, est)`` of each chunk to the sums named ``name``."""
            self._sums[name] = acc = _Sums()

            def consume(ref: Tensor, est: Tensor, first: int) -> None:
                frames = ref.shape[-1] if keep is None else keep(ref.shape[-1], first)
                if frames > 0:
                    acc.add(sums_of(ref[..., :frames], est[..., :frames]), frames)

            return consume

        if "log_mel_db" in want:
            frontend = self._frontend if self._frontend is not None else MelFrontEnd(AudioSpec()).to(device)
            spec = frontend.spec

            def keep_log_mel(frames: int, first: int) -> int:
                # MelFrontEnd drops the centred STFT's last frame: keep frames below samples // hop. Every
                # frame before the end lies below it; the end (length known) comes in the last chunk.
                return frames if self._length is None else min(frames, self._length // spec.hop_length - first)

            def log_mel(ref: Tensor, est: Tensor) -> Tensor:
                with fp32_island(ref.device):
                    return M.log_mel_sums(frontend, ref, est)

            self._n_mels = spec.n_mels
            framing(spec.n_fft, spec.hop_length).consumers.append(summed("log_mel_db", log_mel, keep_log_mel))
        if "mel_multiscale" in want:
            for win, n_mels in zip(M.DAC_MEL_WINDOW_LENGTHS, M.DAC_MEL_N_MELS):
                filters = M._librosa_mel(M.SAMPLE_RATE, win, n_mels, device)
                sums_of = lambda ref, est, filters=filters: M.multiscale_mel_sums(ref, est, filters)  # noqa: E731
                framing(win, win // 4).consumers.append(summed(f"mel_multiscale/{win}", sums_of))
        if "mr_stft" in want:
            for n_fft, hop in zip(M.MR_STFT_FFT_SIZES, M.MR_STFT_HOP_SIZES):
                framing(n_fft, hop).consumers.append(summed(f"mr_stft/{n_fft}", M.mr_stft_sums))
        if "lsd_db" in want:
            framing(M.LSD_N_FFT, M.LSD_HOP).consumers.append(summed("lsd_db", M.lsd_sums))
        workflow = (M.WORKFLOW_N_FFT, M.WORKFLOW_HOP)
        if "stft_mag_mse" in want:
            framing(*workflow).consumers.append(summed("stft_mag_mse", M.stft_mag_mse_sums))
        if "spectral_centroid_l1" in want:
            framing(*workflow).consumers.append(summed("spectral_centroid_l1", M.centroid_l1_sums))
        if self.passes == 2:
            framing(*workflow).consumers.append(self._track_peaks)
            self._second = _Framing(*workflow, "reflect", lambda seg: _magnitude(seg, *workflow))
            self._second.consumers.append(summed("mel_db", self._mel_db_sums))
        if "envelope_rms_l1" in want:
            envelope = lambda ref, est: M.envelope_sums(ref.transpose(1, 2), est.transpose(1, 2))  # noqa: E731
            framing(M.ENVELOPE_FRAME, M.ENVELOPE_HOP, "none").consumers.append(summed("envelope_rms_l1", envelope))
        if "hf_retention" in want:
            # [1 + V, 1]: the band energy of every signal, the reference first.
            band = lambda ref, est: torch.cat([_hf_band_energy(ref), _hf_band_energy(est)])[:, None]  # noqa: E731
            framing(HF_N_FFT, HF_HOP, "zero").consumers.append(summed("hf_retention", band))

    def _add_block(self, signals: Tensor) -> None:
        if self.passes == 2:
            self._fingerprint(0, signals, self._samples_fed)
        self._samples_fed += signals.shape[-1]
        for framing in self._framings.values():
            framing.push(signals)
        ref, est = signals[:1], signals[1:]
        if {"si_sdr_db", "waveform_corr"} & set(self.names):
            moments = M.centred_moments(ref, est)
            count = signals.shape[-1]
            if self._moments is None:
                self._moments = moments
            else:
                self._moments = _merge_moments(self._moments, self._samples_fed - count, moments, count)
        if "snr_db" in self.names:
            self._sums.setdefault("snr_db", _Sums()).add(M.snr_sums(ref, est), signals.shape[-1])

    def _end_pass_zero(self) -> None:
        self._length = self._samples_fed
        for framing in self._framings.values():
            framing.close()

    def _track_peaks(self, ref: Tensor, est: Tensor, first: int) -> None:
        peaks = torch.cat([M.mel_db_unfloored(ref).amax(dim=(1, 2)), M.mel_db_unfloored(est).amax(dim=(1, 2))])
        self._peaks = peaks if self._peaks is None else torch.maximum(self._peaks, peaks)

    def _mel_db_sums(self, ref: Tensor, est: Tensor) -> Tensor:
        return M.mel_db_sums(M.mel_db_unfloored(ref), M.mel_db_unfloored(est), self._peaks[:1], self._peaks[1:])

    def _fingerprint(self, pass_index: int, signals: Tensor, offset: int) -> None:
        """Add ``sum x^2`` and ``sum (w_i x_i)^2``, ``w_i = ((offset + i) mod 4099) / 4099`` (``i`` counted
        from the file's start), per signal, in float64: equal in two passes over the same samples
        whatever their blocks, and changed by another level or order of the samples (a check, not a hash)."""
        x = signals.double()
        weights = ((torch.arange(x.shape[-1], device=x.device, dtype=torch.float64) + offset) % 4099) / 4099
        sums = torch.stack([x.pow(2).sum(dim=-1), (weights * x).pow(2).sum(dim=-1)], dim=1)
        previous = self._fingerprints[pass_index]
        self._fingerprints[pass_index] = sums if previous is None else previous + sums

    def _values(self) -> dict[str, Tensor]:
        sums = self._sums
        out: dict[str, Tensor] = {}
        if "log_mel_db" in sums:
            out["log_mel_db"] = M.log_mel_from_sums(sums["log_mel_db"].total, sums["log_mel_db"].frames, self._n_mels)
        if "mel_multiscale" in self.names:
            out["mel_multiscale"] = sum(
                M.multiscale_mel_from_sums(sums[f"mel_multiscale/{win}"].total, sums[f"mel_multiscale/{win}"].frames, n_mels)
                for win, n_mels in zip(M.DAC_MEL_WINDOW_LENGTHS, M.DAC_MEL_N_MELS)
            )
        if "mr_stft" in self.names:
            terms = [M.mr_stft_from_sums(sums[f"mr_stft/{n}"].total, sums[f"mr_stft/{n}"].frames, n) for n in M.MR_STFT_FFT_SIZES]
            out["mr_stft"] = sum(terms) / len(terms)
        if "lsd_db" in sums:
            out["lsd_db"] = M.lsd_from_sums(sums["lsd_db"].total, sums["lsd_db"].frames)
        if self._moments is not None:
            out["si_sdr_db"] = M.si_sdr_from_moments(self._moments)
            out["waveform_corr"] = M.correlation_from_moments(self._moments)
        if "snr_db" in sums:
            out["snr_db"] = M.snr_from_sums(sums["snr_db"].total)
        if "hf_retention" in sums:
            band = sums["hf_retention"].total[:, 0]
            out["hf_retention"] = M.hf_retention_from_energies(band[:1], band[1:])
        if "mel_db" in sums:
            mel_db = M.mel_db_from_sums(sums["mel_db"].total, sums["mel_db"].frames)
            for index in self._estimates_changed.nonzero().flatten().tolist():
                # Its floor and its sums come from two different signals: no value (a variant that failed
                # half-way and is fed zeros in pass 1 ends here; its caller drops it, and no warning is due).
                if index not in self._dropped:
                        logger.warning("estimate %d was fed other samples in pass 1 than in pass 0: its %s are NaN", index, ", ".join(MEL_DB_METRICS))
                for value in mel_db.values():
                    value[index] = float("nan")
            out.update(mel_db)
        if "stft_mag_mse" in sums:
            out["stft_mag_mse"] = M.stft_mag_mse_from_sums(sums["stft_mag_mse"].total, sums["stft_mag_mse"].frames)
        if "spectral_centroid_l1" in sums:
            out["spectral_centroid_l1"] = M.centroid_l1_from_sums(sums["spectral_centroid_l1"].total, sums["spectral_centroid_l1"].frames)
        if "envelope_rms_l1" in sums:
            out["envelope_rms_l1"] = M.envelope_from_sums(sums["envelope_rms_l1"].total, sums["envelope_rms_l1"].frames)
        return out


__all__ = ["EXACTNESS", "MetricStream"]
