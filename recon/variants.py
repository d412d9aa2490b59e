"""Reconstruction variants: one registered function each, all sharing one encode per batch.

A variant takes a :class:`VariantInput` (the batch's waveforms, log-mels and posterior, computed
once) and the loaded :class:`Models`, and returns a :class:`Reconstruction`. New variants are
added with ``@register(...)``. No variant falls back to another: a variant that cannot run (a
missing codebook, say) is an error.

Each function's docstring says which script of the original experiments it stands for and what it
does *correctly* where that script went wrong.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
import torchaudio.functional as AF
from torch import Tensor

from .audio import AudioSpec, MelFrontEnd
from .backbone import FrozenAudioLDM2
from .codebook import VectorQuantizer
from .ddcm_options import DDCMOptions
from .metrics import LATENT_VECTORS_PER_SECOND
from .precision import fp32_island

log = logging.getLogger(__name__)
DDCM_OPTION_NAMES = tuple(f.name for f in fields(DDCMOptions))


@dataclass
class VariantInput:
    """One chunk of segments, everything a variant may need, computed once."""

    wav: Tensor  # [B, samples], model-ready (normalised) segments
    logmel: Tensor  # [B, 1, frames, mels]
    mean: Tensor  # [B, 8, T/4, F/4] posterior mean (unscaled)
    std: Tensor  # posterior std
    keys: list[str]  # one stable key per segment ("file#segment"): seeds are per segment, not per batch

    def select(self, rows: list[int]) -> "VariantInput":
        """The same input restricted to some segments (a retry of part of a batch)."""
        index = torch.tensor(rows, device=self.wav.device)
        wav, logmel, mean, std = (t.index_select(0, index) for t in (self.wav, self.logmel, self.mean, self.std))
        return VariantInput(wav, logmel, mean, std, [self.keys[r] for r in rows])


@dataclass
class Reconstruction:
    wav: Tensor  # [B, samples]
    latent: Tensor | None = None  # the latent that was decoded, when it stands for the input's latent
    codes: Tensor | None = None  # [B, ...] per-segment codes of a codec variant, packed by Variant.pack_codes
    notes: list[list[str]] = field(default_factory=list)  # per segment: what the variant did (e.g. a rescale)


@dataclass
class Models:
    backbone: FrozenAudioLDM2
    frontend: MelFrontEnd
    quantizer: VectorQuantizer | None = None
    diffusion: object | None = None  # recon.diffusion components, loaded only for diffusion variants

    def require_quantizer(self, variant: str) -> VectorQuantizer:
        if self.quantizer is None:
            raise ValueError(f"variant '{variant}' needs a trained codebook: pass --ckpt")
        return self.quantizer

    def require_diffusion(self, variant: str):
        if self.diffusion is None:
            raise ValueError(f"variant '{variant}' needs the AudioLDM2 diffusion components: pass --diffusion")
        return self.diffusion


@dataclass
class VariantSettings:
    seed: int = 0
    griffinlim_iters: int = 64
    mixed_smoothing: bool = True
    soft_temperature: float | None = None  # None: the temperature the codebook was trained to
    codebook_bits: float = 10.0  # log2 K of the loaded codebook
    # Diffusion variants (AudioLDM2 UNet, DDIM).
    diffusion_steps: int = 20  # DDIM steps of codebook_sdedit's refinement and of text2audio (not DDCM's)
    guidance_scale: float = 7.5
    refine_strength: float = 0.3  # codebook_sdedit: 0 = codebook only, 1 = generation from noise
    refine_prompt: str = ""  # conditioning of codebook_sdedit / ddcm_noise: empty = neutral
    prompt: str = "high quality music"  # text2audio
    ddcm_steps: int = 50  # DDCM sampler steps: the bitstream's length (not diffusion_steps)
    ddcm_k: int = 1024
    # ddcm_noise's sampler options (recon.ddcm_options.DDCMOptions, field for field; defaults: plain DDCM).
    ddcm_atoms: int = 1
    ddcm_level_bits: int = 4
    ddcm_t_range: tuple[int, int] | None = None
    ddcm_eta: float = 1.0
    ddcm_eta_late: float | None = None
    ddcm_eta_switch: int | None = None
    ddcm_score: str = "dot"
    ddcm_blend_lambda: float = 0.5
    ddcm_score_late: str | None = None
    ddcm_score_switch: int | None = None
    ddcm_k_late: int | None = None
    ddcm_k_switch: int | None = None
    ddcm_rerank: int = 0
    ddcm_rerank_every: int = 1
    ddcm_turbo: int = 0
    rvq_stages: int = 1  # codebook_rvq: how many residual stages code each vector
    opus_kbps: float = 6.0  # opus baseline: the target rate given to libsndfile's encoder (6 is its lowest)
    overlap: int = 0  # samples shared by consecutive windows of a file, crossfaded (recon.audio.crossfade_join)

    @property
    def ddcm_options(self) -> DDCMOptions:
        """The sampler's options; a late option that is off ignores its switch step (so a sweep can
        turn it off: ``--ddcm-eta-late off,0.35 --ddcm-eta-switch 200``)."""
        values = {name: getattr(self, f"ddcm_{name}") for name in DDCM_OPTION_NAMES}
        for late, switch in (("eta_late", "eta_switch"), ("score_late", "score_switch"), ("k_late", "k_switch")):
            if values[late] is None:
                values[switch] = None
        return DDCMOptions(**values)

    @property
    def ddcm_bitrate_bps(self) -> float:
        """Bits per 10.24 s segment on AudioLDM2's schedule / 10.24 s: (steps - 1)·log2 K for plain DDCM;
        with options the worst case of recon.ddcm_options (every mixing atom kept), exact for P = 1."""
        from .ddcm import coded_sizes_on
        from .ddcm_options import max_bits_per_item
        from .diffusion import AUDIOLDM2_SCHEDULER_CONFIG

        sizes = coded_sizes_on(AUDIOLDM2_SCHEDULER_CONFIG, self.ddcm_steps, self.ddcm_k, self.ddcm_options)
        return max_bits_per_item(sizes, self.ddcm_options) / AudioSpec().duration


@dataclass(frozen=True)
class Variant:
    name: str
    fn: Callable[[VariantInput, Models, VariantSettings], Reconstruction]
    description: str
    requires: tuple[str, ...] = ()  # "codebook", "diffusion"
    is_reconstruction: bool = True
    bitrate_bps: float | Callable[[VariantSettings], float] | None = None  # None: not a bitstream
    uses_latent: bool = True
    # Codec variants: (one file's per-segment codes, segment lengths in samples, the file's length,
    # the gain that restores its level, settings, models) -> the bytes of its file, and its suffix.
    # (codes, segment lengths, samples, level, settings, models, source=the input's format) -> the file's bytes
    pack_codes: Callable[..., bytes] | None = None
    codes_suffix: str = ""
    # The settings a sweep point fixes (``codebook_sdedit@0.2`` has refine_strength=0.2): see sweep().
    overrides: tuple[tuple[str, object], ...] = ()

    def settings(self, settings: VariantSettings) -> VariantSettings:
        return replace(settings, **dict(self.overrides)) if self.overrides else settings

    def run(self, x: "VariantInput", models: "Models", settings: VariantSettings) -> "Reconstruction":
        return self.fn(x, models, self.settings(settings))

    def bitrate(self, settings: VariantSettings) -> float | None:
        return self.bitrate_bps(self.settings(settings)) if callable(self.bitrate_bps) else self.bitrate_bps


VARIANTS: dict[str, Variant] = {}


def register(name: str, description: str, **kwargs) -> Callable:
    def wrap(fn):
        if name in VARIANTS:
            raise ValueError(f"variant '{name}' is registered twice")
        VARIANTS[name] = Variant(name, fn, description, **kwargs)
        return fn

    return wrap


# ---------------------------------------------------------------------- shared steps
def segment_seed(seed: int, key: str) -> int:
    """A generator seed for one segment of a run: independent of batching, device count and rank."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:7], "little")


def seeded_normal(keys: list[str], shape: tuple[int, ...], seed: int, like: Tensor) -> Tensor:
    """Standard normal noise, one independent seeded stream per segment key (batching-invariant)."""
    draws = []
    for key in keys:
        draws.append(torch.randn(shape, generator=torch.Generator().manual_seed(segment_seed(seed, key))))
    return torch.stack(draws).to(device=like.device, dtype=like.dtype)


def rescale_std(z: Tensor, threshold: float, target: float) -> tuple[Tensor, Tensor]:
    """Per item: if std(z) > threshold, scale z to std ``target``. Returns (z, fired [B])."""
    std = z.flatten(1).std(dim=1)
    fired = std > threshold
    factor = torch.where(fired, target / std.clamp_min(1e-12), torch.ones_like(std))
    return z * factor.view(-1, *([1] * (z.dim() - 1))), fired


def rms_gain(reference: Tensor, output: Tensor, lo: float, hi: float) -> Tensor:
    """Match the output's RMS to the reference's, with the gain clipped to [lo, hi]."""
    rms = lambda x: x.pow(2).mean(dim=-1, keepdim=True).sqrt()  # noqa: E731
    gain = (rms(reference) / rms(output).clamp_min(1e-8)).clamp(lo, hi)
    return output * gain


def peak_guard(wav: Tensor) -> Tensor:
    """Peak-normalise items whose |peak| exceeds 1 (never hard-clip)."""
    peak = wav.abs().amax(dim=-1, keepdim=True)
    return torch.where(peak > 1, wav / peak, wav)


def highpass_zero_phase(wav: Tensor, cutoff_hz: float, sample_rate: int) -> Tensor:
    """First-order RC high-pass run forward and backward (zero phase)."""
    rc = 1.0 / (2 * math.pi * cutoff_hz)
    alpha = rc / (rc + 1.0 / sample_rate)
    # torchaudio's lfilter has no half-precision kernels on CPU or CUDA: always float32.
    with fp32_island(wav.device):
        b = torch.tensor([alpha, -alpha], dtype=torch.float32, device=wav.device)
        a = torch.tensor([1.0, -alpha], dtype=torch.float32, device=wav.device)
        return AF.filtfilt(wav.float(), a, b, clamp=False)


def decode_and_vocode(models: Models, z: Tensor, num_samples: int) -> Tensor:
    return models.backbone.vocode(models.backbone.decode(z), num_samples).float()


def hard_codes(models: Models, latent: Tensor, variant: str) -> Tensor:
    """The nearest trained code of every latent vector."""
    quantizer = models.require_quantizer(variant)
    return quantizer.decode_indices(quantizer.quantize_indices(latent)).to(latent.dtype)


def notes_for(fired: Tensor, message: str) -> list[list[str]]:
    return [[message] if f else [] for f in fired.tolist()]


# ---------------------------------------------------------------------- VAE variants
@register("vae_mode", "posterior mode -> decode -> vocoder (the control)")
def vae_mode(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """The core of every seed script: decode the posterior mode and vocode it."""
    return Reconstruction(decode_and_vocode(models, x.mean, x.wav.shape[-1]), latent=x.mean)


@register("vae_sample", "one seeded posterior sample -> decode -> vocoder")
def vae_sample(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"Critical Fix": a posterior sample (seeded per segment), no loudness matching."""
    z = x.mean + x.std * seeded_normal(x.keys, tuple(x.mean.shape[1:]), settings.seed, x.mean)
    return Reconstruction(decode_and_vocode(models, z, x.wav.shape[-1]), latent=z)


@register("vae_clamped", "mode, latent std clamped to 3.0, loudness matched")
def vae_clamped(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"Ultimate Fix": mode; rescale to std 3.0 when larger (noted); RMS gain in [0.1, 10]."""
    z, fired = rescale_std(x.mean, threshold=3.0, target=3.0)
    wav = rms_gain(x.wav, decode_and_vocode(models, z, x.wav.shape[-1]), 0.1, 10.0)
    return Reconstruction(peak_guard(wav), latent=z, notes=notes_for(fired, "latent std > 3.0: rescaled to 3.0"))


HIGH_BAND_START = 48  # mel bins 48-63 are the top quarter of the 0-8 kHz band


@register("vae_highfreq", "mode, std clamp 5->4.5, high-band shelf on mel bins >= 48")
def vae_highfreq(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"V5 High Freq": mode; if std > 5 rescale to 4.5; boost the high band of the decoded log-mel.

    With mid / high = mean decoded log-mel over bins 0-47 / 48-63 (per item), when
    high < mid - 2, add ln(g) to bins >= 48 with g = 1 + min(0.5, (mid - high) / 10): a gain on
    the magnitude is an *addition* in the log domain (the original multiplied negative log values
    by g, which cut the band, and its trigger sliced time frames, so it never fired). Then RMS
    gain in [0.3, 3]. Nothing exists above 8 kHz at 16 kHz; the shelf acts on 5.3-8 kHz.
    """
    z, fired = rescale_std(x.mean, threshold=5.0, target=4.5)
    mel = models.backbone.decode(z).float()
    mid = mel[..., :HIGH_BAND_START].mean(dim=(1, 2, 3))
    high = mel[..., HIGH_BAND_START:].mean(dim=(1, 2, 3))
    shelf = high < mid - 2
    gain = 1 + torch.clamp((mid - high) / 10, max=0.5)
    boost = torch.where(shelf, torch.log(gain), torch.zeros_like(gain)).view(-1, 1, 1, 1)
    band = torch.zeros_like(mel)
    band[..., HIGH_BAND_START:] = 1.0
    mel = mel + boost * band
    wav = rms_gain(x.wav, models.backbone.vocode(mel, x.wav.shape[-1]).float(), 0.3, 3.0)
    notes = [
        (["latent std > 5.0: rescaled to 4.5"] if f else []) + ([f"high band boosted by {g:.2f}x"] if s else [])
        for f, s, g in zip(fired.tolist(), shelf.tolist(), gain.tolist())
    ]
    return Reconstruction(peak_guard(wav), latent=z, notes=notes)


@register("vae_mixed", "0.7 mode + 0.3 sample, conditioned, time-smoothed, 50 Hz high-pass")
def vae_mixed(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"Final Optimized": z = 0.7·mode + 0.3·sample (seeded); if std > 4 rescale to 3.5; if
    |mean| > 2 subtract 0.3·mean; 3-tap smoothing along *time* (replicate padding); RMS gain in
    [0.2, 5]; zero-phase first-order 50 Hz high-pass."""
    sample = x.mean + x.std * seeded_normal(x.keys, tuple(x.mean.shape[1:]), settings.seed, x.mean)
    z, fired = rescale_std(0.7 * x.mean + 0.3 * sample, threshold=4.0, target=3.5)
    offset = z.flatten(1).mean(dim=1).view(-1, 1, 1, 1)
    z = torch.where(offset.abs() > 2, z - 0.3 * offset, z)
    if settings.mixed_smoothing:
        # Latent layout [B, C, time, freq]: smooth along dim 2 only.
        padded = torch.nn.functional.pad(z, (0, 0, 1, 1), mode="replicate")
        z = (padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]) / 3
    wav = rms_gain(x.wav, decode_and_vocode(models, z, x.wav.shape[-1]), 0.2, 5.0)
    wav = highpass_zero_phase(wav, 50.0, models.backbone.spec.sample_rate)
    return Reconstruction(peak_guard(wav), latent=z, notes=notes_for(fired, "latent std > 4.0: rescaled to 3.5"))


# ---------------------------------------------------------------------- spectrogram-only baselines
@register("vocoder_only", "input log-mel -> vocoder (the vocoder's ceiling)", uses_latent=False)
def vocoder_only(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """The input's own log-mel straight into HiFi-GAN: no VAE in the path."""
    return Reconstruction(models.backbone.vocode(x.logmel, x.wav.shape[-1]).float())


@register("griffinlim", "input log-mel -> pseudo-inverse mel -> Griffin-Lim (64 iterations)", uses_latent=False)
def griffinlim(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """Explicit baseline (never a fallback): exp(log-mel) -> linear magnitude by the mel basis'
    pseudo-inverse (power 1: the mel is a magnitude mel) -> Griffin-Lim, fixed seed."""
    with fp32_island(x.logmel.device):  # torchaudio's griffinlim refuses half precision
        return Reconstruction(peak_guard(_griffinlim(x, models.frontend, settings)))


def _griffinlim(x: VariantInput, frontend: MelFrontEnd, settings: VariantSettings) -> Tensor:
    spec: AudioSpec = frontend.spec
    basis = frontend.mel_basis.to(x.logmel.device, torch.float32)
    magnitude = torch.linalg.pinv(basis) @ x.logmel.float().squeeze(1).exp().transpose(1, 2)
    magnitude = magnitude.clamp_min(0)
    # The front-end drops the STFT's last frame; repeat one so istft spans the full length.
    magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
    window = torch.hann_window(spec.win_length, periodic=True, device=magnitude.device)
    outputs = []
    for segment, key in zip(magnitude, x.keys):
        # Seeded per segment, so the random initial phase does not depend on batching or rank.
        with torch.random.fork_rng(devices=[magnitude.device] if magnitude.device.type == "cuda" else []):
            torch.manual_seed(segment_seed(settings.seed, key))
            outputs.append(AF.griffinlim(
                segment, window, spec.n_fft, spec.hop_length, spec.win_length, power=1.0,
                n_iter=settings.griffinlim_iters, momentum=0.99, length=x.wav.shape[-1], rand_init=True,
            ))
    return torch.stack(outputs).float()


# ---------------------------------------------------------------------- codebook variants
# Registry entries are module-level functions, never lambdas: ddp_spawn pickles the variants.
def codebook_bitrate_bps(settings: VariantSettings) -> float:
    return settings.codebook_bits * LATENT_VECTORS_PER_SECOND


def rvq_bitrate_bps(settings: VariantSettings) -> float:
    return settings.rvq_stages * settings.codebook_bits * LATENT_VECTORS_PER_SECOND


def ddcm_bitrate_bps(settings: VariantSettings) -> float:
    return settings.ddcm_bitrate_bps


def pack_codebook(codes: list[Tensor], segments: list[int], num_samples: int, level: float, settings: VariantSettings, models: Models,
                  source: dict | None = None) -> bytes:
    """One recon container per file (recon.codec): what ``recon decode`` reads."""
    from .codec import codebook_container
    from .container import dumps

    quantizer = models.require_quantizer("codebook_hard")
    container = codebook_container(codes, segments, num_samples, quantizer, models.backbone, level, overlap=settings.overlap, source=source)
    return dumps(container)


@register(
    "codebook_hard",
    "nearest trained code per latent vector -> decode -> vocoder",
    requires=("codebook",),
    bitrate_bps=codebook_bitrate_bps,
    pack_codes=pack_codebook,
    codes_suffix=".recn",
)
def codebook_hard(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"DDCM Final" as a codec: mode -> nearest code of the trained 1024x8 codebook -> decode.
    10 bits per 8-dim vector at 400 vectors/s = 4.0 kbps; the indices are written as a recon file."""
    quantizer = models.require_quantizer("codebook_hard")
    indices = quantizer.quantize_indices(x.mean)
    z_q = quantizer.decode_indices(indices).to(x.mean.dtype)
    return Reconstruction(decode_and_vocode(models, z_q, x.wav.shape[-1]), latent=z_q, codes=indices)


@register(
    "codebook_rvq",
    "residual VQ: the first N stages of the trained ladder, each on the residual of those before",
    requires=("codebook",),
    bitrate_bps=rvq_bitrate_bps,
    pack_codes=pack_codebook,
    codes_suffix=".recn",
)
def codebook_rvq(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """N stages of 1024 x 8 codes, N x 4.0 kbps; one stage is codebook_hard."""
    quantizer = models.require_quantizer("codebook_rvq")
    indices = quantizer.residual_indices(x.mean, settings.rvq_stages)
    z_q = quantizer.decode_residual(indices).to(x.mean.dtype)
    return Reconstruction(decode_and_vocode(models, z_q, x.wav.shape[-1]), latent=z_q, codes=indices)


@register("codebook_soft", "softmax(-d/T)-weighted codes at the trained temperature (not a bitstream)", requires=("codebook",))
def codebook_soft(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"DDCM Improved": temperature-soft codes. The original used T = 0.1 on raw distances, which was
    one-hot in effect; this uses the temperature the codebook was trained to. A soft code is a
    weighted mix of codes, not an index: there is no bitrate."""
    quantizer = models.require_quantizer("codebook_soft")
    temperature = settings.soft_temperature or quantizer.temperature_at(int(quantizer.step))
    # Quantizer math is float32 under any precision (autocast would run cdist and the mix in half).
    with fp32_island(x.mean.device):
        codes = quantizer.codebook.float()
        flat = x.mean.float().permute(0, 2, 3, 1).reshape(-1, codes.shape[1])
        distances = torch.cdist(flat, codes).pow(2)
        z_q = (-distances / temperature).softmax(-1) @ codes
    z_q = z_q.reshape(x.mean.shape[0], *x.mean.shape[2:], -1).permute(0, 3, 1, 2).to(x.mean.dtype)
    return Reconstruction(decode_and_vocode(models, z_q, x.wav.shape[-1]), latent=z_q)


# ---------------------------------------------------------------------- a conventional codec
# libsndfile 1.2 maps its compression level l in [0, 1] linearly onto Opus' target rate, from
# 256 kb/s at l = 0 to 6 kb/s at l = 1 (measured on examples/audio: 0.5 -> 134 kb/s, 0.8 -> 58,
# 0.96 -> 17, 0.98 -> 12, 1.0 -> 7.3 with the headers, which are 903 bytes per stream).
OPUS_MIN_BPS = 6000.0
OPUS_MAX_BPS = 256000.0


def opus_level(kbps: float) -> float:
    """The libsndfile compression level whose Opus target is ``kbps``: ``(256 - kbps) / 250``."""
    bps = float(kbps) * 1000.0
    if not OPUS_MIN_BPS <= bps <= OPUS_MAX_BPS:
        raise ValueError(f"Opus rate {kbps:g} kb/s is outside what libsndfile's encoder reaches ({OPUS_MIN_BPS / 1000:g} to {OPUS_MAX_BPS / 1000:g})")
    return (OPUS_MAX_BPS - bps) / (OPUS_MAX_BPS - OPUS_MIN_BPS)


def opus_roundtrip(wav, kbps: float, sample_rate: int = 16000) -> tuple["np.ndarray", bytes]:
    """Encode a mono float waveform as one Ogg Opus stream (libsndfile, target ``kbps``) and decode
    it back: ``(decoded float32 of the input's length, the stream's bytes, headers and pages included)``."""
    import io

    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wav, dtype=np.float32), sample_rate, format="OGG", subtype="OPUS", compression_level=opus_level(kbps))
    stream = buffer.getvalue()
    decoded, rate = sf.read(io.BytesIO(stream), dtype="float32")
    if rate != sample_rate or decoded.shape[0] != len(wav):
        raise RuntimeError(f"Opus round trip gave {decoded.shape[0]} samples at {rate} Hz for {len(wav)} at {sample_rate} Hz")
    return decoded, stream


def opus_bitrate_bps(settings: VariantSettings) -> float:
    return settings.opus_kbps * 1000.0


def pack_opus(codes: list[Tensor], segments: list[int], num_samples: int, level: float, settings: VariantSettings, models: Models,
              source: dict | None = None) -> bytes:
    """The file's segments' Ogg Opus streams, chained in order (RFC 3533 allows a chain): the bytes
    the decoded audio came from, so its measured rate counts every segment's headers."""
    return b"".join(_unpad_bytes(c) for c in codes)


def _pad_bytes(streams: list[bytes]) -> Tensor:
    """Byte strings -> one uint8 row each: 4 bytes of little-endian length, the bytes, zero padding."""
    width = 4 + max(len(b) for b in streams)
    rows = torch.zeros(len(streams), width, dtype=torch.uint8)
    for row, stream in zip(rows, streams):
        data = len(stream).to_bytes(4, "little") + stream
        row[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return rows


def _unpad_bytes(row: Tensor) -> bytes:
    data = row.cpu().numpy().tobytes()
    return data[4 : 4 + int.from_bytes(data[:4], "little")]


@register(
    "opus",
    "conventional-codec baseline: Ogg Opus (libsndfile) at --opus-kbps, each 10.24 s segment its own stream; not recon's container",
    bitrate_bps=opus_bitrate_bps,
    pack_codes=pack_opus,
    codes_suffix=".opus",
    uses_latent=False,
)
def opus(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """What a user would otherwise pick: the input coded by Opus at a target rate and decoded back,
    on the CPU. Each segment is one Ogg stream (the variants see segments, not files), so every
    10.24 s pays the 903-byte headers (0.7 kb/s); the file written is their chain and its measured
    rate counts them. The nominal rate is the encoder's target; Opus' VBR lands near it."""
    decoded, streams = [], []
    for segment in x.wav.float().cpu().numpy():
        wav, stream = opus_roundtrip(segment, settings.opus_kbps, models.backbone.spec.sample_rate)
        decoded.append(torch.from_numpy(wav))
        streams.append(stream)
    return Reconstruction(torch.stack(decoded).to(x.wav.device), codes=_pad_bytes(streams))


# ---------------------------------------------------------------------- diffusion variants
@register("codebook_sdedit", "hard codes, then SDEdit refinement by the AudioLDM2 UNet (strength s); not DDCM", requires=("codebook", "diffusion"))
def codebook_sdedit(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"DDCM Input Based" of the original experiments, named for what it is (it codes nothing with
    diffusion noise; the old name ``ddcm_input`` is an alias): quantize the input latent with the
    trained codebook, noise it to strength s and DDIM-denoise it with the UNet (the original only
    passed a starting noise to text-to-audio generation). s = 0 is the codebook-only control.
    Deterministic per segment for a seed. Not a bitstream: the refinement adds no bits, but the
    output is no longer a function of the 4.0 kbps codes alone unless the seed is shared."""
    from .diffusion import sdedit_refine

    diffusion = models.require_diffusion("codebook_sdedit")
    scale = diffusion.scaling_factor
    z_q = hard_codes(models, x.mean, "codebook_sdedit")
    # One UNet batch for every segment of the chunk; each segment's noise has its own seed.
    seeds = [segment_seed(settings.seed, key) for key in x.keys]
    if settings.refine_strength == 0:
        refined = z_q  # the codebook alone, exactly: no round trip through the UNet's latent scale
    else:
        refined = sdedit_refine(diffusion, z_q * scale, settings.refine_strength, settings.diffusion_steps,
                                settings.guidance_scale, settings.refine_prompt, seeds) / scale
    return Reconstruction(decode_and_vocode(models, refined, x.wav.shape[-1]), latent=refined)


def logmel_error(backbone, target_logmel: Tensor, scale: float):
    """DDCM re-ranking on audio: mean squared difference between the log-mel the VAE decodes from a
    candidate's clean estimate (a scaled latent) and the item's input log-mel (one VAE decode per
    re-ranked candidate)."""

    def error(x0: Tensor, items: Tensor) -> Tensor:
        mel = backbone.decode((x0 / scale).to(next(backbone.parameters()).dtype)).float()
        target = target_logmel[items.to(target_logmel.device)].float()
        frames = min(mel.shape[2], target.shape[2])
        return (mel[:, :, :frames] - target[:, :, :frames]).pow(2).flatten(1).mean(dim=1)

    return error


def pack_ddcm(codes: list[Tensor], segments: list[int], num_samples: int, level: float, settings: VariantSettings, models: Models,
              source: dict | None = None) -> bytes:
    """One recon container per file (recon.codec, codec ddcm): what ``recon decode`` reads."""
    from .codec import ddcm_container
    from .container import dumps

    diffusion = models.require_diffusion("ddcm_noise")
    return dumps(ddcm_container(codes, segments, num_samples, settings, diffusion, models.backbone, level, overlap=settings.overlap,
                                source=source))


@register(
    "ddcm_noise",
    "true DDCM: reverse diffusion whose noise is chosen from seeded per-step codebooks toward the input",
    requires=("diffusion",),
    bitrate_bps=ddcm_bitrate_bps,
    pack_codes=pack_ddcm,
    codes_suffix=".recn",
)
def ddcm_noise(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"DDCM Complete", as Ohayon et al. (ICML 2025) define it: a DDIM eta = 1 sampler whose noise at
    each step is the entry of a seeded codebook of K Gaussian vectors that best points from the
    current clean estimate toward the input's (scaled) latent. The indices are the bitstream:
    (steps - 1)·log2 K bits per segment, written as a recon file (recon.codec; decompress replays them).
    The ``ddcm_*`` settings are the sampler's options (recon.ddcm_options: coded range, eta schedule,
    score modes, noise mixing, late K, re-ranking by the decoded log-mel, Turbo-DDCM); the file records them."""
    from .ddcm import compress

    diffusion = models.require_diffusion("ddcm_noise")
    scale = diffusion.scaling_factor
    denoiser = diffusion.denoiser(settings.refine_prompt, settings.guidance_scale)
    options = settings.ddcm_options
    # One UNet batch for every segment of the chunk: items are coded independently (per-item choices
    # against the shared per-step codebooks). fp32 whatever the run's precision: the bitstream
    # header promises a float32 decoder.
    with fp32_island(x.mean.device):
        rerank = logmel_error(models.backbone, x.logmel, scale) if options.rerank > 1 else None
        codes, reconstruction = compress(denoiser, x.mean.float() * scale, settings.ddcm_steps, settings.ddcm_k, settings.seed,
                                         options, rerank)
    latent = reconstruction.to(x.mean.dtype) / scale
    return Reconstruction(decode_and_vocode(models, latent, x.wav.shape[-1]), latent=latent, codes=codes)


@register(
    "text2audio",
    "AudioLDM2 text-to-audio from --prompt (DDIM, fixed seed): not a reconstruction",
    requires=("diffusion",),
    is_reconstruction=False,
    uses_latent=False,
)
def text2audio(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    """"Full Diffusion": generation from the prompt alone, kept as the reference the original had.
    It ignores the input; its metrics against the input are shown but flagged."""
    from .diffusion import text_to_audio_latent

    diffusion = models.require_diffusion("text2audio")
    seeds = [segment_seed(settings.seed, key) for key in x.keys]
    latents = text_to_audio_latent(diffusion, settings.prompt, settings.diffusion_steps, settings.guidance_scale,
                                   seeds, tuple(x.mean.shape)) / diffusion.scaling_factor
    return Reconstruction(decode_and_vocode(models, latents.to(x.mean.dtype), x.wav.shape[-1]))


def ddcm_point_label(point: dict, varied: set[str]) -> str:
    """``T<steps>-K<k>``, then ``-<tag><value>`` for each DDCM option that the sweep varies
    (tags: recon.ddcm_options.FLAGS, e.g. ``ddcm_noise@T50-K1024-P2-CB4``)."""
    from .ddcm_options import FLAGS, format_value

    tags = [f"{FLAGS[name][4]}{format_value(point[f'ddcm_{name}'], name)}" for name in DDCM_OPTION_NAMES if f"ddcm_{name}" in varied]
    return "-".join([f"T{point['ddcm_steps']}", f"K{point['ddcm_k']}", *tags])


# Variants with a swept parameter: the settings each point fixes, and how a point is named
# (a format string over the point, or a function of the point and the settings that vary).
SWEEPS: dict[str, tuple[tuple[str, ...], str | Callable[[dict, set[str]], str]]] = {
    "codebook_rvq": (("rvq_stages",), "{rvq_stages}"),
    "codebook_sdedit": (("refine_strength",), "{refine_strength:g}"),
    "ddcm_noise": (("ddcm_steps", "ddcm_k", *(f"ddcm_{name}" for name in DDCM_OPTION_NAMES)), ddcm_point_label),
    "opus": (("opus_kbps",), "{opus_kbps:g}k"),
}
ALWAYS_NAMED = {"codebook_rvq"}  # its point is part of what it is, even when there is one


def sweep(variants: list[Variant], values: dict[str, list]) -> list[Variant]:
    """One variant per point of each swept variant's parameters (``values``: setting -> list), named
    ``base@point`` when a parameter takes several values (``codebook_sdedit@0.2``); others as they are."""
    expanded = []
    for variant in variants:
        if variant.name not in SWEEPS:
            expanded.append(variant)
            continue
        fields_, label = SWEEPS[variant.name]
        lists = [list(values.get(f) or [getattr(VariantSettings(), f)]) for f in fields_]
        varied = {f for f, v in zip(fields_, lists) if len(v) > 1}
        named = variant.name in ALWAYS_NAMED or bool(varied)
        for point in itertools.product(*lists):
            overrides = tuple(zip(fields_, point))
            text = label(dict(overrides), varied) if callable(label) else label.format(**dict(overrides))
            name = f"{variant.name}@{text}" if named else variant.name
            expanded.append(replace(variant, name=name, overrides=overrides))
    names = [v.name for v in expanded]
    if len(set(names)) != len(names):
        raise ValueError(f"a sweep lists a value twice: {sorted({n for n in names if names.count(n) > 1})}")
    return expanded


# Old names that still resolve, each to the variant that replaced it (a warning says so, once).
ALIASES = {"ddcm_input": "codebook_sdedit"}
_warned_aliases: set[str] = set()


def canonical_name(name: str) -> str:
    """The registered name of ``name``: itself, or what an old name now stands for (warning once
    per process that the outputs carry the new name)."""
    if name in ALIASES:
        new = ALIASES[name]
        if name not in _warned_aliases:
            _warned_aliases.add(name)
            log.warning("variant '%s' is now called '%s' (SDEdit refinement of the hard codes, not DDCM); its outputs are named '%s'", name, new, new)
        return new
    return name


def resolve(names: str | list[str] | None, available: dict[str, bool] | None = None) -> list[Variant]:
    """Variant names (comma-separated or a list; None/"all" = all) -> registered variants, checked.

    ``available`` says which requirements can be met (e.g. {"codebook": False}); "all" then skips
    variants that cannot run and says so, while an explicitly named one that cannot run is an error.
    "all" includes ``codebook_rvq`` only for a codebook of several stages (``{"rvq": True}``).
    """
    available = available or {}
    if names in (None, "all", ["all"]):
        chosen = [v for v in VARIANTS.values() if v.name != "codebook_rvq" or available.get("rvq", False)]
        skipped = [v.name for v in chosen if not all(available.get(r, True) for r in v.requires)]
        if skipped:
            log.warning("skipping variants that need what was not given: %s", ", ".join(skipped))
        return [v for v in chosen if v.name not in skipped]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(canonical_name(n) for n in names))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; registered: {', '.join(VARIANTS)}")
    for name in names:
        missing = [r for r in VARIANTS[name].requires if not available.get(r, True)]
        if missing:
            raise ValueError(f"variant '{name}' needs {', '.join(missing)} (codebook: pass --ckpt; diffusion: pass --diffusion)")
    return [VARIANTS[n] for n in names]
