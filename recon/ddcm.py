"""Denoising Diffusion Codebook Models (DDCM): compression by choosing the noise of a diffusion sampler.

Ohayon et al., "Compressed Image Generation with Denoising Diffusion Codebook Models" (ICML 2025).
The sampler is DDIM with ``eta = 1`` (DDPM-like). At every step but the last, the noise it adds is
not fresh Gaussian noise but one of ``K`` fixed vectors of a per-step codebook ``C_t`` (i.i.d.
``N(0, I)``, generated from the shared seed). To compress a target ``x0`` the encoder picks, per
sample,

    k* = argmax_k < C_t[k], x0 - x0_hat(x_t, t) >

where ``x0_hat`` is the model's current clean estimate. The chosen indices are the bitstream,
``(steps - 1) * log2 K`` bits per item; decoding replays the same sampler with the stored indices.
The initial ``x_T`` is a fixed seeded Gaussian (shared, costs no bits).

Everything here is model-agnostic: a :class:`Denoiser` is an eps-predictor plus a
:class:`DiffusionSchedule`. :class:`AnalyticGaussianDenoiser` is the exact denoiser of a unit
Gaussian source and serves as a reference and for tests; ``recon.diffusion.AudioLDM2Denoiser`` wraps
the AudioLDM2 UNet.

Portability: the codebooks and ``x_T`` come from a counter-based generator written in integer
tensor ops (:func:`portable_normal`): entry ``n`` of a stream is a fixed function of
``(seed, stream, n)``, the same on any device, batch or chunking, and any row can be computed
without the rows before it. ``torch.randn`` on a CUDA generator is not: its stream depends on the
GPU model. The indices are stored in recon's container (``recon.codec``, codec ``ddcm``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

__all__ = [
    "AnalyticGaussianDenoiser",
    "Denoiser",
    "DiffusionSchedule",
    "StepCodebook",
    "bits_per_item",
    "compress",
    "ddim_denoise",
    "ddcm_sample",
    "ddim_step",
    "decompress",
    "initial_noise",
    "portable_normal",
    "predict_x0",
]

ETA = 1.0  # DDCM's sampler: DDIM with eta = 1 (the DDPM posterior variance)
# Codebook rows are generated this many at a time (memory only: rows do not depend on chunking).
CODEBOOK_CHUNK_ROWS = 256
NOISE_GENERATOR = "recon-counter-v1"  # the name of portable_normal's definition, stored in files


# --------------------------------------------------------------------------------------------
# Schedule and the DDIM step
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionSchedule:
    """The cumulative noise schedule ``alpha_bar_t`` and how inference timesteps are spaced.

    ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``. ``alphas_cumprod`` is kept as the
    float32 tensor diffusers computes, so steps agree with ``DDIMScheduler`` bit for bit.
    """

    alphas_cumprod: Tensor  # [num_train_timesteps], float32
    final_alpha_cumprod: Tensor  # 0-dim: alpha_bar used after the last step
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    @classmethod
    def from_scheduler(cls, scheduler, timestep_spacing: str | None = None) -> "DiffusionSchedule":
        """From a diffusers ``DDIMScheduler`` (its betas, ``set_alpha_to_one``, spacing and offset)."""
        return cls(
            alphas_cumprod=scheduler.alphas_cumprod.detach().cpu().clone(),
            final_alpha_cumprod=torch.as_tensor(scheduler.final_alpha_cumprod).detach().cpu().clone(),
            timestep_spacing=timestep_spacing or scheduler.config.timestep_spacing,
            steps_offset=int(scheduler.config.steps_offset),
        )

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def alpha_bar(self, t: int) -> Tensor:
        """``alpha_bar_t``; ``t < 0`` means "after the last step" (``final_alpha_cumprod``)."""
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def timesteps(self, steps: int) -> list[int]:
        """Inference timesteps, descending, exactly as ``DDIMScheduler.set_timesteps`` spaces them."""
        n = self.num_train_timesteps
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be in [1, {n}], got {steps}")
        if self.timestep_spacing == "leading":
            ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
        elif self.timestep_spacing == "linspace":
            ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
        else:
            raise ValueError(f"unknown timestep_spacing '{self.timestep_spacing}'")
        if ts.max() >= n:
            raise ValueError(
                f"{steps} '{self.timestep_spacing}' steps with steps_offset {self.steps_offset} reach t = {ts.max()} "
                f">= {n}; use timestep_spacing='trailing' for this many steps"
            )
        return [int(t) for t in ts]

    def transitions(self, steps: int) -> list[tuple[int, int]]:
        """``(t, t_prev)`` pairs of the sampler; the last ``t_prev`` is -1 (``final_alpha_cumprod``).

        ``t_prev`` is the next timestep of the list. For 'leading' spacing (AudioLDM2's) this equals
        diffusers' ``t - num_train_timesteps // steps``; for 'trailing' with a non-integer stride it is
        the consistent choice where diffusers' constant stride is not.
        """
        ts = self.timesteps(steps)
        return list(zip(ts, ts[1:] + [-1]))


def predict_x0(schedule: DiffusionSchedule, x_t: Tensor, eps: Tensor, t: int) -> Tensor:
    """Clean estimate from an eps prediction: ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
    a_t = schedule.alpha_bar(t)
    return (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5


def ddim_step(
    schedule: DiffusionSchedule, x_t: Tensor, eps: Tensor, t: int, t_prev: int, eta: float, noise: Tensor | None = None
) -> Tensor:
    """One DDIM step ``x_t -> x_{t_prev}`` (Song et al. 2021, eq. 12), in diffusers' arithmetic order.

        sigma^2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)        (times eta^2)
        x_prev  = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma * noise

    ``eta = 1`` is the DDPM posterior (DDCM's sampler), ``eta = 0`` deterministic DDIM.
    """
    a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    x0_hat = predict_x0(schedule, x_t, eps, t)
    variance = ((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)
    std = eta * variance**0.5
    x_prev = a_prev**0.5 * x0_hat + (1 - a_prev - std**2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs the noise to add")
        x_prev = x_prev + std * noise
    return x_prev


class Denoiser(Protocol):
    """What DDCM needs from a diffusion model: an eps-prediction and its noise schedule.

    ``predict_eps(x_t, t)`` returns the predicted noise for a batch ``x_t`` at integer timestep ``t``;
    the clean estimate is :func:`predict_x0`.
    """

    schedule: DiffusionSchedule

    def predict_eps(self, x_t: Tensor, t: int) -> Tensor: ...


class AnalyticGaussianDenoiser:
    """The exact (MMSE) denoiser of a unit Gaussian source ``x0 ~ N(0, I)``.

    ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` is Gaussian with variance ``a + (1 - a) = 1``, so

        E[x0 | x_t]  = sqrt(a) / (a + 1 - a) * x_t = sqrt(a) x_t
        E[eps | x_t] = sqrt(1 - a) x_t

    and this denoiser's samples are exact draws from ``N(0, I)``.
    """

    def __init__(self, schedule: DiffusionSchedule):
        self.schedule = schedule

    def predict_eps(self, x_t: Tensor, t: int) -> Tensor:
        return (1 - self.schedule.alpha_bar(t)) ** 0.5 * x_t


@torch.no_grad()
def ddim_denoise(denoiser: Denoiser, x_t: Tensor, timesteps: list[int]) -> Tensor:
    """Deterministic DDIM (eta 0) from ``x_t`` at ``timesteps[0]`` down through ``timesteps[-1]`` to the end."""
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        x_t = ddim_step(denoiser.schedule, x_t, denoiser.predict_eps(x_t, t), t, t_prev, eta=0.0)
    return x_t


# --------------------------------------------------------------------------------------------
# Codebooks
# --------------------------------------------------------------------------------------------


_MASK32 = 0xFFFFFFFF


def _stream_key(seed: int, label: str) -> tuple[int, int]:
    """Two 32-bit keys for one named stream of a shared seed (a hash, so streams do not overlap)."""
    digest = hashlib.blake2b(f"recon.ddcm:{seed}:{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in [0, 2**32): by 16-bit halves, so nothing overflows int64."""
    return ((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c & _MASK32


def _fmix32(x: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2**32) that mixes every bit into every bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _uniform(counter: Tensor, key: tuple[int, int]) -> Tensor:
    """A uniform in (0, 1), float64, for each int64 counter: 24 bits of a keyed two-round hash."""
    h = _fmix32(_fmix32((counter & _MASK32) ^ key[0]) ^ (counter >> 32) ^ key[1])
    return ((h >> 8).double() + 0.5) / float(1 << 24)


def portable_normal(seed: int, label: str, first: int, count: int, device: str | torch.device = "cpu") -> Tensor:
    """Entries ``first .. first + count - 1`` of the standard normal stream ``(seed, label)``, float32.

    Box-Muller on pairs: entries ``2m`` and ``2m + 1`` are ``r cos(theta)`` and ``r sin(theta)`` of
    uniforms ``u(2m), u(2m + 1)`` from a keyed integer hash of the counter. Integer ops are exact on
    every device; the float64 transcendentals round to the same float32 but in rare last-bit cases,
    so two devices agree to about 1e-7 relative.
    """
    device = torch.device(device)
    key = _stream_key(seed, label)
    pairs = torch.arange(first // 2, (first + count + 1) // 2, device=device, dtype=torch.int64)
    u1, u2 = _uniform(2 * pairs, key), _uniform(2 * pairs + 1, key)
    radius, theta = torch.sqrt(-2.0 * torch.log(u1)), (2 * math.pi) * u2
    values = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=1).reshape(-1)
    offset = first - 2 * (first // 2)
    return values[offset : offset + count].float()


def initial_noise(seed: int, shape: tuple[int, ...], device: str | torch.device = "cpu") -> Tensor:
    """The shared ``x_T`` for a batch of ``shape = [B, *item]``: one seeded draw, the same for every item.

    Sharing it across the batch makes an item's bitstream independent of the batch it was coded in.
    """
    item = tuple(shape[1:])
    x_T = portable_normal(seed, f"x_T:{item}", 0, math.prod(item), device).reshape(item)
    return repeat(x_T, "... -> b ...", b=shape[0])


@dataclass(frozen=True)
class StepCodebook:
    """The codebook ``C_step``: ``K`` rows of i.i.d. ``N(0, I_dim)``, regenerated on demand.

    Row ``k`` is entries ``k * dim ...`` of the stream ``(seed, "codebook:<step>:<dim>")``
    (:func:`portable_normal`), so a ``K x dim`` codebook never has to be held in memory (4096 x
    32768 float32 would be 512 MiB per step), and a decoder computes only the rows it uses.
    """

    seed: int
    step: int
    K: int
    dim: int
    device: torch.device

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, Tensor]]:
        """``(first_row, chunk [n, dim])`` for rows ``0 .. rows-1`` (all ``K`` by default)."""
        rows = self.K if rows is None else rows
        for start in range(0, rows, CODEBOOK_CHUNK_ROWS):
            n = min(CODEBOOK_CHUNK_ROWS, rows - start)
            yield start, self.row_block(start, n)

    def row_block(self, start: int, n: int) -> Tensor:
        """Rows ``start .. start + n - 1`` as ``[n, dim]``."""
        return portable_normal(self.seed, f"codebook:{self.step}:{self.dim}", start * self.dim, n * self.dim, self.device).reshape(n, self.dim)

    def best_match(self, residual: Tensor) -> tuple[Tensor, Tensor]:
        """Per row ``b`` of ``residual [B, dim]``: ``k* = argmax_k <C[k], residual[b]>`` and ``C[k*]``."""
        batch = residual.shape[0]
        best_score = torch.full((batch,), -math.inf, device=residual.device)
        best_index = torch.zeros(batch, dtype=torch.long, device=residual.device)
        best_rows = torch.zeros(batch, self.dim, device=residual.device)
        for start, chunk in self.chunks():
            score, local = (residual @ chunk.T).max(dim=1)
            better = score > best_score  # strict: ties keep the lowest index, as argmax does
            best_score = torch.where(better, score, best_score)
            best_index = torch.where(better, local + start, best_index)
            best_rows = torch.where(better[:, None], chunk[local], best_rows)
        return best_index, best_rows

    def rows(self, indices: Tensor) -> Tensor:
        """``C[indices]`` for ``indices [B]``: only those rows are computed."""
        return torch.stack([self.row_block(int(k), 1)[0] for k in indices.tolist()]) if len(indices) else torch.empty(0, self.dim, device=self.device)


def bits_per_item(steps: int, K: int) -> int:
    """Bitstream size per item: ``(steps - 1) * log2 K`` (the last step adds no noise)."""
    _check_K(K)
    return (steps - 1) * int(math.log2(K))


def _check_K(K: int) -> None:
    if K < 2 or K & (K - 1):
        raise ValueError(f"K must be a power of two >= 2, got {K}")


# --------------------------------------------------------------------------------------------
# Compress / decompress
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def ddcm_sample(denoiser: Denoiser, shape, steps: int, K: int, seed: int, device, choose) -> Tensor:
    """The DDCM sampler for ``shape = [B, ...]``; ``choose(step, codebook, x0_hat [B, dim]) -> noise [B, dim]``.

    :func:`compress` and :func:`decompress` differ only in ``choose``; a study may pass its own.

    Steps ``0 .. steps-2`` are DDIM eta-1 steps with codebook noise; the last step returns the
    clean estimate ``x0_hat`` (a DDPM sampler adds no noise at its last step).
    """
    _check_K(K)
    device = torch.device(device)
    schedule = denoiser.schedule
    dim = math.prod(shape[1:])
    x = initial_noise(seed, shape, device)
    *noisy, (t_last, _) = schedule.transitions(steps)
    for step, (t, t_prev) in enumerate(noisy):
        eps = denoiser.predict_eps(x, t).float()
        x0_hat = rearrange(predict_x0(schedule, x, eps, t), "b ... -> b (...)")
        noise = choose(step, StepCodebook(seed, step, K, dim, device), x0_hat).reshape(shape)
        x = ddim_step(schedule, x, eps, t, t_prev, ETA, noise)
    return predict_x0(schedule, x, denoiser.predict_eps(x, t_last).float(), t_last)


def compress(denoiser: Denoiser, x0: Tensor, steps: int, K: int, seed: int) -> tuple[Tensor, Tensor]:
    """Code ``x0 [B, ...]`` as ``indices [B, steps-1]`` (long) and return them with the reconstruction.

    At step ``i`` the noise is ``C_i[k*]`` with ``k* = argmax_k <C_i[k], x0 - x0_hat>`` per sample.
    Runs in float32 on ``x0``'s device; :func:`decompress` on the same device class reproduces the
    reconstruction exactly.
    """
    target = rearrange(x0.float(), "b ... -> b (...)")
    chosen: list[Tensor] = []

    def choose(step: int, codebook: StepCodebook, x0_hat: Tensor) -> Tensor:
        index, rows = codebook.best_match(target - x0_hat)
        chosen.append(index)
        return rows

    reconstruction = ddcm_sample(denoiser, tuple(x0.shape), steps, K, seed, x0.device, choose)
    indices = torch.stack(chosen, dim=1) if chosen else torch.zeros(x0.shape[0], 0, dtype=torch.long, device=x0.device)
    return indices, reconstruction


def decompress(
    denoiser: Denoiser, indices: Tensor, steps: int, K: int, seed: int, shape, device: str | torch.device = "cpu"
) -> Tensor:
    """Replay the sampler with stored ``indices [B, steps-1]``; ``shape`` is the full ``[B, ...]`` shape."""
    shape = tuple(int(s) for s in shape)
    if indices.ndim != 2 or indices.shape != (shape[0], steps - 1):
        raise ValueError(f"indices of shape {tuple(indices.shape)} do not fit shape {shape} and {steps} steps")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= K):
        raise ValueError(f"indices must lie in [0, {K})")
    indices = indices.to(device=device, dtype=torch.long)
    return ddcm_sample(denoiser, shape, steps, K, seed, device, lambda step, codebook, _: codebook.rows(indices[:, step]))
