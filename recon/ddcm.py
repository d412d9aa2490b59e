"""Denoising Diffusion Codebook Models (DDCM): compression by choosing the noise of a diffusion sampler.

Ohayon et al., "Compressed Image Generation with Denoising Diffusion Codebook Models" (ICML 2025).
Plain DDCM is DDIM with ``eta = 1`` (DDPM-like). At every step but the last, the noise it adds is
not fresh Gaussian noise but one of ``K`` fixed vectors of a per-step codebook ``C_t`` (i.i.d.
``N(0, I)``, generated from the shared seed). To compress a target ``x0`` the encoder picks, per
sample,

    k* = argmax_k < C_t[k], x0 - x0_hat(x_t, t) >

where ``x0_hat`` is the model's current clean estimate. The chosen indices are the bitstream,
``(steps - 1) * log2 K`` bits per item; decoding replays the same sampler with the stored indices.
The initial ``x_T`` is a fixed seeded Gaussian (shared, costs no bits).

:class:`recon.ddcm_options.DDCMOptions` extends this as DDCM is now run on audio: a coded range of
timesteps, an eta schedule, cosine and blended scores, noise mixing with P atoms and CB-bit levels,
a smaller K late in the trajectory and re-ranking by decoded error; that module defines each one
and the exact bits they cost. The defaults are plain DDCM.

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
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

from .ddcm_options import PLAIN, DDCMOptions, StepPlan, mixing_levels, step_plan

__all__ = [
    "AnalyticGaussianDenoiser",
    "CodedStep",
    "DDCMOptions",
    "Denoiser",
    "DiffusionSchedule",
    "StepCodebook",
    "atoms_noise",
    "bits_per_item",
    "coded_sizes",
    "compress",
    "ddim_denoise",
    "ddcm_sample",
    "ddim_step",
    "decompress",
    "initial_noise",
    "portable_normal",
    "predict_x0",
]

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
        return spaced_timesteps(steps, self.num_train_timesteps, self.timestep_spacing, self.steps_offset)

    def transitions(self, steps: int) -> list[tuple[int, int]]:
        """``(t, t_prev)`` pairs of the sampler; the last ``t_prev`` is -1 (``final_alpha_cumprod``).

        ``t_prev`` is the next timestep of the list. For 'leading' spacing (AudioLDM2's) this equals
        diffusers' ``t - num_train_timesteps // steps``; for 'trailing' with a non-integer stride it is
        the consistent choice where diffusers' constant stride is not.
        """
        ts = self.timesteps(steps)
        return list(zip(ts, ts[1:] + [-1]))


def spaced_timesteps(steps: int, n: int, spacing: str = "leading", offset: int = 0) -> list[int]:
    """``steps`` inference timesteps of ``n`` training ones, descending, as diffusers' DDIM spaces them."""
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in [1, {n}], got {steps}")
    if spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + offset
    elif spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep_spacing '{spacing}'")
    if ts.max() >= n:
        raise ValueError(
            f"{steps} '{spacing}' steps with steps_offset {offset} reach t = {ts.max()} "
            f">= {n}; use timestep_spacing='trailing' for this many steps"
        )
    return [int(t) for t in ts]


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


def supports_float64(device: torch.device) -> bool:
    """Whether ``device`` computes in float64 (Apple's MPS backend does not)."""
    return device.type != "mps"


def portable_normal(seed: int, label: str, first: int, count: int, device: str | torch.device = "cpu") -> Tensor:
    """Entries ``first .. first + count - 1`` of the standard normal stream ``(seed, label)``, float32.

    Box-Muller on pairs: entries ``2m`` and ``2m + 1`` are ``r cos(theta)`` and ``r sin(theta)`` of
    uniforms ``u(2m), u(2m + 1)`` from a keyed integer hash of the counter. Integer ops are exact on
    every device; the float64 transcendentals round to the same float32 but in rare last-bit cases,
    so two devices agree to about 1e-7 relative.
    """
    device = torch.device(device)
    # A device without float64 (Apple MPS) computes the stream on the CPU and gets the float32 result.
    where = device if supports_float64(device) else torch.device("cpu")
    key = _stream_key(seed, label)
    pairs = torch.arange(first // 2, (first + count + 1) // 2, device=where, dtype=torch.int64)
    u1, u2 = _uniform(2 * pairs, key), _uniform(2 * pairs + 1, key)
    radius, theta = torch.sqrt(-2.0 * torch.log(u1)), (2 * math.pi) * u2
    values = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=1).reshape(-1)
    offset = first - 2 * (first // 2)
    return values[offset : offset + count].float().to(device)


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

    def rows(self, indices: Tensor) -> Tensor:
        """``C[indices]`` for ``indices [B]``: only those rows are computed."""
        return torch.stack([self.row_block(int(k), 1)[0] for k in indices.tolist()]) if len(indices) else torch.empty(0, self.dim, device=self.device)


def bits_per_item(steps: int, K: int) -> int:
    """Plain DDCM's bitstream size per item: ``(steps - 1) * log2 K`` (the last step adds no noise).

    With options, the exact count is ``recon.ddcm_options`` on :func:`coded_sizes`."""
    _check_K(K)
    return (steps - 1) * int(math.log2(K))


def _check_K(K: int) -> None:
    if K < 2 or K & (K - 1):
        raise ValueError(f"K must be a power of two >= 2, got {K}")


# --------------------------------------------------------------------------------------------
# Compress / decompress
# --------------------------------------------------------------------------------------------


@dataclass
class CodedStep:
    """What the chooser of a coded step sees: the plan, the step's codebook and the sampler's state."""

    plan: StepPlan
    codebook: StepCodebook
    x_t: Tensor  # [B, ...]
    eps: Tensor  # [B, ...], the denoiser's prediction at x_t
    x0_hat: Tensor  # [B, dim], the clean estimate


@torch.no_grad()
def ddcm_sample(denoiser: Denoiser, shape, steps: int, K: int, seed: int, device, choose, options: DDCMOptions = PLAIN) -> Tensor:
    """The DDCM sampler for ``shape = [B, ...]``; ``choose(CodedStep) -> noise [B, dim]`` at each coded step.

    :func:`compress` and :func:`decompress` differ only in ``choose``; a study may pass its own.
    Steps ``0 .. steps-2`` are DDIM steps at the options' eta with codebook noise (row 0 of the step's
    codebook outside the coded range); the last step returns the clean estimate ``x0_hat``.
    """
    _check_K(K)
    device = torch.device(device)
    schedule = denoiser.schedule
    options.check_schedule(schedule.num_train_timesteps)
    dim = math.prod(shape[1:])
    x = initial_noise(seed, shape, device)
    timesteps = schedule.timesteps(steps)
    for plan in step_plan(timesteps, K, options):
        eps = denoiser.predict_eps(x, plan.t).float()
        noise = None
        if plan.K is not None:
            x0_hat = rearrange(predict_x0(schedule, x, eps, plan.t), "b ... -> b (...)")
            noise = choose(CodedStep(plan, StepCodebook(seed, plan.index, plan.K, dim, device), x, eps, x0_hat)).reshape(shape)
        elif plan.eta > 0:
            noise = StepCodebook(seed, plan.index, 1, dim, device).row_block(0, 1).expand(shape[0], dim).reshape(shape)
        x = ddim_step(schedule, x, eps, plan.t, plan.t_prev, plan.eta, noise)
    t_last = timesteps[-1]
    return predict_x0(schedule, x, denoiser.predict_eps(x, t_last).float(), t_last)


def coded_sizes(schedule: DiffusionSchedule, steps: int, K: int, options: DDCMOptions = PLAIN) -> list[int]:
    """The candidate count ``K_s`` of each coded step, in order (their number is the codes' length)."""
    options.check_schedule(schedule.num_train_timesteps)
    return [p.K for p in step_plan(schedule.timesteps(steps), K, options) if p.K is not None]


def coded_sizes_on(scheduler_config: dict, steps: int, K: int, options: DDCMOptions = PLAIN) -> list[int]:
    """:func:`coded_sizes` from a DDIM scheduler config alone (no weights): for nominal bitrates."""
    n = int(scheduler_config["num_train_timesteps"])
    options.check_schedule(n)
    timesteps = spaced_timesteps(steps, n, scheduler_config.get("timestep_spacing", "leading"), int(scheduler_config.get("steps_offset", 0)))
    return [p.K for p in step_plan(timesteps, K, options) if p.K is not None]


# ---------------------------------------------------------------------- choosing atoms
RerankError = Callable[[Tensor, Tensor], Tensor]  # (x0 candidates [N, ...], their items [N]) -> error [N]
# A mix must raise the score by more than this fraction of it: c = 1 re-scales an already unit-variance
# atom, a tie in exact arithmetic that float rounding (which differs with the batch) must not break.
RAISE_TOLERANCE = 1e-5
# A step's codebook is kept in memory for the mixing rounds up to this size (else regenerated per round).
CODEBOOK_CACHE_BYTES = 256 << 20


class _CodebookPasses:
    """Products of a step's codebook rows with per-item vectors, regenerating or caching the rows."""

    def __init__(self, codebook: StepCodebook, passes: int):
        self.codebook = codebook
        keep = passes > 1 and codebook.K * codebook.dim * 4 <= CODEBOOK_CACHE_BYTES
        self.cache = list(codebook.chunks()) if keep else None

    def chunks(self):
        return self.cache if self.cache is not None else self.codebook.chunks()

    def first(self, residual: Tensor, norms: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``<C_k, r_b>`` [B, K] and, with ``norms``, ``|C_k|^2`` [K] and ``sum(C_k)`` [K], in one pass."""
        dots, squares, sums = [], [], []
        for _, chunk in self.chunks():
            dots.append(residual @ chunk.T)
            if norms:
                squares.append(chunk.pow(2).sum(dim=1))
                sums.append(chunk.sum(dim=1))
        return torch.cat(dots, dim=1), torch.cat(squares) if norms else None, torch.cat(sums) if norms else None

    def dots(self, vectors: Tensor) -> Tensor:
        return torch.cat([vectors @ chunk.T for _, chunk in self.chunks()], dim=1)


class _Scorer:
    """A step's score of candidates from their dot with the residual and their squared norm.

    ``blend`` keeps the z-statistics of the step's K plain candidates for the mixing rounds.
    """

    def __init__(self, mode: str, blend_lambda: float, residual_norm: Tensor, dots: Tensor, squares: Tensor):
        self.mode, self.blend_lambda, self.residual_norm = mode, blend_lambda, residual_norm.clamp_min(1e-12)
        if mode == "blend":
            cos = self.cosine(dots, squares)
            self.dot_stats = (dots.mean(dim=1), dots.std(dim=1).clamp_min(1e-6))
            self.cos_stats = (cos.mean(dim=1), cos.std(dim=1).clamp_min(1e-6))

    def cosine(self, dots: Tensor, squares: Tensor) -> Tensor:
        extra = dots.ndim - 1
        return dots / (squares.clamp_min(1e-24).sqrt() * self.residual_norm.view(-1, *[1] * extra))

    def __call__(self, dots: Tensor, squares: Tensor) -> Tensor:
        if self.mode == "dot":
            return dots
        if self.mode == "cosine":
            return self.cosine(dots, squares)
        shape = (-1, *[1] * (dots.ndim - 1))
        z_dot = (dots - self.dot_stats[0].view(shape)) / self.dot_stats[1].view(shape)
        z_cos = (self.cosine(dots, squares) - self.cos_stats[0].view(shape)) / self.cos_stats[1].view(shape)
        return z_dot + self.blend_lambda * z_cos


def _level_table(level_bits: int, device) -> tuple[Tensor, Tensor]:
    """``sqrt(c_j)`` and ``sqrt(1 - c_j)`` for level codes ``j = 0 .. 2^CB - 1`` (code 0 unused: 1, 0)."""
    levels = [1.0] + mixing_levels(level_bits)
    return (torch.tensor([math.sqrt(c) for c in levels], dtype=torch.float32, device=device),
            torch.tensor([math.sqrt(1 - c) for c in levels], dtype=torch.float32, device=device))


def mix_atoms(noise: Tensor, atom: Tensor, sqrt_c: Tensor, sqrt_rest: Tensor) -> Tensor:
    """``m = sqrt(c) noise + sqrt(1 - c) atom`` per item, renormalised: ``m / std(m)`` (unbiased, floored 1e-6)."""
    mixed = sqrt_c[:, None] * noise + sqrt_rest[:, None] * atom
    return mixed / mixed.std(dim=1, keepdim=True).clamp_min(1e-6)


def atoms_noise(codebook: StepCodebook, codes: Tensor, options: DDCMOptions) -> Tensor:
    """The noise ``[B, dim]`` that codes ``[B, 2P - 1]`` (``k_1, j_2, k_2, ...``) stand for: the decoder's definition."""
    if options.turbo:
        M, batch = options.turbo, codes.shape[0]
        rows = codebook.rows(codes[:, :M].reshape(-1)).reshape(batch, M, codebook.dim)
        signed = (1 - 2 * codes[:, M:].to(rows.device)).float()[..., None] * rows
        noise = signed.sum(dim=1)
        return noise / noise.std(dim=1, keepdim=True).clamp_min(1e-6)
    noise = codebook.rows(codes[:, 0])
    if options.atoms == 1:
        return noise
    sqrt_c, sqrt_rest = _level_table(options.level_bits, noise.device)
    stopped = torch.zeros(codes.shape[0], dtype=torch.bool, device=noise.device)
    for slot in range(1, options.atoms):
        level = codes[:, 2 * slot - 1].to(noise.device)
        stopped = stopped | (level == 0)
        if bool(stopped.all()):
            break
        atom = codebook.rows(torch.where(stopped, torch.zeros_like(level), codes[:, 2 * slot].to(noise.device)))
        noise = torch.where(stopped[:, None], noise, mix_atoms(noise, atom, sqrt_c[level], sqrt_rest[level]))
    return noise


def _choose_atoms(step: CodedStep, target: Tensor, options: DDCMOptions, lookahead) -> Tensor:
    """Codes ``[B, 2P - 1]`` of one coded step (see recon.ddcm_options for the greedy rule)."""
    residual = target - step.x0_hat
    batch, dim, P = residual.shape[0], residual.shape[1], options.atoms
    passes = _CodebookPasses(step.codebook, P)
    dots, squares, sums = passes.first(residual, norms=P > 1 or step.plan.score != "dot")
    if options.turbo:
        return _turbo_atoms(dots, options.turbo)
    scorer = _Scorer(step.plan.score, options.blend_lambda, residual.norm(dim=1), dots, squares)
    scores = scorer(dots, squares)
    codes = torch.zeros(batch, 2 * P - 1, dtype=torch.long, device=residual.device)
    if lookahead is not None and step.plan.coded_index % options.rerank_every == 0:
        codes[:, 0] = lookahead(step, scores)
    else:
        codes[:, 0] = scores.argmax(dim=1)
    if P == 1:
        return codes
    best = step.codebook.rows(codes[:, 0])
    best_score = scores.gather(1, codes[:, :1])[:, 0]
    residual_dot = lambda v: (v * residual).sum(dim=1)  # noqa: E731
    sqrt_c, sqrt_rest = _level_table(options.level_bits, residual.device)
    a, s = sqrt_c[1:, None, None], sqrt_rest[1:, None, None]  # [L, 1, 1] against [B, K]
    active = torch.ones(batch, dtype=torch.bool, device=residual.device)
    for slot in range(1, P):
        # Closed forms over all levels and candidates of m = a best + s C_k, renormalised by std(m).
        cross = passes.dots(best)
        raw_dot = a * residual_dot(best)[None, :, None] + s * dots[None]
        square = a**2 * best.pow(2).sum(dim=1)[None, :, None] + s**2 * squares[None, None] + 2 * a * s * cross[None]
        total = a * best.sum(dim=1)[None, :, None] + s * sums[None, None]
        std = ((square - total**2 / dim) / (dim - 1)).clamp_min(0).sqrt().clamp_min(1e-6)
        mixed = scorer((raw_dot / std).permute(1, 0, 2), (square / std**2).permute(1, 0, 2))  # [B, L, K]
        flat_score, flat = mixed.reshape(batch, -1).max(dim=1)
        level, index = flat // mixed.shape[2] + 1, flat % mixed.shape[2]
        active = active & (flat_score > best_score + RAISE_TOLERANCE * best_score.abs())
        if not bool(active.any()):
            break
        codes[:, 2 * slot - 1] = torch.where(active, level, 0)
        codes[:, 2 * slot] = torch.where(active, index, 0)
        mixed_best = mix_atoms(best, step.codebook.rows(codes[:, 2 * slot]), sqrt_c[level], sqrt_rest[level])
        best = torch.where(active[:, None], mixed_best, best)
        best_score = torch.where(active, flat_score, best_score)
    return codes


def _turbo_atoms(dots: Tensor, M: int) -> Tensor:
    """Turbo-DDCM's closed form: the M candidates of largest ``|<C_k, r>|`` (ties: lowest k), in increasing
    order, each signed as its inner product; codes ``[B, 2M]`` = indices, then sign bits (1: negated)."""
    top = torch.sort(dots.abs(), dim=1, descending=True, stable=True).indices[:, :M].sort(dim=1).values
    return torch.cat([top, (dots.gather(1, top) < 0).long()], dim=1)


def _latent_error(target: Tensor) -> RerankError:
    """The default re-ranking error: squared distance of a candidate's clean estimate to its item's target."""
    return lambda x0, items: (x0.flatten(1) - target[items]).pow(2).sum(dim=1)


def _lookahead(denoiser: Denoiser, options: DDCMOptions, error: RerankError):
    """Re-ranking: the top ``options.rerank`` candidates by score, each taken one step ahead, judged by
    ``error`` of the next clean estimate; ties keep the better score."""

    def pick(step: CodedStep, scores: Tensor) -> Tensor:
        schedule, plan = denoiser.schedule, step.plan
        batch, k = scores.shape[0], min(options.rerank, scores.shape[1])
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # [B, k]
        rows = step.codebook.rows(top.reshape(-1))
        x_t, eps = step.x_t.repeat_interleave(k, dim=0), step.eps.repeat_interleave(k, dim=0)
        x_next = ddim_step(schedule, x_t, eps, plan.t, plan.t_prev, plan.eta, rows.reshape(x_t.shape))
        x0_next = predict_x0(schedule, x_next, denoiser.predict_eps(x_next, plan.t_prev).float(), plan.t_prev)
        items = torch.arange(batch, device=scores.device).repeat_interleave(k)
        errors = error(x0_next, items).reshape(batch, k)
        return top.gather(1, errors.argmin(dim=1, keepdim=True))[:, 0]

    return pick


# ---------------------------------------------------------------------- compress / decompress
def compress(denoiser: Denoiser, x0: Tensor, steps: int, K: int, seed: int, options: DDCMOptions = PLAIN,
             rerank_error: RerankError | None = None) -> tuple[Tensor, Tensor]:
    """Code ``x0 [B, ...]``: returns the codes and the reconstruction the decoder will make.

    Codes are ``[B, coded_steps]`` (P = 1: the chosen index per coded step; plain DDCM codes all
    ``steps - 1`` noisy steps) or ``[B, coded_steps, 2P - 1]`` (recon.ddcm_options). At a coded step
    the first atom maximises the options' score against ``x0 - x0_hat`` per sample; ``rerank_error``
    (with ``options.rerank``) judges the re-ranked candidates' next clean estimates, by default by
    their squared error to ``x0``. Runs in float32 on ``x0``'s device; :func:`decompress` on the same
    device class reproduces the reconstruction exactly.
    """
    target = rearrange(x0.float(), "b ... -> b (...)")
    lookahead = _lookahead(denoiser, options, rerank_error or _latent_error(target)) if options.rerank > 1 else None
    chosen: list[Tensor] = []

    def choose(step: CodedStep) -> Tensor:
        codes = _choose_atoms(step, target, options, lookahead)
        chosen.append(codes)
        return atoms_noise(step.codebook, codes, options)

    reconstruction = ddcm_sample(denoiser, tuple(x0.shape), steps, K, seed, x0.device, choose, options)
    width = options.code_width
    codes = torch.stack(chosen, dim=1) if chosen else torch.zeros(x0.shape[0], 0, width, dtype=torch.long, device=x0.device)
    return (codes[..., 0] if width == 1 else codes), reconstruction


def decompress(denoiser: Denoiser, codes: Tensor, steps: int, K: int, seed: int, shape, device: str | torch.device = "cpu",
               options: DDCMOptions = PLAIN) -> Tensor:
    """Replay the sampler with stored ``codes`` (as :func:`compress` returns them); ``shape`` is the full ``[B, ...]``."""
    shape = tuple(int(s) for s in shape)
    sizes = coded_sizes(denoiser.schedule, steps, K, options)
    width = options.code_width
    expected = (shape[0], len(sizes)) + ((width,) if width > 1 else ())
    if tuple(codes.shape) != expected:
        raise ValueError(f"codes of shape {tuple(codes.shape)} do not fit shape {shape}, {steps} steps and these options (expected {expected})")
    codes = codes.to(device=device, dtype=torch.long).reshape(shape[0], len(sizes), width)
    for s, K_s in enumerate(sizes):
        if options.turbo:
            indices, signs = codes[:, s, : options.turbo], codes[:, s, options.turbo :]
            if int(indices.min()) < 0 or int(indices.max()) >= K_s or (indices.diff(dim=1) <= 0).any() or ((signs != 0) & (signs != 1)).any():
                raise ValueError(f"Turbo-DDCM codes need increasing indices in [0, {K_s}) and sign bits at coded step {s}")
            continue
        if codes.numel() and (int(codes[:, s, 0::2].min()) < 0 or int(codes[:, s, 0::2].max()) >= K_s):
            raise ValueError(f"indices must lie in [0, {K_s}) at coded step {s}")
        if width > 1 and (int(codes[:, s, 1::2].min()) < 0 or int(codes[:, s, 1::2].max()) >= 1 << options.level_bits):
            raise ValueError(f"mixing level codes must lie in [0, {1 << options.level_bits}) at coded step {s}")
    return ddcm_sample(denoiser, shape, steps, K, seed, device,
                       lambda step: atoms_noise(step.codebook, codes[:, step.plan.coded_index], options), options)
