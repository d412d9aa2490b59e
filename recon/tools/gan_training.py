"""The small vocoder's adversarial round (``train-small --stages gan``), resumable across sessions.

Each step trains the discriminator (:mod:`recon.tools.discriminators`) once on a real and a
generated batch, then the generator (the vocoder) once on::

    L_G = L_adv + 2 L_fm + 45 L_mel + (45 / 4) L_stft

``L_adv``, ``L_fm`` (LSGAN and feature matching) and their weights 1 and 2 and the log-mel L1
weight 45 are HiFi-GAN's; its mel weight makes the reconstruction term dominate at the start, so
the continued vocoder does not drift while the discriminator learns. ``L_stft`` is the
multi-resolution STFT loss the vocoder was trained with, kept at the same ratio to the mel L1 as
in that stage (1 : 4). Two AdamW optimisers at HiFi-GAN's 2e-4 and betas (0.8, 0.99), a constant
learning rate (nothing in the schedule depends on the total steps, so a run can be extended), and
both gradients clipped at norm 10, a guard for an unattended run that HiFi-GAN does not have.

The whole training state (both models, both optimisers, the step, every random generator, the
recent losses) is written atomically to ``OUT/gan_state.pt`` every ``checkpoint_every`` steps, at
the end, and when SIGTERM or SIGINT arrives (the current step finishes first). ``resume=True``
continues from that file exactly: k steps, an interruption and m resumed steps give the same
weights as k + m steps in one go.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..audio import MelFrontEnd
from .backbone_training import _progress, stft_loss
from .discriminators import VocoderDiscriminator, adversarial_loss, discriminator_loss, feature_matching_loss

log = logging.getLogger(__name__)

STATE_FILE = "gan_state.pt"
TAIL = 100  # losses kept in the state for the end-of-training means
# Recipe fields a resumed run may change: how far it goes and how often it saves.
RESUMABLE_CHANGES = ("gan_steps", "checkpoint_every")


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the round; its state is saved and ``--resume`` continues it."""

    def __init__(self, signum: int, step: int, state_path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; state saved to {state_path}, --resume continues it")
        self.signum, self.step, self.state_path = signum, step, state_path


@dataclass
class GanRound:
    steps: int
    sessions: int
    seconds: float
    mel_l1: float
    discriminator: float
    adversarial: float


@contextmanager
def _stop_requests():
    """A dict whose ``signum`` is set when SIGTERM/SIGINT arrives, instead of dying mid-step."""
    request: dict = {"signum": None}
    if threading.current_thread() is not threading.main_thread():  # signal handlers are main-thread only
        yield request
        return

    def ask_to_stop(signum, _frame):
        request["signum"] = signum

    previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _save_atomically(state: dict, path: Path) -> None:
    """Write then rename: a kill mid-write leaves the previous state whole."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _checked_recipe(recipe) -> dict:
    return {k: v for k, v in asdict(recipe).items() if k not in RESUMABLE_CHANGES}


def train_gan(vocoder, sampler, front_end: MelFrontEnd, recipe, device: torch.device, out: Path, *, resume: bool) -> GanRound:
    """Run (or continue, with ``resume``) the adversarial round up to ``recipe.gan_steps`` steps."""
    state_path = Path(out) / STATE_FILE
    if state_path.exists() and not resume:
        raise FileExistsError(f"{state_path} holds an adversarial round: pass --resume to continue it, or choose another --out")
    if resume and not state_path.exists():
        raise FileNotFoundError(f"--resume: no {STATE_FILE} under {out}")
    vocoder.train().requires_grad_(True).to(device)
    front_end = front_end.to(device)
    discriminator = VocoderDiscriminator().train().to(device)
    betas = (0.8, 0.99)
    opt_g = torch.optim.AdamW(vocoder.parameters(), lr=recipe.gan_lr, betas=betas, weight_decay=0.0)
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=recipe.gan_lr, betas=betas, weight_decay=0.0)
    step, sessions, seconds = 0, 1, 0.0
    tails: dict[str, list[float]] = {"mel_l1": [], "discriminator": [], "adversarial": []}
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=True)  # RNG states must be CPU tensors; load_state_dict moves the rest
        changed = sorted(k for k, v in _checked_recipe(recipe).items() if state["recipe"].get(k) != v)
        if changed:
            raise ValueError(f"--resume: the recipe differs from the saved round's in {', '.join(changed)}")
        if state["clips"] != len(sampler.wavs):
            raise ValueError(f"--resume: the saved round trained on {state['clips']} files, --data has {len(sampler.wavs)}")
        vocoder.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        sampler.generator.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, sessions, seconds, tails = state["step"], state["sessions"] + 1, state["seconds"], state["tails"]
        log.info("resuming the adversarial round at step %d of %d", step, recipe.gan_steps)

    def save() -> None:
        _save_atomically(
            {
                "step": step,
                "sessions": sessions,
                "seconds": seconds + time.perf_counter() - started,
                "generator": vocoder.state_dict(),
                "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "sampler_rng": sampler.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "recipe": _checked_recipe(recipe),
                "clips": len(sampler.wavs),
                "tails": {k: v[-TAIL:] for k, v in tails.items()},
            },
            state_path,
        )

    Path(out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = _progress(recipe.gan_steps, "gan")
    bar.update(step)
    with _stop_requests() as stop:
        while step < recipe.gan_steps:
            wav, mel = sampler.sample(recipe.gan_batch, recipe.gan_frames)
            wav, mel = wav.to(device), mel.to(device)
            pred = vocoder(mel[:, 0])[..., : wav.shape[-1]]

            discriminator.requires_grad_(True)
            d_loss = discriminator_loss(discriminator(wav), discriminator(pred.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(discriminator.parameters(), 10.0)
            opt_d.step()

            discriminator.requires_grad_(False)  # the generator's step leaves the discriminator's gradients alone
            with torch.no_grad():
                real = discriminator(wav)
            fake = discriminator(pred)
            adv, fm = adversarial_loss(fake), feature_matching_loss(real, fake)
            mel_l1 = F.l1_loss(front_end(pred), front_end(wav))
            g_loss = adv + recipe.fm_weight * fm + recipe.gan_mel_weight * mel_l1 + recipe.gan_stft_weight * stft_loss(pred, wav)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            torch.nn.utils.clip_grad_norm_(vocoder.parameters(), 10.0)
            opt_g.step()

            step += 1
            for name, value in (("mel_l1", mel_l1), ("discriminator", d_loss), ("adversarial", adv)):
                tails[name] = (tails[name] + [value.item()])[-TAIL:]
            bar.update(1)
            bar.set_postfix(d=f"{d_loss.item():.3f}", adv=f"{adv.item():.3f}", mel=f"{mel_l1.item():.4f}")
            if stop["signum"] is not None:
                save()
                bar.close()
                raise TrainingInterrupted(stop["signum"], step, state_path)
            if step % recipe.checkpoint_every == 0 or step == recipe.gan_steps:
                save()
    bar.close()
    vocoder.requires_grad_(False)
    mean = {k: sum(v) / len(v) if v else float("nan") for k, v in tails.items()}
    return GanRound(step, sessions, round(seconds + time.perf_counter() - started, 1), mean["mel_l1"], mean["discriminator"], mean["adversarial"])
