"""Every reconstruction metric of recon, in one place.

Each metric is one small function with its exact formula in the docstring. Waveform metrics take
16 kHz ``reference, estimate`` tensors ``[B, samples]`` of the same shape (callers align lengths;
a mismatch raises ``ValueError``) and return one value per item, a float32 tensor ``[B]`` on the
reference's device, so a runner can write one row per file. All math is float32.

Conventions shared by the spectral metrics: ``STFT_n`` is ``torch.stft`` with a periodic Hann
window of length ``n``, ``n_fft = n``, centred with reflect padding (torch's default, also what
AudioLDM2, DAC/audiotools and auraloss use); ``|.|`` is its magnitude.

``eps_f32 = torch.finfo(torch.float32).eps`` (about 1.19e-7) guards the SNR family exactly as
torchmetrics does, so recon's numbers agree with ``torchmetrics.functional.audio`` to rounding.

The only metrics that can return NaN are the perceptual ones (:data:`PERCEPTUAL_METRICS`: PESQ, STOI
and ViSQOL in its two modes), where they are undefined (see the perceptual section: too short, not
speech, a silent or near-silent estimate, ...); each
NaN is logged as a warning on the ``recon.metrics`` logger naming the item and the reason, and a
reason that lies in the reference once per file rather than once per variant.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import warnings
from collections.abc import Callable, Sequence

import librosa
import numpy as np
import torch
from torch import Tensor

from recon.audio import AudioSpec, MelFrontEnd
from recon.precision import fp32_island

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
EPS_F32 = torch.finfo(torch.float32).eps

# Codebook bitrate: the VAE latent is [8, 256, 16] per 10.24 s, i.e. 256 * 16 = 4096 vectors of
# dimension 8 per segment = 400 vectors per second; a hard code index into 1024 codes is 10 bits.
CODEBOOK_SIZE = 1024
LATENT_VECTORS_PER_SEGMENT = 256 * 16
SEGMENT_SECONDS = 10.24
LATENT_VECTORS_PER_SECOND = LATENT_VECTORS_PER_SEGMENT / SEGMENT_SECONDS  # 400.0

# DAC's mel distance (descript-audio-codec conf/base.yml, the setting DAC trains and evaluates with).
DAC_MEL_WINDOW_LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_MEL_N_MELS = (5, 10, 20, 40, 80, 160, 320)

# Multi-resolution STFT distance (auraloss-style terms, window = FFT size, hop = FFT size / 4).
MR_STFT_FFT_SIZES = (512, 1024, 2048)
MR_STFT_HOP_SIZES = (128, 256, 512)
MR_STFT_EPS = 1e-8  # auraloss: |X| = sqrt(max(|STFT|^2, 1e-8))

LSD_N_FFT = 1024
LSD_HOP = 160
LSD_EPS = 1e-10  # power floor inside the log: -100 dB re 1

HF_EPS = 1e-12

# 20 / ln(10): converts a difference of natural logs of *magnitudes* to dB.
NEPER_TO_DB = 20.0 / math.log(10.0)

# The evaluation of the public DDCM-on-AudioLDM2 workflow (its compare_audio_metrics script): one
# STFT for all of them, 128 HTK mels without area normalisation over 0-8 kHz, dB of power with an
# 80 dB range per signal, the mel bins split a third / two thirds into low and high bands.
WORKFLOW_N_FFT = 1024
WORKFLOW_HOP = 256
WORKFLOW_N_MELS = 128
WORKFLOW_TOP_DB = 80.0
WORKFLOW_AMIN = 1e-10  # power floor of the dB conversion (torchaudio's AmplitudeToDB, librosa's power_to_db)
WORKFLOW_LOW_MELS = WORKFLOW_N_MELS // 3  # 42: low band = mel bins 0..41, high band = 42..127
CENTROID_EPS = 1e-9  # magnitude-sum floor of a frame's centroid (a silent frame has centroid 0 Hz)
CORR_EPS = 1e-12
ENVELOPE_FRAME = 1024
ENVELOPE_HOP = 256
ENVELOPE_EPS = 1e-12  # inside the frame RMS square root

WORKFLOW_METRICS = (
    "mel_db_mae",
    "mel_db_mae_low",
    "mel_db_mae_high",
    "stft_mag_mse",
    "spectral_centroid_l1",
    "waveform_corr",
    "envelope_rms_l1",
)
WAVEFORM_METRICS = ("log_mel_db", "mel_multiscale", "mr_stft", "lsd_db", "si_sdr_db", "snr_db", "hf_retention", *WORKFLOW_METRICS)
# ViSQOL in audio mode (every file, resampled to 48 kHz) and in speech mode (16 kHz, meaningful for speech).
VISQOL_METRICS = ("visqol_audio", "visqol_speech")
PERCEPTUAL_METRICS = ("pesq_wb", "stoi", *VISQOL_METRICS)


# --------------------------------------------------------------------------------------------------
# helpers


def _check_pair(reference: Tensor, estimate: Tensor) -> tuple[Tensor, Tensor]:
    """Validate ``[B, samples]`` pairs of identical shape and return them as float32.

    A ``[1, samples]`` reference also pairs with a ``[B, samples]`` estimate: it is scored against
    each row, and its spectra are computed once instead of ``B`` times."""
    if not isinstance(reference, Tensor) or not isinstance(estimate, Tensor):
        raise TypeError("reference and estimate must be torch tensors")
    if reference.dim() != 2 or estimate.dim() != 2:
        raise ValueError(
            f"metrics expect [batch, samples] tensors, got reference {tuple(reference.shape)} "
            f"and estimate {tuple(estimate.shape)}"
        )
    if reference.shape != estimate.shape and not (reference.shape[0] == 1 and reference.shape[1:] == estimate.shape[1:]):
        raise ValueError(
            f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} differ in shape; "
            "align their lengths before computing metrics"
        )
    if reference.shape[-1] == 0:
        raise ValueError("reference and estimate have no samples")
    return reference.float(), estimate.to(device=reference.device).float()


# Windows and filterbanks are cached per device: metrics run inside the prediction step, where a
# copy from the host per call would be a transfer per file.
@functools.lru_cache(maxsize=None)
def _hann(n: int, device: torch.device) -> Tensor:
    return torch.hann_window(n, periodic=True, device=device)


def _stft_mag(x: Tensor, n_fft: int, hop: int) -> Tensor:
    """``|STFT_n_fft(x)|`` of ``[B, samples]`` -> ``[B, n_fft // 2 + 1, frames]`` (float32)."""
    stft = torch.stft(
        x,
        n_fft=n_fft,
        hop_length=hop,
        win_length=n_fft,
        window=_hann(n_fft, x.device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return stft.abs()


@functools.lru_cache(maxsize=None)
def _librosa_mel(sr: int, n_fft: int, n_mels: int, device: torch.device) -> Tensor:
    # DAC (audiotools ``get_mel_filters``): librosa slaney filters, fmin 0, fmax None (= sr / 2).
    # At 16 kHz none of DAC's 7 (window, n_mels) pairs has an empty filter; if one were empty its
    # mel value would be 0 -> clamp_eps on both sides -> it adds exactly 0, as in DAC.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Empty filters.*")
        fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=None)
    return torch.from_numpy(fb).float().to(device)


def _ratio_db(num: Tensor, den: Tensor) -> Tensor:
    """``10 log10((num + eps_f32) / (den + eps_f32))`` - torchmetrics' guard."""
    return 10.0 * torch.log10((num + EPS_F32) / (den + EPS_F32))


# --------------------------------------------------------------------------------------------------
# Every waveform metric is a function of sums: over STFT frames (the spectral metrics), over frames
# of samples (the envelope) or over samples (the SNR family). ``<metric>_sums`` takes the spectra
# (or samples) of *some* frames of the reference and the estimate and returns their sums ``[B, k]``
# over those frames; ``<metric>_from_sums`` turns the sums over *all* frames into the metric. Each
# whole-signal function below is ``_from_sums(_sums(every frame))``, and ``recon.metric_stream``
# adds the same sums block by block, so each formula is written once. Spectra are
# ``|STFT| [B, freqs, frames]``; a reference of batch 1 broadcasts against B estimates.


def _stack(*sums: Tensor) -> Tensor:
    """``[B]`` sums (some possibly ``[1]``, of the reference alone) -> ``[B, k]``."""
    return torch.stack(torch.broadcast_tensors(*sums), dim=1)


# --------------------------------------------------------------------------------------------------
# spectral distances (0 for identical inputs, larger is worse)


def log_mel_sums(frontend: MelFrontEnd, mag_ref: Tensor, mag_est: Tensor) -> Tensor:
    """``[B, 1]``: ``sum_{frames, mels} |L_ref - L_est|`` over these frames (see :func:`log_mel_distance_db`)."""
    return _stack((frontend.log_mel(mag_ref) - frontend.log_mel(mag_est)).abs().sum(dim=(1, 2)))


def log_mel_from_sums(sums: Tensor, frames: int, n_mels: int) -> Tensor:
    return NEPER_TO_DB * sums[:, 0] / (frames * n_mels)


def log_mel_distance_db(reference: Tensor, estimate: Tensor, frontend: MelFrontEnd | None = None) -> Tensor:
    """Mean absolute difference of the AudioLDM2 log-mel, in dB of magnitude.

    ``L = MelFrontEnd(x) = ln(max(M |STFT_1024(x)|, 1e-5))`` (64 slaney mels, hop 160, natural log
    of the *magnitude* mel - see ``recon.audio``), so a dB value is ``20 log10 m = (20 / ln 10) ln m``::

        log_mel_db = (20 / ln 10) * mean_{frames, mels} |L_ref - L_est|

    A pure gain ``g`` gives ``|20 log10 g|`` wherever neither mel bin sits at the 1e-5 floor.
    ``frontend`` defaults to ``MelFrontEnd(AudioSpec())``; pass the runner's instance to reuse it.
    """
    reference, estimate = _check_pair(reference, estimate)
    if frontend is None:
        frontend = MelFrontEnd(AudioSpec()).to(reference.device)
    with fp32_island(reference.device):
        mag_ref, mag_est = frontend.magnitude(reference), frontend.magnitude(estimate)
    return log_mel_from_sums(log_mel_sums(frontend, mag_ref, mag_est), mag_ref.shape[-1], frontend.spec.n_mels)


def multiscale_mel_sums(
    mag_ref: Tensor, mag_est: Tensor, filters: Tensor, *, clamp_eps: float = 1e-5, pow: float = 1.0, log_weight: float = 1.0, mag_weight: float = 0.0
) -> Tensor:
    """``[B, 2]``: ``sum |log10(max(M_est, eps)^pow) - log10(max(M_ref, eps)^pow)|`` and ``sum |M_est - M_ref|``
    over the mel bins of these frames, ``M = filters |S|`` (one scale of :func:`multiscale_mel_distance`);
    a term whose weight is 0 is not computed and sums to 0."""
    mel_ref, mel_est = filters @ mag_ref, filters @ mag_est
    log_sum = mag_sum = mel_est.new_zeros(mel_est.shape[0])
    if log_weight:
        log_ref = mel_ref.clamp(min=clamp_eps).pow(pow).log10()
        log_est = mel_est.clamp(min=clamp_eps).pow(pow).log10()
        log_sum = (log_est - log_ref).abs().sum(dim=(1, 2))
    if mag_weight:
        mag_sum = (mel_est - mel_ref).abs().sum(dim=(1, 2))
    return _stack(log_sum, mag_sum)


def multiscale_mel_from_sums(sums: Tensor, frames: int, n_mels: int, *, log_weight: float = 1.0, mag_weight: float = 0.0) -> Tensor:
    """One scale's term: the weighted means over its ``n_mels * frames`` mel values."""
    count = frames * n_mels
    return log_weight * sums[:, 0] / count + mag_weight * sums[:, 1] / count


def multiscale_mel_distance(
    reference: Tensor,
    estimate: Tensor,
    *,
    sample_rate: int = SAMPLE_RATE,
    window_lengths: Sequence[int] = DAC_MEL_WINDOW_LENGTHS,
    n_mels: Sequence[int] = DAC_MEL_N_MELS,
    clamp_eps: float = 1e-5,
    mag_weight: float = 0.0,
    log_weight: float = 1.0,
    pow: float = 1.0,
) -> Tensor:
    """DAC's multi-scale mel distance (``dac.nn.loss.MelSpectrogramLoss``), per item.

    For each scale ``s`` with window ``w_s`` and ``n_mels_s``: ``M_s(x) = F_s |STFT_{w_s}(x)|`` with
    hop ``w_s // 4`` and ``F_s = librosa.filters.mel(sr, n_fft=w_s, n_mels=n_mels_s, fmin=0,
    fmax=sr/2)`` (slaney) applied to the magnitude, exactly as audiotools' ``mel_spectrogram``::

        mel_multiscale = sum_s [ log_weight * mean |log10(max(M_s(est), eps)^pow) - log10(max(M_s(ref), eps)^pow)|
                                + mag_weight * mean |M_s(est) - M_s(ref)| ]

    means over mel bins and frames of one item (``nn.L1Loss`` per item), summed over the scales.
    Defaults are DAC's training/evaluation setting (``conf/base.yml``): windows
    ``[32, 64, 128, 256, 512, 1024, 2048]``, n_mels ``[5, 10, 20, 40, 80, 160, 320]``,
    ``clamp_eps = 1e-5``, ``mag_weight = 0``, ``log_weight = 1``, ``pow = 1``. (The class's own
    keyword defaults, ``mag_weight = 1, pow = 2``, are overridden by that config.) With the
    defaults a pure gain ``g`` gives ``7 |log10 g|`` where no mel bin is at the clamp.
    """
    reference, estimate = _check_pair(reference, estimate)
    if len(window_lengths) != len(n_mels):
        raise ValueError("window_lengths and n_mels must have the same length")
    weights = {"log_weight": log_weight, "mag_weight": mag_weight}
    total = torch.zeros(reference.shape[0], device=reference.device)
    for win, nm in zip(window_lengths, n_mels):
        fb = _librosa_mel(sample_rate, int(win), int(nm), reference.device)
        mag_ref, mag_est = _stft_mag(reference, int(win), int(win) // 4), _stft_mag(estimate, int(win), int(win) // 4)
        sums = multiscale_mel_sums(mag_ref, mag_est, fb, clamp_eps=clamp_eps, pow=pow, **weights)
        total = total + multiscale_mel_from_sums(sums, mag_ref.shape[-1], int(nm), **weights)
    return total


def mr_stft_sums(mag_ref: Tensor, mag_est: Tensor, eps: float = MR_STFT_EPS) -> Tensor:
    """``[B, 3]``: ``sum (Y - X)^2``, ``sum Y^2`` and ``sum |ln Y - ln X|`` over the bins of these frames,
    ``Y = sqrt(max(|S_ref|^2, eps))`` (one resolution of :func:`multi_resolution_stft_distance`)."""
    y = mag_ref.pow(2).clamp(min=eps).sqrt()
    x = mag_est.pow(2).clamp(min=eps).sqrt()
    return _stack((y - x).pow(2).sum(dim=(1, 2)), y.pow(2).sum(dim=(1, 2)), (y.log() - x.log()).abs().sum(dim=(1, 2)))


def mr_stft_from_sums(sums: Tensor, frames: int, n_fft: int) -> Tensor:
    """One resolution's ``sc_r + mag_r``."""
    return sums[:, 0].sqrt() / sums[:, 1].sqrt() + sums[:, 2] / (frames * (n_fft // 2 + 1))


def multi_resolution_stft_distance(
    reference: Tensor,
    estimate: Tensor,
    *,
    fft_sizes: Sequence[int] = MR_STFT_FFT_SIZES,
    hop_sizes: Sequence[int] = MR_STFT_HOP_SIZES,
    eps: float = MR_STFT_EPS,
) -> Tensor:
    """Multi-resolution STFT distance (auraloss ``MultiResolutionSTFTLoss`` terms), per item.

    For each resolution ``r`` (FFT sizes ``[512, 1024, 2048]``, hops ``[128, 256, 512]``, Hann
    window = FFT size), ``Y = sqrt(max(|STFT(ref)|^2, eps))`` (``eps`` 1e-8), ``X`` likewise for the estimate::

        sc_r  = ||Y - X||_F / ||Y||_F                  (spectral convergence)
        mag_r = mean_{freq, frames} |ln Y - ln X|       (log-magnitude L1, natural log)
        mr_stft = (1 / R) * sum_r (sc_r + mag_r)

    A pure gain ``g`` gives ``|1 - g| + |ln g|`` where no bin is at the 1e-8 floor.
    """
    reference, estimate = _check_pair(reference, estimate)
    if len(fft_sizes) != len(hop_sizes):
        raise ValueError("fft_sizes and hop_sizes must have the same length")
    total = torch.zeros(reference.shape[0], device=reference.device)
    for n_fft, hop in zip(fft_sizes, hop_sizes):
        mag_ref, mag_est = _stft_mag(reference, int(n_fft), int(hop)), _stft_mag(estimate, int(n_fft), int(hop))
        total = total + mr_stft_from_sums(mr_stft_sums(mag_ref, mag_est, eps), mag_ref.shape[-1], int(n_fft))
    return total / len(fft_sizes)


def lsd_sums(mag_ref: Tensor, mag_est: Tensor) -> Tensor:
    """``[B, 1]``: ``sum_frames sqrt(mean_freqs (10 log10(P_ref + 1e-10) - 10 log10(P_est + 1e-10))^2)``
    over these frames (see :func:`log_spectral_distance`)."""
    log_ref = 10.0 * torch.log10(mag_ref.pow(2) + LSD_EPS)
    log_est = 10.0 * torch.log10(mag_est.pow(2) + LSD_EPS)
    return _stack((log_ref - log_est).pow(2).mean(dim=1).sqrt().sum(dim=1))


def lsd_from_sums(sums: Tensor, frames: int) -> Tensor:
    return sums[:, 0] / frames


def log_spectral_distance(reference: Tensor, estimate: Tensor, *, n_fft: int = LSD_N_FFT, hop: int = LSD_HOP) -> Tensor:
    """Log-spectral distance in dB, per item.

    ``P_x = |STFT_1024(x)|^2`` (hop 160, Hann 1024, all 513 bins up to 8 kHz, all frames)::

        lsd_db = mean_{frames} sqrt( mean_{freqs} (10 log10(P_ref + 1e-10) - 10 log10(P_est + 1e-10))^2 )

    ``1e-10`` is a -100 dB power floor (for a full-scale sine, ``P`` peaks near 6.5e4). A pure gain
    ``g`` gives ``|20 log10 g|`` where all bins are well above the floor.
    """
    reference, estimate = _check_pair(reference, estimate)
    mag_ref, mag_est = _stft_mag(reference, n_fft, hop), _stft_mag(estimate, n_fft, hop)
    return lsd_from_sums(lsd_sums(mag_ref, mag_est), mag_ref.shape[-1])


# --------------------------------------------------------------------------------------------------
# waveform fidelity (dB, larger is better)


def centred_moments(reference: Tensor, estimate: Tensor) -> Tensor:
    """``[B, 5]`` float64: ``mean(ref)``, ``mean(est)``, ``<r, r>``, ``<r, e>``, ``<e, e>`` with
    ``r = ref - mean(ref)``, ``e = est - mean(est)``, in float64 so that the expanded forms of
    :func:`si_sdr_from_moments` keep their precision (``recon.metric_stream`` merges the moments of
    consecutive blocks exactly, Chan et al.'s pairwise update)."""
    ref, est = reference.double(), estimate.double()
    mean_ref, mean_est = ref.mean(dim=-1, keepdim=True), est.mean(dim=-1, keepdim=True)
    r, e = ref - mean_ref, est - mean_est
    return _stack(mean_ref[:, 0], mean_est[:, 0], (r * r).sum(dim=-1), (r * e).sum(dim=-1), (e * e).sum(dim=-1))


def si_sdr_from_moments(moments: Tensor) -> Tensor:
    """SI-SDR in dB from :func:`centred_moments`: ``||alpha r - e||^2 = alpha^2 <r, r> - 2 alpha <r, e> + <e, e>``."""
    rr, re, ee = moments[:, 2], moments[:, 3], moments[:, 4]
    alpha = (re + EPS_F32) / (rr + EPS_F32)
    target = alpha.pow(2) * rr
    residual = (target - 2.0 * alpha * re + ee).clamp(min=0.0)  # >= 0 exactly; rounding may dip below
    return _ratio_db(target, residual).float()


def si_sdr(reference: Tensor, estimate: Tensor) -> Tensor:
    """Scale-invariant SDR in dB, both signals made zero-mean first (torchmetrics, ``zero_mean=True``).

    With ``r = ref - mean(ref)``, ``e = est - mean(est)``, ``eps = eps_f32``::

        alpha = (<e, r> + eps) / (<r, r> + eps)
        si_sdr = 10 log10( (||alpha r||^2 + eps) / (||alpha r - e||^2 + eps) )

    Equals ``torchmetrics.functional.audio.scale_invariant_signal_distortion_ratio(est, ref,
    zero_mean=True)``. A perfect (scaled) estimate gives a large finite value, not inf. The inner
    products are float64 (see :func:`centred_moments`).
    """
    reference, estimate = _check_pair(reference, estimate)
    return si_sdr_from_moments(centred_moments(reference, estimate))


def snr_sums(reference: Tensor, estimate: Tensor) -> Tensor:
    """``[B, 2]``: ``sum ref^2`` and ``sum (ref - est)^2`` over these samples (see :func:`snr`)."""
    return _stack(reference.pow(2).sum(dim=-1), (reference - estimate).pow(2).sum(dim=-1))


def snr_from_sums(sums: Tensor) -> Tensor:
    return _ratio_db(sums[:, 0], sums[:, 1])


def snr(reference: Tensor, estimate: Tensor) -> Tensor:
    """Signal-to-noise ratio in dB (no mean removal, no scaling)::

        snr = 10 log10( (||ref||^2 + eps) / (||ref - est||^2 + eps) ),   eps = eps_f32

    Equals ``torchmetrics.functional.audio.signal_noise_ratio(est, ref, zero_mean=False)``.
    ``est = g ref`` gives ``-20 log10 |1 - g|`` (6.02 dB for g = 0.5). The DDCM-on-AudioLDM2
    workflow's ``snr_db``, ``10 log10((mean ref^2 + 1e-12) / (mean (ref - est)^2 + 1e-12))``, is the
    same ratio with other guards.
    """
    reference, estimate = _check_pair(reference, estimate)
    return snr_from_sums(snr_sums(reference, estimate))


def latent_snr(z: Tensor, z_hat: Tensor) -> Tensor:
    """Latent SNR in dB per item, over all non-batch dims (e.g. VAE latent vs its codebook version)::

        latent_snr = 10 log10( (||z||^2 + eps) / (||z - z_hat||^2 + eps) ),   eps = eps_f32
    """
    if not isinstance(z, Tensor) or not isinstance(z_hat, Tensor):
        raise TypeError("z and z_hat must be torch tensors")
    if z.shape != z_hat.shape or z.dim() < 2:
        raise ValueError(f"latent_snr expects two [B, ...] tensors of one shape, got {tuple(z.shape)} and {tuple(z_hat.shape)}")
    z = z.float().flatten(1)
    z_hat = z_hat.to(z.device).float().flatten(1)
    return _ratio_db(z.pow(2).sum(dim=1), (z - z_hat).pow(2).sum(dim=1))


def high_frequency_retention(
    reference: Tensor, estimate: Tensor, cutoff_hz: float = 4000.0, *, sample_rate: int = SAMPLE_RATE
) -> Tensor:
    """Energy above ``cutoff_hz`` in the estimate relative to the reference (1.0 = retained).

    ``P_x[k] = |rfft(x)[k]|^2 / N`` over the whole signal (no window), ``f_k = k sr / N``::

        hf_retention = (sum_{f_k > cutoff} P_est[k] + 1e-12) / (sum_{f_k > cutoff} P_ref[k] + 1e-12)

    A plain ratio (not dB): < 1 lost high band, > 1 added high-band energy (e.g. vocoder noise).
    At 16 kHz nothing exists above the 8 kHz Nyquist frequency, so ``cutoff_hz`` must lie in
    ``(0, 8000)``; the band measured is ``(cutoff, 8000]``. If the reference has no energy in the
    band the ratio is meaningless (1.0 if the estimate has none either, else huge).
    """
    reference, estimate = _check_pair(reference, estimate)
    nyquist = sample_rate / 2
    if not 0 < cutoff_hz < nyquist:
        raise ValueError(f"cutoff_hz must be in (0, {nyquist:g}) Hz at {sample_rate} Hz; nothing exists above {nyquist:g} Hz")
    n = reference.shape[-1]
    freqs = torch.fft.rfftfreq(n, d=1.0 / sample_rate, device=reference.device)
    band = freqs > cutoff_hz
    p_ref = torch.fft.rfft(reference, dim=-1).abs().pow(2) / n
    p_est = torch.fft.rfft(estimate, dim=-1).abs().pow(2) / n
    return hf_retention_from_energies(p_ref[:, band].sum(dim=-1), p_est[:, band].sum(dim=-1))


def hf_retention_from_energies(band_ref: Tensor, band_est: Tensor) -> Tensor:
    """``(band_est + 1e-12) / (band_ref + 1e-12)`` of the two band energies (see :func:`high_frequency_retention`)."""
    return (band_est + HF_EPS) / (band_ref + HF_EPS)


# --------------------------------------------------------------------------------------------------
# the DDCM-on-AudioLDM2 workflow's evaluation, with its exact settings, so its published numbers can
# be reproduced with recon (16 kHz; STFT_1024 with hop 256 as in the module docstring)


@functools.lru_cache(maxsize=None)
def _htk_mel(device: torch.device) -> Tensor:
    """``[128, 513]`` HTK mel filterbank (triangles of height 1, no area norm), 0 Hz to 8 kHz."""
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(
        WORKFLOW_N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=WORKFLOW_N_MELS,
        sample_rate=SAMPLE_RATE, norm=None, mel_scale="htk",
    )  # fmt: skip
    return fb.T.contiguous().to(device)


def mel_db_unfloored(mag: Tensor) -> Tensor:
    """``|S| [B, 513, frames]`` (STFT_1024, hop 256) -> ``D = 10 log10(max(H |S|^2, 1e-10))`` ``[B, 128, frames]``
    (see :func:`mel_power_db`; the 80 dB floor needs the whole signal's peak and is applied apart)."""
    return 10.0 * torch.log10((_htk_mel(mag.device) @ mag.pow(2)).clamp(min=WORKFLOW_AMIN))


def mel_power_db(x: Tensor) -> Tensor:
    """``[B, samples]`` -> ``[B, 128, frames]``: the workflow's mel spectrogram in dB, per item::

        P   = |STFT_1024(x)|^2                      (hop 256, periodic Hann, centred, reflect)
        M   = H P                                    (H: 128 HTK mel triangles, 0-8 kHz, norm None)
        D   = 10 log10(max(M, 1e-10))
        mel_db = max(D, max_{mels, frames}(D) - 80)  (the 80 dB range is taken per item)

    Equals ``AmplitudeToDB("power", top_db=80)(MelSpectrogram(16000, n_fft=1024, hop_length=256,
    n_mels=128, f_max=8000, norm=None, mel_scale="htk")(x))`` of torchaudio for one signal (a
    batched call of that transform would take the 80 dB range over the whole batch instead).
    """
    db = mel_db_unfloored(_stft_mag(x.float(), WORKFLOW_N_FFT, WORKFLOW_HOP))
    return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - WORKFLOW_TOP_DB)


def mel_db_sums(db_ref: Tensor, db_est: Tensor, peak_ref: Tensor, peak_est: Tensor) -> Tensor:
    """``[B, 2]``: ``sum |mel_db(ref) - mel_db(est)|`` over the low (0..41) and the high (42..127) mel
    bins of these frames, from :func:`mel_db_unfloored` frames and each signal's peak ``max D``
    over *all* its frames (``[B or 1]``)."""
    floored_ref = torch.maximum(db_ref, (peak_ref - WORKFLOW_TOP_DB)[:, None, None])
    floored_est = torch.maximum(db_est, (peak_est - WORKFLOW_TOP_DB)[:, None, None])
    err = (floored_ref - floored_est).abs()
    return _stack(err[:, :WORKFLOW_LOW_MELS].sum(dim=(1, 2)), err[:, WORKFLOW_LOW_MELS:].sum(dim=(1, 2)))


def mel_db_from_sums(sums: Tensor, frames: int) -> dict[str, Tensor]:
    """``mel_db_mae`` and its ``_low`` / ``_high`` bands: means over ``128 * frames``, ``42 * frames``
    and ``86 * frames`` values."""
    high_mels = WORKFLOW_N_MELS - WORKFLOW_LOW_MELS
    return {
        "mel_db_mae": (sums[:, 0] + sums[:, 1]) / (frames * WORKFLOW_N_MELS),
        "mel_db_mae_low": sums[:, 0] / (frames * WORKFLOW_LOW_MELS),
        "mel_db_mae_high": sums[:, 1] / (frames * high_mels),
    }


def _mel_db_values(reference: Tensor, estimate: Tensor) -> dict[str, Tensor]:
    db_ref = mel_db_unfloored(_stft_mag(reference, WORKFLOW_N_FFT, WORKFLOW_HOP))
    db_est = mel_db_unfloored(_stft_mag(estimate, WORKFLOW_N_FFT, WORKFLOW_HOP))
    sums = mel_db_sums(db_ref, db_est, db_ref.amax(dim=(1, 2)), db_est.amax(dim=(1, 2)))
    return mel_db_from_sums(sums, db_ref.shape[-1])


def mel_db_mae(reference: Tensor, estimate: Tensor) -> Tensor:
    """Mean absolute difference of the 128-bin HTK mel power spectrograms in dB (see :func:`mel_power_db`)::

        mel_db_mae = mean_{mels, frames} |mel_db(ref) - mel_db(est)|

    The DDCM-on-AudioLDM2 workflow's headline score (``mel_db_mae``). Each signal is floored 80 dB
    below its own peak, so a pure gain ``g`` gives ``|20 log10 g|`` only where neither bin sits at
    its floor. Not the AudioLDM2 front-end (:func:`log_mel_distance_db`: 64 slaney mels of the
    magnitude, hop 160).
    """
    reference, estimate = _check_pair(reference, estimate)
    return _mel_db_values(reference, estimate)["mel_db_mae"]


def mel_db_mae_bands(reference: Tensor, estimate: Tensor) -> tuple[Tensor, Tensor]:
    """``(low, high)``: :func:`mel_db_mae` over mel bins 0..41 (centres up to 0.89 kHz) and 42..127 (0.92 to 8 kHz).

    The split is at ``128 // 3 = 42`` bins, the workflow's. The full score is their mean weighted by
    bins: ``(42 low + 86 high) / 128``.
    """
    reference, estimate = _check_pair(reference, estimate)
    values = _mel_db_values(reference, estimate)
    return values["mel_db_mae_low"], values["mel_db_mae_high"]


def stft_mag_mse_sums(mag_ref: Tensor, mag_est: Tensor) -> Tensor:
    """``[B, 1]``: ``sum (|S_ref| - |S_est|)^2`` over the bins of these frames (see :func:`stft_mag_mse`)."""
    return _stack((mag_ref - mag_est).pow(2).sum(dim=(1, 2)))


def stft_mag_mse_from_sums(sums: Tensor, frames: int) -> Tensor:
    return sums[:, 0] / (frames * (WORKFLOW_N_FFT // 2 + 1))


def stft_mag_mse(reference: Tensor, estimate: Tensor) -> Tensor:
    """Mean squared difference of STFT magnitudes (n_fft 1024, hop 256), per item::

        stft_mag_mse = mean_{513 freqs, frames} (|STFT_1024(ref)| - |STFT_1024(est)|)^2

    Unnormalised magnitudes (a full-scale sine of amplitude a peaks near ``a * 256``), so the value
    scales with the square of the level; recon's references are peak-normalised to 0.5.
    """
    reference, estimate = _check_pair(reference, estimate)
    mag_ref, mag_est = _stft_mag(reference, WORKFLOW_N_FFT, WORKFLOW_HOP), _stft_mag(estimate, WORKFLOW_N_FFT, WORKFLOW_HOP)
    return stft_mag_mse_from_sums(stft_mag_mse_sums(mag_ref, mag_est), mag_ref.shape[-1])


def frame_centroids(mag: Tensor) -> Tensor:
    """``|S| [B, 513, frames]`` -> ``[B, frames]``: each frame's centroid in Hz (see :func:`spectral_centroid_hz`)."""
    freqs = torch.arange(mag.shape[1], device=mag.device, dtype=mag.dtype) * (SAMPLE_RATE / WORKFLOW_N_FFT)
    return (freqs[None, :, None] * mag).sum(dim=1) / mag.sum(dim=1).clamp(min=CENTROID_EPS)


def spectral_centroid_hz(x: Tensor) -> Tensor:
    """``[B, samples]`` -> ``[B, frames]``: magnitude-weighted mean frequency of each frame, in Hz::

        c_t = sum_k f_k |S[k, t]| / max(sum_k |S[k, t]|, 1e-9),   f_k = k * 16000 / 1024

    with ``S = STFT_1024(x)``, hop 256. A silent frame has centroid 0 Hz.
    """
    return frame_centroids(_stft_mag(x.float(), WORKFLOW_N_FFT, WORKFLOW_HOP))


def centroid_l1_sums(mag_ref: Tensor, mag_est: Tensor) -> Tensor:
    """``[B, 1]``: ``sum_t |c_t(ref) - c_t(est)|`` over these frames (see :func:`spectral_centroid_l1`)."""
    return _stack((frame_centroids(mag_ref) - frame_centroids(mag_est)).abs().sum(dim=1))


def centroid_l1_from_sums(sums: Tensor, frames: int) -> Tensor:
    return sums[:, 0] / frames


def spectral_centroid_l1(reference: Tensor, estimate: Tensor) -> Tensor:
    """Mean absolute difference of the frame spectral centroids, in Hz (see :func:`spectral_centroid_hz`)::

        spectral_centroid_l1 = mean_t |c_t(ref) - c_t(est)|
    """
    reference, estimate = _check_pair(reference, estimate)
    mag_ref, mag_est = _stft_mag(reference, WORKFLOW_N_FFT, WORKFLOW_HOP), _stft_mag(estimate, WORKFLOW_N_FFT, WORKFLOW_HOP)
    return centroid_l1_from_sums(centroid_l1_sums(mag_ref, mag_est), mag_ref.shape[-1])


def correlation_from_moments(moments: Tensor) -> Tensor:
    """Pearson correlation from :func:`centred_moments`: ``<r, e> / (sqrt<r, r> sqrt<e, e> + 1e-12)``."""
    rr, re, ee = moments[:, 2], moments[:, 3], moments[:, 4]
    return (re / (rr.sqrt() * ee.sqrt() + CORR_EPS)).float()


def waveform_correlation(reference: Tensor, estimate: Tensor) -> Tensor:
    """Pearson correlation of the two waveforms, in [-1, 1] (1: equal up to a positive gain and offset)::

        r = ref - mean(ref),  e = est - mean(est)
        waveform_corr = <r, e> / (||r|| ||e|| + 1e-12)

    Like SNR, it needs the phase: a vocoder that does not keep it scores near 0 even when it sounds right.
    The inner products are float64 (see :func:`centred_moments`).
    """
    reference, estimate = _check_pair(reference, estimate)
    return correlation_from_moments(centred_moments(reference, estimate))


def envelope_frames(x: Tensor) -> Tensor:
    """``[B, samples]`` -> ``[B, frames, 1024]``: frames of 1024 samples, hop 256, no padding
    (``1 + (samples - 1024) // 256`` frames); a signal shorter than one frame is zero-padded to one frame."""
    x = x.float()
    if x.shape[-1] < ENVELOPE_FRAME:
        x = torch.nn.functional.pad(x, (0, ENVELOPE_FRAME - x.shape[-1]))
    return x.unfold(-1, ENVELOPE_FRAME, ENVELOPE_HOP)


def frames_rms(frames: Tensor) -> Tensor:
    """``[B, frames, n]`` -> ``[B, frames]``: ``sqrt(mean(x^2) + 1e-12)`` of each frame."""
    return (frames.pow(2).mean(dim=-1) + ENVELOPE_EPS).sqrt()


def frame_rms(x: Tensor) -> Tensor:
    """``[B, samples]`` -> ``[B, frames]``: ``sqrt(mean(x^2) + 1e-12)`` over frames of 1024 samples,
    hop 256, no padding (``1 + (samples - 1024) // 256`` frames); a signal shorter than one frame is
    zero-padded to one frame."""
    return frames_rms(envelope_frames(x))


def envelope_sums(frames_ref: Tensor, frames_est: Tensor) -> Tensor:
    """``[B, 1]``: ``sum_t |rms_t(ref) - rms_t(est)|`` over these :func:`envelope_frames` (see :func:`envelope_rms_l1`)."""
    return _stack((frames_rms(frames_ref) - frames_rms(frames_est)).abs().sum(dim=1))


def envelope_from_sums(sums: Tensor, frames: int) -> Tensor:
    return sums[:, 0] / frames


def envelope_rms_l1(reference: Tensor, estimate: Tensor) -> Tensor:
    """Envelope drift: mean absolute difference of the frame RMS envelopes (see :func:`frame_rms`)::

        envelope_rms_l1 = mean_t |rms_t(ref) - rms_t(est)|

    In waveform units (recon's references peak at 0.5); the workflow's hard-case triage calls a file's
    envelope drifting above 0.02. Smeared transients and level swings raise it; phase does not.
    """
    reference, estimate = _check_pair(reference, estimate)
    frames_ref, frames_est = envelope_frames(reference), envelope_frames(estimate)
    return envelope_from_sums(envelope_sums(frames_ref, frames_est), frames_ref.shape[1])


def workflow_metrics(reference: Tensor, estimate: Tensor) -> dict[str, Tensor]:
    """Every metric of :data:`WORKFLOW_METRICS`, ``[B]`` each; the mel spectrograms computed once."""
    reference, estimate = _check_pair(reference, estimate)
    return {
        **_mel_db_values(reference, estimate),
        "stft_mag_mse": stft_mag_mse(reference, estimate),
        "spectral_centroid_l1": spectral_centroid_l1(reference, estimate),
        "waveform_corr": waveform_correlation(reference, estimate),
        "envelope_rms_l1": envelope_rms_l1(reference, estimate),
    }


# --------------------------------------------------------------------------------------------------
# perceptual (slow, CPU, numpy): NaN plus a logged warning where the measure is undefined
#
# PESQ and STOI are speech measures that normalise level: PESQ aligns both signals to one level,
# STOI normalises each short-time envelope, ViSQOL scales the estimate to the reference's sound
# pressure level. So a near-silent output of the right shape scores as well as a loud one (a
# random-weight vocoder's output 68 dB below its input got PESQ 4.32, STOI 0.52). recon calls them
# undefined rather than report such numbers:
#
# * input contains NaN or infinite samples, or the reference is silent;
# * the reference is shorter than the measure needs (PESQ 0.25 s, STOI 30 frames = 0.41 s, ViSQOL 1 s);
# * the estimate is silent or near-silent: its RMS more than NEAR_SILENT_DB below the reference's;
# * the library rejects the pair: PESQ detects no utterance in the reference (music, noise),
#   pystoi keeps fewer than 30 frames after removing the reference's silent frames, or ViSQOL
#   finds too few frames or patches (its speech mode keeps only voice-active patches).

PESQ_MIN_SECONDS = 0.25  # the pesq library raises BufferTooShort below this
STOI_MIN_SECONDS = 0.41  # 30 frames of 256 samples at 10 kHz, hop 128 (measured on full-band noise)
# A real reconstruction is within a few dB of its input; random weights give outputs 45-80 dB down.
NEAR_SILENT_DB = 30.0
# ViSQOL's audio mode needs 45 frames of 20 ms (0.96 s, measured); speech mode fails below about
# 0.65 s of speech. One limit for both modes, so a short file is n/a in both for the same reason.
VISQOL_MIN_SECONDS = 1.0
VISQOL_AUDIO_RATE = 48000  # the rate ViSQOL's audio mode is defined at (32 gammatone bands to 15 kHz)


class _Undefined(Exception):
    """The perceptual measure is undefined for this pair; the message is the reason.

    ``of_reference``: the reason lies in the reference alone, so it holds for every output of it.
    """

    def __init__(self, reason: str, of_reference: bool = False):
        super().__init__(reason)
        self.of_reference = of_reference


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _check_defined(ref: np.ndarray, est: np.ndarray, min_seconds: float) -> None:
    """Raise :class:`_Undefined` for the cases both measures share (see the list above)."""
    if not np.isfinite(ref).all():
        raise _Undefined("reference contains NaN or infinite samples", of_reference=True)
    if not np.isfinite(est).all():
        raise _Undefined("estimate contains NaN or infinite samples")
    if not np.any(ref):
        raise _Undefined("reference is silent (all zeros)", of_reference=True)
    seconds = ref.size / SAMPLE_RATE
    if seconds < min_seconds:
        raise _Undefined(f"reference is {seconds:.2f} s, shorter than the {min_seconds:g} s it needs", of_reference=True)
    if not np.any(est):
        raise _Undefined("estimate is silent (all zeros)")
    below_db = 20.0 * math.log10(_rms(ref) / _rms(est))
    if below_db > NEAR_SILENT_DB:
        raise _Undefined(f"estimate is near-silent ({below_db:.0f} dB below the reference; limit {NEAR_SILENT_DB:g} dB)")


def _pesq_one(ref: np.ndarray, est: np.ndarray) -> float:
    import pesq as pesq_lib

    _check_defined(ref, est, PESQ_MIN_SECONDS)
    try:
        with np.errstate(all="ignore"):
            return pesq_lib.pesq(SAMPLE_RATE, ref, est, "wb")
    except pesq_lib.NoUtterancesError as err:
        # The library's voice activity detection runs on the reference: not speech, or too quiet.
        raise _Undefined("PESQ found no utterance in the reference (not speech?)", of_reference=True) from err
    except (pesq_lib.PesqError, ValueError) as err:
        msg = err.args[0] if err.args else ""
        msg = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
        raise _Undefined(f"PESQ failed ({type(err).__name__}: {msg})") from err


def _stoi_one(ref: np.ndarray, est: np.ndarray) -> float:
    from pystoi import stoi as stoi_lib

    _check_defined(ref, est, STOI_MIN_SECONDS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = stoi_lib(ref, est, SAMPLE_RATE, extended=False)
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "Not enough STFT frames" in str(w.message):
            # pystoi returns a placeholder 1e-5 here; its silence removal follows the reference.
            raise _Undefined("STOI has fewer than 30 frames left after removing the reference's silent frames", of_reference=True)
    return value


@functools.lru_cache(maxsize=None)
def _visqol_api(mode: str):
    """One ViSQOL instance per mode and process (creating one loads its model)."""
    from visqol import VisqolApi

    api = VisqolApi()
    if mode == "speech":
        # The deep-lattice mapper, ViSQOL's C++ default; the polynomial fallback over-predicts
        # degraded speech by 1-2 MOS. Explicit, so a missing runtime is an error, not a fallback.
        api.create(mode="speech", use_lattice_model=True)
    else:
        api.create(mode="audio")
    return api


def to_visqol_audio_rate(x: np.ndarray) -> np.ndarray:
    """16 kHz -> 48 kHz for ViSQOL's audio mode, with torchaudio's resampler (windowed sinc, width 6,
    rolloff 0.99: the one recon resamples with everywhere), in float64. Nothing is added above 8 kHz."""
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.asarray(x, dtype=np.float64)), SAMPLE_RATE, VISQOL_AUDIO_RATE).numpy()


def _visqol_one(mode: str, ref: np.ndarray, est: np.ndarray) -> float:
    _check_defined(ref, est, VISQOL_MIN_SECONDS)
    if mode == "audio":
        ref, est, rate = to_visqol_audio_rate(ref), to_visqol_audio_rate(est), VISQOL_AUDIO_RATE
    else:
        rate = SAMPLE_RATE
    try:
        return _visqol_api(mode).measure_from_arrays(ref, est, rate).moslqo
    except (ValueError, IndexError) as err:
        # Too few frames for a patch, or (speech mode) no voice-active patch in the reference.
        raise _Undefined(f"ViSQOL {mode} mode failed ({type(err).__name__}: {err})") from err


def _visqol_audio_one(ref: np.ndarray, est: np.ndarray) -> float:
    return _visqol_one("audio", ref, est)


def _visqol_speech_one(ref: np.ndarray, est: np.ndarray) -> float:
    return _visqol_one("speech", ref, est)


_SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pesq_wb": _pesq_one, "stoi": _stoi_one, "visqol_audio": _visqol_audio_one, "visqol_speech": _visqol_speech_one,
}
_MIN_SECONDS = {"pesq_wb": PESQ_MIN_SECONDS, "stoi": STOI_MIN_SECONDS, "visqol_audio": VISQOL_MIN_SECONDS, "visqol_speech": VISQOL_MIN_SECONDS}


def undefined_reason(name: str, reference: np.ndarray, estimate: np.ndarray) -> str | None:
    """Why ``name`` (one of :data:`PERCEPTUAL_METRICS`) is undefined for this pair by the checks that need no
    library (input, length, level), or None. Cheap: the report asks it for every NaN cell."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    try:
        _check_defined(ref, est, _MIN_SECONDS[name])
    except _Undefined as err:
        return str(err)
    return None


def perceptual_details(reference: np.ndarray, estimate: np.ndarray, names: Sequence[str] = PERCEPTUAL_METRICS) -> dict[str, tuple[float, str | None]]:
    """``{metric: (value, reason)}`` for one pair of 16 kHz host arrays; ``(nan, why)`` where undefined.

    Logs nothing: the report uses it to say why a cell of metrics.csv is NaN.
    """
    return {name: (value, reason) for name, (value, reason, _) in _score_pair(reference, estimate, names).items()}


def _score_pair(reference: np.ndarray, estimate: np.ndarray, names: Sequence[str]) -> dict[str, tuple[float, str | None, bool]]:
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    out = {}
    for name in names:
        try:
            out[name] = (float(_SCORERS[name](ref, est)), None, False)
        except _Undefined as err:
            out[name] = (float("nan"), str(err), err.of_reference)
    return out


# Reasons already logged for the latest reference. The runner scores every output of a file one
# after the other, so a reason that lies in the reference (no utterance, too short) is said once per
# file instead of once per variant. A reason of one pair needs no memory: each pair is scored once.
_reference_warnings: dict[bytes, set[tuple[str, str]]] = {}  # at most one entry


def _warn_undefined(scores: dict[str, tuple[float, str | None, bool]], label: str, reference: np.ndarray) -> None:
    """A warning naming ``label`` per NaN measure, a reason of the reference only once."""
    for name, (_, reason, of_reference) in scores.items():
        if reason is None:
            continue
        if not of_reference:
            logger.warning("%s of %s is NaN: %s", name, label, reason)
            continue
        digest = hashlib.blake2b(np.ascontiguousarray(reference).tobytes(), digest_size=16).digest()
        if digest not in _reference_warnings:
            _reference_warnings.clear()
            _reference_warnings[digest] = set()
        if (name, reason) not in _reference_warnings[digest]:
            _reference_warnings[digest].add((name, reason))
            logger.warning("%s of %s is NaN: %s (so for every output of this file; said once)", name, label, reason)


def _per_item(name: str, reference: Tensor, estimate: Tensor, labels: Sequence[str] | None = None) -> Tensor:
    reference, estimate = _check_pair(reference, estimate)
    ref_np = reference.detach().cpu().numpy().astype(np.float64)
    est_np = estimate.detach().cpu().numpy().astype(np.float64)
    out = []
    for i, (r, e) in enumerate(zip(np.broadcast_to(ref_np, est_np.shape), est_np)):
        scores = _score_pair(r, e, [name])
        _warn_undefined(scores, labels[i] if labels else f"item {i}", r)
        out.append(scores[name][0])
    return torch.tensor(out, dtype=torch.float32, device=reference.device)


def pesq_wb(reference: Tensor, estimate: Tensor, labels: Sequence[str] | None = None) -> Tensor:
    """Wide-band PESQ (ITU-T P.862.2 MOS-LQO, about 1.04-4.64) per item, ``pesq`` package, 16 kHz, ``"wb"``.

    The library peak-normalises both signals jointly, so overall level does not matter - which is
    why a near-silent estimate is NaN rather than scored. NaN, with a warning on the ``recon.metrics``
    logger naming the item and the reason, in the cases listed above this function.
    """
    return _per_item("pesq_wb", reference, estimate, labels)


def stoi(reference: Tensor, estimate: Tensor, labels: Sequence[str] | None = None) -> Tensor:
    """STOI (Taal et al. 2011, 0-1, higher is more intelligible) per item, ``pystoi`` at 16 kHz, not extended.

    NaN, with a warning on the ``recon.metrics`` logger naming the item and the reason, in the
    cases listed above :func:`pesq_wb` (where pystoi itself would return a placeholder 1e-5
    for too few frames, and a meaningless score for a near-silent estimate).
    """
    return _per_item("stoi", reference, estimate, labels)


def visqol_audio(reference: Tensor, estimate: Tensor, labels: Sequence[str] | None = None) -> Tensor:
    """ViSQOL v3 MOS-LQO in audio mode (about 1-4.75) per item, ``visqol-python`` (a port of Google's
    C++ ViSQOL checked against it by its authors): both 16 kHz signals are resampled to 48 kHz with
    :func:`to_visqol_audio_rate`, the rate the mode is defined at; 32 gammatone bands 50 Hz-15 kHz,
    NSIM of 30-frame patches mapped to MOS by the bundled SVR model. Above 8 kHz both signals are
    empty, so the top bands compare silence with silence. For every kind of audio.

    The library scales the estimate to the reference's level, so a near-silent estimate is NaN as
    for PESQ; NaN also for a reference shorter than ``VISQOL_MIN_SECONDS`` (1 s) and where the
    library finds too few frames, with a warning as for :func:`pesq_wb`.
    """
    return _per_item("visqol_audio", reference, estimate, labels)


def visqol_speech(reference: Tensor, estimate: Tensor, labels: Sequence[str] | None = None) -> Tensor:
    """ViSQOL v3 MOS-LQO in speech mode (about 1-4.55) per item, at 16 kHz (the mode's rate, no
    resampling): 21 gammatone bands 50 Hz-8 kHz, voice-active 20-frame patches only, mapped to MOS by
    the deep-lattice model (ViSQOL's C++ default; needs ``ai-edge-litert``). Meaningful for speech,
    computed for every file like STOI. NaN as for :func:`visqol_audio`, and where the library finds
    no voice-active patch."""
    return _per_item("visqol_speech", reference, estimate, labels)


def perceptual_scores(reference: np.ndarray, estimate: np.ndarray, label: str, names: Sequence[str] = PERCEPTUAL_METRICS) -> dict[str, float]:
    """The perceptual metrics ``names`` (default all: PESQ, STOI, ViSQOL audio and speech mode) of one
    pair of 16 kHz host arrays. Runs in a worker process of the result writer (or on its thread);
    ``label`` (the runner passes ``"<file> [<variant>]"``) names the pair in the warning about a NaN."""
    unknown = [n for n in names if n not in _SCORERS]
    if unknown:
        raise ValueError(f"unknown perceptual metrics {unknown}; known: {', '.join(PERCEPTUAL_METRICS)}")
    scores = _score_pair(reference, estimate, names)
    _warn_undefined(scores, label, np.asarray(reference))
    return {name: value for name, (value, _, _) in scores.items()}


# Perceptual metrics of a long file are scored on excerpts: PESQ, STOI and ViSQOL hold the whole
# pair (and their own copies) in memory and have no streamed form; a file up to this long is scored whole.
PERCEPTUAL_WHOLE_SECONDS = 120.0
PERCEPTUAL_EXCERPTS = 6
PERCEPTUAL_EXCERPT_SECONDS = 20.0


def excerpt_starts(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """(start, length) of the excerpts a long file's perceptual metrics are scored on:
    :data:`PERCEPTUAL_EXCERPTS` windows of :data:`PERCEPTUAL_EXCERPT_SECONDS`, evenly spaced from
    the first sample to the last; the whole file (one window) when it is at most
    :data:`PERCEPTUAL_WHOLE_SECONDS` long."""
    if num_samples <= PERCEPTUAL_WHOLE_SECONDS * sample_rate:
        return [(0, num_samples)]
    length = int(PERCEPTUAL_EXCERPT_SECONDS * sample_rate)
    last = num_samples - length
    return [(round(k * last / (PERCEPTUAL_EXCERPTS - 1)), length) for k in range(PERCEPTUAL_EXCERPTS)]


def perceptual_scores_of_files(reference_path: str, estimate_path: str, label: str,
                               names: Sequence[str] = PERCEPTUAL_METRICS) -> dict[str, float]:
    """:func:`perceptual_scores` of two written 16 kHz wavs of equal length, read in bounded memory:
    whole up to :data:`PERCEPTUAL_WHOLE_SECONDS`, else the mean over the excerpts of
    :func:`excerpt_starts` of the excerpts where the metric is defined (NaN if none is). Not the
    whole-file value: these metrics have no streamed form, and the row's notes say so."""
    import soundfile as sf

    frames = sf.info(reference_path).frames
    per_excerpt: dict[str, list[float]] = {name: [] for name in names}
    for start, length in excerpt_starts(frames):
        ref, _ = sf.read(reference_path, start=start, frames=length, dtype="float32")
        est, _ = sf.read(estimate_path, start=start, frames=length, dtype="float32")
        for name, value in perceptual_scores(ref, est, f"{label} @{start / SAMPLE_RATE:.0f}s", names).items():
            per_excerpt[name].append(value)
    return {name: float(np.nanmean(values)) if not np.isnan(values).all() else float("nan") for name, values in per_excerpt.items()}


def perceptual_excerpt_note(num_samples: int) -> str | None:
    """The note a row carries when its perceptual metrics come from excerpts, else None."""
    windows = excerpt_starts(num_samples)
    if len(windows) == 1:
        return None
    return f"PESQ/STOI/ViSQOL: mean over {len(windows)} excerpts of {PERCEPTUAL_EXCERPT_SECONDS:g} s (not streamable)"


# --------------------------------------------------------------------------------------------------
# bitrate


def bitrate_bps(bits_per_index: float, indices_per_second: float) -> float:
    """Bits per second of a stream of code indices: ``bits_per_index * indices_per_second``."""
    return float(bits_per_index) * float(indices_per_second)


# Hard codebook: log2(1024) = 10 bits per vector x 400 vectors/s = 4000 bps.
CODEBOOK_HARD_BPS = bitrate_bps(math.log2(CODEBOOK_SIZE), LATENT_VECTORS_PER_SECOND)


# --------------------------------------------------------------------------------------------------
# everything at once


@torch.no_grad()
def compute_all(
    reference: Tensor,
    estimate: Tensor,
    frontend: MelFrontEnd | None = None,
    *,
    include_perceptual: bool = True,
) -> dict[str, Tensor]:
    """Every waveform metric of this module, each a ``[B]`` tensor, keyed by name.

    Keys: ``log_mel_db``, ``mel_multiscale``, ``mr_stft``, ``lsd_db``, ``si_sdr_db``, ``snr_db``,
    ``hf_retention`` (cutoff 4 kHz), the workflow metrics of :data:`WORKFLOW_METRICS`
    (``mel_db_mae`` and its ``_low``/``_high`` bands, ``stft_mag_mse``, ``spectral_centroid_l1``,
    ``waveform_corr``, ``envelope_rms_l1``) and, unless ``include_perceptual=False`` (they are
    slow), ``pesq_wb``, ``stoi``, ``visqol_audio`` and ``visqol_speech``.
    """
    reference, estimate = _check_pair(reference, estimate)
    out = {
        "log_mel_db": log_mel_distance_db(reference, estimate, frontend),
        "mel_multiscale": multiscale_mel_distance(reference, estimate),
        "mr_stft": multi_resolution_stft_distance(reference, estimate),
        "lsd_db": log_spectral_distance(reference, estimate),
        "si_sdr_db": si_sdr(reference, estimate),
        "snr_db": snr(reference, estimate),
        "hf_retention": high_frequency_retention(reference, estimate),
        **workflow_metrics(reference, estimate),
    }
    if include_perceptual:
        out["pesq_wb"] = pesq_wb(reference, estimate)
        out["stoi"] = stoi(reference, estimate)
        out["visqol_audio"] = visqol_audio(reference, estimate)
        out["visqol_speech"] = visqol_speech(reference, estimate)
    return out


__all__ = [
    "CODEBOOK_HARD_BPS",
    "CODEBOOK_SIZE",
    "LATENT_VECTORS_PER_SECOND",
    "PERCEPTUAL_METRICS",
    "WAVEFORM_METRICS",
    "WORKFLOW_METRICS",
    "NEAR_SILENT_DB",
    "PESQ_MIN_SECONDS",
    "STOI_MIN_SECONDS",
    "VISQOL_AUDIO_RATE",
    "VISQOL_METRICS",
    "VISQOL_MIN_SECONDS",
    "bitrate_bps",
    "compute_all",
    "high_frequency_retention",
    "envelope_rms_l1",
    "frame_rms",
    "latent_snr",
    "log_mel_distance_db",
    "log_spectral_distance",
    "mel_db_mae",
    "mel_db_mae_bands",
    "mel_power_db",
    "multi_resolution_stft_distance",
    "multiscale_mel_distance",
    "perceptual_details",
    "perceptual_scores",
    "pesq_wb",
    "si_sdr",
    "snr",
    "spectral_centroid_hz",
    "spectral_centroid_l1",
    "stft_mag_mse",
    "stoi",
    "to_visqol_audio_rate",
    "undefined_reason",
    "visqol_audio",
    "visqol_speech",
    "waveform_correlation",
    "workflow_metrics",
]
