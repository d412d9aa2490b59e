"""Vector quantizer for the frozen AudioLDM2 VAE latent ([B, 8, T, F], channel first).

With ``stages > 1`` it is a residual VQ: each further stage (``residual[i]``, a one-stage
quantizer of its own) codes what the stages before it left, so N stages of K codes cost
N·log2 K bits per vector. Stage 1 is the quantizer itself: its parameter names, its training
and its codes are those of a one-stage quantizer, so one-stage checkpoints load unchanged and
stage 1 of a ladder is the one-stage codec. Quantizer dropout (``quantizer_dropout``) trains the
later stages at random depths so that every prefix of the ladder is a codec.

One class, two choices: how a vector picks its code (``mode``: hard nearest code with a
straight-through gradient, or a softmax over distances that anneals towards hard) and how
the codebook learns (``update``: through the optimizer by the codebook loss, or by
exponential moving averages of the vectors each code receives).

DDP: everything that changes the codebook outside the optimizer (k-means, EMA, dead-code
restarts) is either computed from all-reduced statistics or decided on rank 0 and broadcast,
so every rank holds the same codebook. These paths call collectives, so all ranks must take
them together; they do, because the decisions depend only on state that is already in sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from torch import Tensor, nn

from .distributed import is_distributed as _distributed
from .distributed import rank as _rank
from .distributed import world_size as _world


# The range coder's fixed-point probabilities (constriction's default categorical model: 24 bits).
PRIOR_PRECISION = 24


def quantise_prior(weights: Tensor, smoothing: float = 0.0, precision: int = PRIOR_PRECISION) -> Tensor:
    """Integer weights ``w`` (int64, each >= 1, summing to ``2 ** precision``) proportional to
    ``weights + smoothing``, in exact rational arithmetic. With ``c_i`` the exact values of the
    floats, ``S = sum c`` and ``D = 2 ** precision - n``: ``w_i = 1 + floor(c_i D / S)``; the
    ``D - sum floor(.)`` units still missing go one each to the largest remainders ``c_i D mod S``
    (ties: the lower index). No float sum enters, so every CPU makes the same table from the same
    stored counts (float64 sums differ in the last bit between SIMD widths and architectures)."""
    values = [float(v) for v in weights.detach().cpu().double().reshape(-1).tolist()] + [float(smoothing)]
    if not all(math.isfinite(v) and v >= 0 for v in values) or len(values) - 1 >= (1 << precision):
        raise ValueError("prior weights must be finite and non-negative, fewer than 2 ** precision")
    ratios = [v.as_integer_ratio() for v in values]  # exact: every denominator is a power of two
    common = max(den for _, den in ratios)
    *counts, extra = (num * (common // den) for num, den in ratios)
    counts = [c + extra for c in counts]
    total, free = sum(counts), (1 << precision) - len(counts)
    if total == 0:
        raise ValueError("prior weights sum to zero")
    shares = [divmod(c * free, total) for c in counts]
    table = [1 + q for q, _ in shares]
    for i in sorted(range(len(shares)), key=lambda i: (-shares[i][1], i))[: free - sum(q for q, _ in shares)]:
        table[i] += 1
    return torch.tensor(table, dtype=torch.int64)


@dataclass
class CodebookConfig:
    """The vector quantizer over the VAE latent.

    Args:
        num_codes: codes per stage (K); a hard code costs log2 K bits per latent vector.
        dim: code dimension: the latent's channels (8 for AudioLDM2).
        mode: "hard" (nearest code, straight-through) or "soft" (temperature-weighted codes).
        commitment_weight: weight of the commitment term in the loss.
        update: "grad" (the optimiser moves the codes) or "ema" (moving averages of assigned latents).
        ema_decay: decay of the EMA statistics.
        ema_eps: Laplace smoothing of the EMA cluster sizes.
        temperature: soft mode's starting temperature.
        temperature_min: soft mode's final temperature.
        temperature_anneal_steps: steps of the exponential temperature anneal (0: constant).
        kmeans_init: initialise the codes by k-means on real latents before the first step.
        kmeans_iters: Lloyd iterations of that k-means.
        dead_code_threshold: re-seed codes unused for this many training steps (0: never).
        seed: seed of the quantizer's own draws (initialisation, k-means, restarts).
        chunk_size: rows per block of the distance matrix (bounds memory).
        kmeans_max_vectors: latent vectors (over all ranks) the k-means uses at most.
        stages: residual stages (hard mode); each adds log2 K bits per latent vector.
        quantizer_dropout: probability that a training step uses a random prefix of the stages.
    """

    num_codes: int = 1024
    dim: int = 8
    mode: str = "hard"  # "hard" | "soft"
    commitment_weight: float = 0.25
    update: str = "grad"  # "grad" | "ema"
    ema_decay: float = 0.99
    ema_eps: float = 1e-5  # Laplace smoothing
    temperature: float = 1.0  # soft mode start temperature
    temperature_min: float = 0.01
    temperature_anneal_steps: int = 10000  # exponential anneal over these steps (0 = constant)
    kmeans_init: bool = True
    kmeans_iters: int = 20
    dead_code_threshold: int = 0  # restart codes unused for this many training steps (0 disables)
    # The quantizer draws from its own generator (random init, k-means, restarts) so that runs
    # repeat exactly and the global RNG that dropout/data loading use is left alone.
    seed: int = 0
    # Rows per block of the distance matrix: bounds memory at chunk_size * num_codes floats.
    chunk_size: int = 16384
    # Lloyd costs iters * N * K; more samples than this (over all ranks) add little to 1024 codes.
    kmeans_max_vectors: int = 65536
    # Residual stages (hard mode only); each adds log2(num_codes) bits per latent vector.
    stages: int = 1
    # Probability that a training step uses a random number of stages (1..stages) instead of all.
    quantizer_dropout: float = 0.0


@dataclass
class QuantizerOutput:
    z_q: Tensor
    indices: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor
    usage: Tensor
    commitment_weight: float = 0.25

    @property
    def loss(self) -> Tensor:
        return self.codebook_loss + self.commitment_weight * self.commitment_loss


def _all_reduce_(t: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast_(t: Tensor) -> Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _gather_rows(x: Tensor) -> Tensor:
    """Concatenate [n_r, D] from all ranks in rank order; all_gather needs equal shapes, so pad."""
    if not _distributed():
        return x
    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros(max(sizes), x.shape[1])
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _sqdist(x: Tensor, codes: Tensor) -> Tensor:
    # Expanded form: one matmul instead of an [N, K, D] difference tensor.
    d = x.pow(2).sum(1, keepdim=True) - 2 * x @ codes.t() + codes.pow(2).sum(1)
    return d.clamp_min(0)  # cancellation can dip a hair below zero


class VectorQuantizer(nn.Module):
    def __init__(self, config: CodebookConfig | None = None):
        super().__init__()
        self.cfg = cfg = config if config is not None else CodebookConfig()
        if cfg.mode not in ("hard", "soft"):
            raise ValueError(f"mode must be 'hard' or 'soft', got {cfg.mode!r}")
        if cfg.update not in ("grad", "ema"):
            raise ValueError(f"update must be 'grad' or 'ema', got {cfg.update!r}")
        if cfg.stages < 1 or (cfg.stages > 1 and cfg.mode != "hard"):
            raise ValueError(f"stages must be >= 1, and residual stages need mode 'hard' (got stages={cfg.stages}, mode={cfg.mode!r})")
        if not 0.0 <= cfg.quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must lie in [0, 1], got {cfg.quantizer_dropout}")
        # Not part of the state dict: a resumed run repeats its random choices from the seed.
        self._gen = torch.Generator().manual_seed(cfg.seed)
        codes = torch.randn(cfg.num_codes, cfg.dim, generator=self._gen)
        if cfg.update == "grad":
            self.codebook = nn.Parameter(codes)
        else:
            self.register_buffer("codebook", codes)
            # Every code starts as if it had been seen once at its own position, which keeps
            # codebook == embed_sum / cluster_size true from the start.
            self.register_buffer("cluster_size", torch.ones(cfg.num_codes))
            self.register_buffer("embed_sum", codes.clone())
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("step", torch.tensor(0))  # training forwards seen; drives the temperature
        self.register_buffer("steps_unused", torch.zeros(cfg.num_codes, dtype=torch.long))
        self.register_buffer("num_restarted", torch.tensor(0))  # in the latest training forward
        self.register_buffer("total_restarted", torch.tensor(0))
        # Decayed counts of each code's use in training (rate ema_decay per step, all ranks summed):
        # the prior that entropy-codes this stage's indices. All zero: no prior (never trained).
        self.register_buffer("code_frequency", torch.zeros(cfg.num_codes))
        # Stages 2..N, each seeded apart; their own draws never touch stage 1's generator.
        self.residual = nn.ModuleList(
            VectorQuantizer(replace(cfg, stages=1, quantizer_dropout=0.0, seed=cfg.seed + 7919 * s)) for s in range(1, cfg.stages)
        )
        self._dropout_gen = torch.Generator().manual_seed(cfg.seed + 104729)

    @property
    def num_stages(self) -> int:
        return 1 + len(self.residual)

    def reseed(self, seed: int) -> None:
        """Seed every random draw of this quantizer (a training step does, so a resume repeats it)."""
        self._gen.manual_seed(seed)
        self._dropout_gen.manual_seed(seed + 104729)
        for s, stage in enumerate(self.residual, start=1):
            stage.reseed(seed + 7919 * s)

    def __getstate__(self) -> dict:
        # A torch.Generator does not survive torch.multiprocessing's pickler (ddp_spawn sends the
        # model to every process; its state tensor fails to be shared): send the state as bytes.
        state = dict(self.__dict__)
        for name in ("_gen", "_dropout_gen"):
            state[name] = state[name].get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        generators = {name: state.pop(name) for name in ("_gen", "_dropout_gen")}
        super().__setstate__(state)
        for name, generator_state in generators.items():
            generator = torch.Generator()
            generator.set_state(torch.frombuffer(bytearray(generator_state), dtype=torch.uint8))
            setattr(self, name, generator)

    @property
    def bits_per_index(self) -> float:
        return math.log2(self.cfg.num_codes)

    def temperature_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.temperature_anneal_steps <= 0:
            return cfg.temperature
        frac = min(max(step, 0) / cfg.temperature_anneal_steps, 1.0)
        return cfg.temperature * (cfg.temperature_min / cfg.temperature) ** frac

    def _flatten(self, z: Tensor) -> tuple[Tensor, list]:
        if z.shape[1] != self.cfg.dim:
            raise ValueError(f"expected channel dim {self.cfg.dim} at axis 1, got shape {tuple(z.shape)}")
        x, ps = pack([rearrange(z.float(), "b d ... -> b ... d")], "* d")
        return x, ps

    def _nearest(self, x: Tensor, codes: Tensor) -> Tensor:
        # ||x||^2 is the same for every code of a row, so the argmin needs only ||e||^2 - 2 x.e,
        # and addmm yields that in one pass over the [chunk, K] block.
        sq = codes.pow(2).sum(1)
        chunks = x.split(self.cfg.chunk_size)
        return torch.cat([torch.addmm(sq, c, codes.t(), alpha=-2).argmin(1) for c in chunks])

    def _sample(self, n: int, k: int, device: torch.device) -> Tensor:
        """k row indices out of n, distinct when possible."""
        if n >= k:
            return torch.randperm(n, generator=self._gen)[:k].to(device)
        return torch.randint(n, (k,), generator=self._gen).to(device)

    def forward(self, z: Tensor, stages: int | None = None) -> QuantizerOutput:
        """Quantize z [B, dim, *spatial] with the first ``stages`` stages (default: all; in training,
        a random number of them with probability ``quantizer_dropout``).

        One stage is exactly :meth:`forward_stage`. With more, the codebook loss is the sum of the
        stages' (each on its own residual), the commitment loss is that of the summed codes, and
        ``z_q`` passes the gradient straight through to ``z``; ``indices`` and the usage statistics
        are stage 1's.
        """
        n = self.num_stages if stages is None else stages
        if not 1 <= n <= self.num_stages:
            raise ValueError(f"stages must lie in [1, {self.num_stages}], got {n}")
        if stages is None and self.training and n > 1 and self.cfg.quantizer_dropout > 0:
            if float(torch.rand((), generator=self._dropout_gen)) < self.cfg.quantizer_dropout:
                n = int(torch.randint(1, n + 1, (), generator=self._dropout_gen))
        first = self.forward_stage(z)
        if n == 1:
            return first
        with torch.autocast(device_type=z.device.type, enabled=False):
            total = first.z_q.detach().float()
            codebook_loss = first.codebook_loss
            for stage in self.residual[: n - 1]:
                out = stage.forward_stage(z.detach().float() - total)
                total = total + out.z_q.detach().float()
                codebook_loss = codebook_loss + out.codebook_loss
            zf = z.float()
            return QuantizerOutput(
                z_q=(zf + (total - zf).detach()).to(z.dtype),
                indices=first.indices,
                codebook_loss=codebook_loss,
                commitment_loss=F.mse_loss(zf, total),
                perplexity=first.perplexity,
                usage=first.usage,
                commitment_weight=self.cfg.commitment_weight,
            )

    def forward_stage(self, z: Tensor) -> QuantizerOutput:
        """Quantize z [B, dim, *spatial] with this stage alone.

        In training, an uninitialised codebook with kmeans_init is fitted by k-means on this
        batch first (a trainer that wants a better fit calls init_from_latents with more data
        before training). Eval never initialises: an unfitted codebook is used as it is.
        """
        cfg = self.cfg
        with torch.autocast(device_type=z.device.type, enabled=False):
            x, ps = self._flatten(z)
            if self.training and cfg.kmeans_init and not bool(self.initialized):
                self.init_stage_from_latents(x.detach())
            if self.training and cfg.dead_code_threshold > 0:
                self._restart_dead(x.detach())
            codes = self.codebook.float()
            if cfg.update == "ema":
                # The EMA step below rewrites the buffer in place; autograd must keep this step's values.
                codes = codes.detach().clone()
            if cfg.mode == "hard":
                idx = self._nearest(x.detach(), codes.detach())
                e = F.embedding(idx, codes)
                # STE written so the forward value is exactly e (decode_indices gives the same
                # numbers) and the gradient goes to z alone; the codebook learns by its own loss.
                q = e.detach() + (x - x.detach())
            else:
                d = _sqdist(x, codes)
                q = (-d / self.temperature_at(int(self.step))).softmax(-1) @ codes
                idx = d.detach().argmin(1)
                e = F.embedding(idx, codes)
            # Both losses use the nearest code, also in soft mode: that is the point the soft
            # weights collapse onto as T -> 0, so these losses prepare z and codes for hard use.
            commitment_loss = F.mse_loss(x, e.detach())
            codebook_loss = F.mse_loss(x.detach(), e) if cfg.update == "grad" else x.new_zeros(())
            counts = torch.bincount(idx, minlength=cfg.num_codes).float()
            if self.training:
                self._update_stats(x.detach(), idx, counts)
                self.step += 1
            probs = counts / counts.sum()
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
            z_q = rearrange(unpack(q, ps, "* d")[0], "b ... d -> b d ...")
            return QuantizerOutput(
                z_q=z_q.to(z.dtype),
                indices=unpack(idx, ps, "*")[0],
                codebook_loss=codebook_loss,
                commitment_loss=commitment_loss,
                perplexity=entropy.exp(),
                usage=(counts > 0).float().mean(),
                commitment_weight=cfg.commitment_weight,
            )

    @torch.no_grad()
    def quantize_indices(self, z: Tensor) -> Tensor:
        """Stage 1's nearest code of every vector: ``[B, *spatial]``."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            x, ps = self._flatten(z)
            return unpack(self._nearest(x, self.codebook.float()), ps, "*")[0]

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Stage 1's codes of ``indices [B, *spatial]``: ``[B, dim, *spatial]``."""
        return rearrange(F.embedding(indices, self.codebook), "b ... d -> b d ...")

    def code_probabilities(self, stages: int | None = None) -> list[Tensor] | None:
        """Each stage's prior over its codes, or None if a stage has none: float64, every code > 0,
        exactly the range coder's integer table over ``2 ** PRIOR_PRECISION`` (:func:`quantise_prior`
        of the code frequencies with half a count of Laplace smoothing, so an unseen code stays codable)."""
        books = [self, *self.residual][: stages or self.num_stages]
        if any(not bool((b.code_frequency > 0).any()) for b in books):
            return None
        return [quantise_prior(b.code_frequency, smoothing=0.5).double() / (1 << PRIOR_PRECISION) for b in books]

    @torch.no_grad()
    def residual_indices(self, z: Tensor, stages: int | None = None) -> Tensor:
        """The codes of the first ``stages`` stages, each on the residual of those before: ``[B, stages, *spatial]``."""
        n = self.num_stages if stages is None else stages
        if not 1 <= n <= self.num_stages:
            raise ValueError(f"stages must lie in [1, {self.num_stages}], got {n}")
        residual = z.float()
        indices = []
        for stage in [self, *self.residual][:n]:
            index = stage.quantize_indices(residual)
            indices.append(index)
            residual = residual - stage.decode_indices(index).float()
        return torch.stack(indices, dim=1)

    def decode_residual(self, indices: Tensor) -> Tensor:
        """The sum of the stages' codes of ``indices [B, stages, *spatial]``: ``[B, dim, *spatial]``."""
        if not 1 <= indices.shape[1] <= self.num_stages:
            raise ValueError(f"indices of {indices.shape[1]} stages for a quantizer of {self.num_stages}")
        stages = [self, *self.residual][: indices.shape[1]]
        return sum(stage.decode_indices(indices[:, s]).float() for s, stage in enumerate(stages))

    @torch.no_grad()
    def set_codes(self, indices: Tensor, vectors: Tensor) -> None:
        """Overwrite codes and forget their history.

        EMA statistics restart as one observation of the new vector: left stale, the next EMA
        step would pull a restarted code straight back to where it died.
        """
        vectors = vectors.to(self.codebook)
        self.codebook[indices] = vectors
        if self.cfg.update == "ema":
            self.cluster_size[indices] = 1.0
            self.embed_sum[indices] = vectors
        self.steps_unused[indices] = 0

    @torch.no_grad()
    def init_from_latents(self, vectors: Tensor) -> None:
        """k-means of every stage on [N, dim] vectors (stage s on what stages before it leave of them)."""
        self.init_stage_from_latents(vectors)
        residual = vectors.detach().float()
        previous = self
        for stage in self.residual:
            residual = residual - previous.codebook.float()[previous._nearest(residual, previous.codebook.float())]
            stage.init_stage_from_latents(residual)
            previous = stage

    @torch.no_grad()
    def init_stage_from_latents(self, vectors: Tensor) -> None:
        """k-means of this stage on [N, dim] vectors; in DDP every rank calls it with its own vectors.

        Each rank contributes up to kmeans_max_vectors / world of them, rank 0 clusters the
        union and broadcasts the result.
        """
        cfg = self.cfg
        if vectors.ndim != 2 or vectors.shape[1] != cfg.dim:
            raise ValueError(f"expected [N, {cfg.dim}] vectors, got shape {tuple(vectors.shape)}")
        x = vectors.detach().float()
        cap = max(cfg.kmeans_max_vectors // _world(), 1)
        if len(x) > cap:
            x = x[self._sample(len(x), cap, x.device)]
        x = _gather_rows(x)
        if _rank() == 0:
            codes = self._kmeans(x)
        else:
            codes = x.new_empty(cfg.num_codes, cfg.dim)
        self.set_codes(torch.arange(cfg.num_codes, device=self.codebook.device), _broadcast_(codes))
        self.initialized.fill_(True)

    def _kmeans(self, x: Tensor) -> Tensor:
        k, n = self.cfg.num_codes, len(x)
        # k-means++ seeding: Lloyd from uniformly drawn seeds keeps two seeds in one cluster and
        # none in another often enough to matter even on cleanly separated data.
        u = torch.rand(k, generator=self._gen).to(x.device)
        codes = x.new_empty(k, x.shape[1])
        codes[0] = x[(u[0] * n).long().clamp_max(n - 1)]
        d2 = (x - codes[0]).pow(2).sum(1)
        for i in range(1, k):
            cum = d2.cumsum(0)
            j = torch.searchsorted(cum, u[i : i + 1] * cum[-1], right=True).clamp_max(n - 1)
            codes[i] = x[j]
            d2 = torch.minimum(d2, (x - codes[i]).pow(2).sum(1))
        for _ in range(self.cfg.kmeans_iters):
            idx = self._nearest(x, codes)
            counts = torch.bincount(idx, minlength=k)
            sums = torch.zeros_like(codes).index_add_(0, idx, x)
            # Drawn every iteration, used only for empty clusters, so the draw count is fixed.
            reseed = x[self._sample(n, k, x.device)]
            codes = torch.where((counts == 0)[:, None], reseed, sums / counts.clamp_min(1)[:, None])
        return codes

    @torch.no_grad()
    def _restart_dead(self, x: Tensor) -> None:
        dead = (self.steps_unused >= self.cfg.dead_code_threshold).nonzero().squeeze(1)
        self.num_restarted.fill_(len(dead))
        if len(dead) == 0:
            return
        pool = _gather_rows(x)
        new = pool[self._sample(len(pool), len(dead), pool.device)]
        self.set_codes(dead, _broadcast_(new.contiguous()))
        self.total_restarted += len(dead)

    @torch.no_grad()
    def _update_stats(self, x: Tensor, idx: Tensor, counts: Tensor) -> None:
        cfg = self.cfg
        ema = cfg.update == "ema"
        stats = counts[:, None]
        if ema:
            stats = torch.cat([stats, torch.zeros_like(self.embed_sum).index_add_(0, idx, x)], 1)
        # Sum over ranks before anything else, so every rank applies the same update.
        stats = _all_reduce_(stats.clone())
        counts = stats[:, 0]
        self.code_frequency.mul_(cfg.ema_decay).add_(counts)
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if ema:
            self.cluster_size.lerp_(counts, 1 - cfg.ema_decay)
            self.embed_sum.lerp_(stats[:, 1:], 1 - cfg.ema_decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + cfg.ema_eps) / (n + cfg.num_codes * cfg.ema_eps) * n
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
