"""Train the small stand-in backbone: an AudioLDM2-shaped VAE and HiFi-GAN on minutes of audio.

``python -m recon.backbone train-small --data DIR --out DIR`` trains, from the ``small``
configuration of :mod:`recon.backbone` (the same diffusers/transformers classes as
``cvssp/audioldm2``, reduced widths), and saves both models in the hub layout, so that
``FrozenAudioLDM2.from_source(out)`` loads them like any local snapshot:

1. the VAE on the exact AudioLDM2 log-mel of the data (L1 reconstruction + a small KL term), with
   the latent shape of the real one, ``[8, T/4, 16]``;
2. its ``scaling_factor``: 1 / the standard deviation of its posterior samples over the data,
   the rule AudioLDM2 and Stable Diffusion use, so the diffusion UNet sees unit-variance latents;
3. the vocoder on the same log-mel, with multi-resolution STFT losses and a log-mel L1;
4. (``--stages gan``, :mod:`recon.tools.gan_training`) the vocoder continued adversarially against
   multi-period and multi-resolution STFT discriminators, resumable across sessions.

Stages 1-3 have no discriminator: the spectral losses alone reach a rough but intelligible output
(STOI 0.72 on held-out speech); stage 4 is what is meant to remove the roughness.
The recipe is device-agnostic (``--device cuda`` runs it unchanged).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..audio import LOG_MEL_FLOOR, AudioSpec, MelFrontEnd, load_audio, normalise
from ..backbone import build_random, load_components
from ..data import find_audio_files
from ..metrics import multi_resolution_stft_distance

log = logging.getLogger(__name__)


@dataclass
class SmallRecipe:
    """Steps, crops and rates of the stages: 1500 VAE steps take 15 min and 2400 vocoder steps
    27 min on 2 idle CPU cores; an adversarial step took 0.55 s on 2 shared cores (15000: ~2.3 h)."""

    vae_steps: int = 1500
    vae_batch: int = 8
    vae_frames: int = 128  # 1.28 s crops; the VAE is convolutional, so it runs on any multiple of 4
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4  # per latent element against the per-bin L1: keeps the posterior tight
    vocoder_steps: int = 2400
    vocoder_batch: int = 8
    vocoder_frames: int = 40  # 0.4 s crops
    vocoder_lr: float = 2e-3
    mel_weight: float = 4.0  # against the STFT losses, which are of order 1
    # The adversarial round (weights and rates justified in recon.tools.gan_training).
    gan_steps: int = 15000
    gan_batch: int = 8
    gan_frames: int = 40
    gan_lr: float = 2e-4
    fm_weight: float = 2.0
    gan_mel_weight: float = 45.0
    gan_stft_weight: float = 45.0 / 4
    checkpoint_every: int = 50  # steps between saved states: what a kill -9 can lose at most
    seed: int = 0


STAGES = ("vae", "vocoder", "gan")  # in the order they run
MIN_FRAMES = 64  # shortest clip that trains, in log-mel frames
# FFT sizes and hops of the multi-resolution STFT loss (Hann window = FFT size): 64 ms down to 8 ms.
STFT_FFT_SIZES = (1024, 512, 256, 128)
STFT_HOP_SIZES = (256, 128, 64, 32)
# Magnitude floor of that loss, squared: 1e-7, below any bin a 16-bit signal reaches.
STFT_EPS = 1e-14


def load_clips(root: str | Path, spec: AudioSpec) -> list[Tensor]:
    """Every file under ``root``, mono 16 kHz, normalised as the front-end does (peak 0.5).

    Files shorter than 64 frames (0.64 s) are left out, each named in the log: a crop of either
    stage needs that much audio.
    """
    files = find_audio_files(root)
    if not files:
        raise FileNotFoundError(f"no audio files under {root}")
    clips = []
    for path in files:
        clip = normalise(load_audio(path, spec))
        if clip.numel() < spec.hop_length * MIN_FRAMES:
            log.warning("%s: %.2f s is shorter than the %.2f s a training crop needs; left out", path, clip.numel() / spec.sample_rate,
                        spec.hop_length * MIN_FRAMES / spec.sample_rate)
            continue
        clips.append(clip)
    if not clips:
        raise ValueError(f"every audio file under {root} is shorter than {spec.hop_length * MIN_FRAMES / spec.sample_rate:.2f} s")
    return clips


class CropSampler:
    """Random aligned (waveform, log-mel) crops, files drawn in proportion to their length."""

    def __init__(self, clips: list[Tensor], front_end: MelFrontEnd, seed: int):
        hop = front_end.spec.hop_length
        self.hop = hop
        self.wavs = clips
        with torch.no_grad():
            self.mels = [front_end(clip[None])[0, 0] for clip in clips]  # [frames, 64], frame i centred on sample i*hop
        frames = torch.tensor([m.shape[0] for m in self.mels], dtype=torch.float64)
        self.weights = frames / frames.sum()
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int, frames: int) -> tuple[Tensor, Tensor]:
        """``[batch, frames * hop]`` waveforms and their ``[batch, 1, frames, 64]`` log-mels."""
        wavs, mels = [], []
        picks = torch.multinomial(self.weights, batch, replacement=True, generator=self.generator)
        for i in picks.tolist():
            mel = self.mels[i]
            if mel.shape[0] < frames:  # short clip: pad with the log floor / silence, as inference pads tails
                pad = frames - mel.shape[0]
                mel = torch.cat([mel, mel.new_full((pad, mel.shape[1]), math.log(LOG_MEL_FLOOR))])
            start = int(torch.randint(0, mel.shape[0] - frames + 1, (1,), generator=self.generator))
            wav = F.pad(self.wavs[i], (0, frames * self.hop))[start * self.hop : (start + frames) * self.hop]
            wavs.append(wav)
            mels.append(mel[start : start + frames])
        return torch.stack(wavs), torch.stack(mels)[:, None]


def stft_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Spectral convergence + log-magnitude L1 at four resolutions: the ``mr_stft`` metric as a loss."""
    return multi_resolution_stft_distance(target, pred, fft_sizes=STFT_FFT_SIZES, hop_sizes=STFT_HOP_SIZES, eps=STFT_EPS).mean()


def _step(loss: Tensor, optimiser: torch.optim.Optimizer, schedule, parameters, max_norm: float) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    optimiser.step()
    schedule.step()


def _progress(steps: int, desc: str):
    return tqdm(range(steps), desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)


def train_vae(vae, sampler: CropSampler, recipe: SmallRecipe, device: torch.device) -> list[float]:
    vae.train().requires_grad_(True).to(device)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.vae_lr, total_steps=recipe.vae_steps, pct_start=0.05)
    losses = []
    bar = _progress(recipe.vae_steps, "vae")
    for _ in bar:
        _, mel = sampler.sample(recipe.vae_batch, recipe.vae_frames)
        mel = mel.to(device)
        posterior = vae.encode(mel).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        l1 = F.l1_loss(recon, mel)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        _step(l1 + recipe.kl_weight * kl, optimiser, schedule, vae.parameters(), max_norm=1.0)
        losses.append(l1.item())
        bar.set_postfix(l1=f"{l1.item():.4f}", kl=f"{kl.item():.3f}")
    return losses


@torch.no_grad()
def latent_std(vae, sampler: CropSampler, device: torch.device, batches: int = 16) -> float:
    """Standard deviation of posterior samples over random crops (the scaling factor's inverse)."""
    vae.eval()
    samples = [vae.encode(sampler.sample(16, 128)[1].to(device)).latent_dist.sample() for _ in range(batches)]
    return float(torch.cat(samples).std())


def train_vocoder(vocoder, sampler: CropSampler, front_end: MelFrontEnd, recipe: SmallRecipe, device: torch.device) -> list[float]:
    vocoder.train().requires_grad_(True).to(device)
    front_end = front_end.to(device)
    optimiser = torch.optim.AdamW(vocoder.parameters(), lr=recipe.vocoder_lr, betas=(0.8, 0.99), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.vocoder_lr, total_steps=recipe.vocoder_steps, pct_start=0.05)
    losses = []
    bar = _progress(recipe.vocoder_steps, "vocoder")
    for _ in bar:
        wav, mel = sampler.sample(recipe.vocoder_batch, recipe.vocoder_frames)
        wav, mel = wav.to(device), mel.to(device)
        pred = vocoder(mel[:, 0])[..., : wav.shape[-1]]
        spectral = stft_loss(pred, wav)
        mel_l1 = F.l1_loss(front_end(pred), front_end(wav))
        _step(spectral + recipe.mel_weight * mel_l1, optimiser, schedule, vocoder.parameters(), max_norm=10.0)
        losses.append(mel_l1.item())
        bar.set_postfix(stft=f"{spectral.item():.4f}", mel=f"{mel_l1.item():.4f}")
    return losses


def train_small(
    data: str | Path,
    out: str | Path,
    recipe: SmallRecipe = SmallRecipe(),
    device: str = "auto",
    *,
    init: str | Path | None = None,
    stages: tuple[str, ...] = ("vae", "vocoder"),
    resume: bool = False,
) -> Path:
    """Train VAE and vocoder on the audio under ``data``; save them under ``out`` in the hub layout.

    ``init`` starts from a saved backbone instead of random weights, and ``stages`` chooses what
    trains (``("vocoder",)`` continues only the vocoder and keeps the VAE and its scaling;
    ``("gan",)`` continues it adversarially, ``resume`` picking up ``out``'s saved state). The
    record of every earlier run of ``init`` is kept in ``recon_backbone.json``'s ``history``.
    """
    if set(stages) - set(STAGES) or not stages:
        raise ValueError(f"stages are {', '.join(STAGES)}, not {', '.join(stages)!r}")
    if resume and tuple(stages) != ("gan",):
        raise ValueError("resume continues the gan stage only: pass stages ('gan',)")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    spec = AudioSpec()
    torch.manual_seed(recipe.seed)
    clips = load_clips(data, spec)
    front_end = MelFrontEnd(spec)
    sampler = CropSampler(clips, front_end, recipe.seed)
    history: list[dict] = []
    if init is None:
        vae, vocoder = build_random("small", seed=recipe.seed)
    else:
        vae, vocoder = load_components(str(init), local_files_only=True)
        previous = json.loads((Path(init) / "recon_backbone.json").read_text())
        history = previous.pop("history", []) + [previous]

    record: dict = {"trained_size": "small", "stages": list(stages)}
    if "vae" in stages:
        started = time.perf_counter()
        losses = train_vae(vae, sampler, recipe, dev)
        record["minutes_vae"] = round((time.perf_counter() - started) / 60, 1)
        record["final_vae_l1"] = _tail_mean(losses)
        vae.register_to_config(scaling_factor=1.0 / latent_std(vae, sampler, dev))
    if "vocoder" in stages:
        started = time.perf_counter()
        losses = train_vocoder(vocoder, sampler, front_end, recipe, dev)
        record["minutes_vocoder"] = round((time.perf_counter() - started) / 60, 1)
        record["final_vocoder_mel_l1"] = _tail_mean(losses)
    if "gan" in stages:
        from .gan_training import train_gan  # it imports this module

        gan = train_gan(vocoder, sampler, front_end, recipe, dev, Path(out), resume=resume)
        record.update(minutes_gan=round(gan.seconds / 60, 1), gan_steps_done=gan.steps, gan_sessions=gan.sessions,
                      final_gan_mel_l1=gan.mel_l1, final_gan_discriminator=gan.discriminator, final_gan_adversarial=gan.adversarial)

    out = Path(out)
    vae.eval().cpu().save_pretrained(out / "vae")
    vocoder.eval().cpu().save_pretrained(out / "vocoder")
    record.update(
        data={"files": len(clips), "seconds": round(sum(c.numel() for c in clips) / spec.sample_rate, 1)},
        recipe=asdict(recipe),
        scaling_factor=float(vae.config.scaling_factor),
        device=str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        torch=torch.__version__,
        history=history,
    )
    (out / "recon_backbone.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def _tail_mean(losses: list[float], tail: int = 100) -> float:
    """The last steps' mean: the end-of-training loss, less noisy than one step."""
    return sum(losses[-tail:]) / len(losses[-tail:])
