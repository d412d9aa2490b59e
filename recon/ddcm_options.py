"""The options of recon's DDCM sampler, its step plan and its exact bit layout.

:class:`DDCMOptions` holds every choice the DDCM sampler (``recon.ddcm``) makes besides the number
of steps, the codebook size ``K`` and the seed. Its defaults are the plain DDCM of Ohayon et al.
(DDIM eta 1 on every step, one atom per step chosen by the inner product). The options:

* **coded range** ``t_range = (t0, t1)``: only steps with ``t0 >= t >= t1`` are coded. Any other
  step takes row 0 of its codebook and costs no bits. A step whose eta is 0 adds no noise and is
  not coded either.
* **eta schedule**: ``eta`` above ``eta_switch``, ``eta_late`` at ``t <= eta_switch``; the step
  adds ``sigma = eta * sqrt(Var_DDIM(t))`` times its noise (``recon.ddcm.ddim_step``).
* **score** of a candidate ``n_k`` against the residual ``r = x0_target - x0_hat(x_t)``:
  ``dot`` = ``<n_k, r>``; ``cosine`` = ``<n_k, r> / (|n_k| |r|)``; ``blend`` =
  ``z(dot) + blend_lambda * z(cosine)`` where ``z(v) = (v - mean_k v) / std_k v`` over the step's
  ``K`` candidates (unbiased std, floored at 1e-6); ``score_late`` at ``t <= score_switch``.
* **noise mixing with P atoms** (``atoms``; greedy). After the best atom ``b``, each further atom
  ``k`` is mixed in as ``m = sqrt(c) b + sqrt(1 - c) n_k``, then ``m / std(m)`` (unit variance),
  with ``c = j / (2^CB - 1)``, ``j = 1 .. 2^CB - 1`` (``CB = level_bits``). Each round takes the
  ``(j, k)`` of the highest score (ties: lowest ``j``, then lowest ``k``) and keeps it only if it
  raises the score of ``b`` by more than ``1e-5 |score(b)|`` (so that exact ties, such as ``c = 1``
  re-scaling an already unit-variance ``b``, do not hinge on float rounding); otherwise the step's
  atoms end there (a later round would search the same candidates around the same ``b``). For
  ``blend`` the z-statistics of the step's ``K`` candidates are used for the mixes too, so scores
  across rounds compare on one scale. The first atom is the raw codebook row, as in plain DDCM.
* **late K**: ``k_late`` candidates at ``t <= k_switch`` (the rows are the first ``k_late`` of the
  step's codebook).
* **re-ranking**: every ``rerank_every``-th coded step, the ``rerank`` best candidates by score
  are tried one step ahead and the one whose next clean estimate has the smallest decoded error
  (``recon.ddcm.compress``'s ``rerank_error``; the latent's squared error by default) is taken.
  Encoder-only: a decoder replays the stored choice.
* **Turbo-DDCM** (Vaisman et al. 2025) ``turbo = M``: a coded step's noise is
  ``sum_k s_k n_k / std(.)`` over the ``M`` candidates of largest ``|<n_k, r>|`` with
  ``s_k = sign <n_k, r>`` (the closed form of maximising ``<noise, r>`` over signed ``M``-subsets of
  nearly orthogonal atoms). Written per step as ``rank * 2^M + signs`` in
  ``ceil(log2 C(K_s, M)) + M`` bits, ``rank`` the subset's combinatorial-number-system rank
  ``sum_i C(c_i, i + 1)`` over its increasing indices ``c_i``, sign bit ``i`` (MSB first) 1 when
  atom ``c_i`` is negated. Excludes mixing, re-ranking and other scores; codes
  ``[B, coded_steps, 2M]`` (indices, then sign bits).

Bits per item (``recon.ddcm_options.code_widths`` is the definition, ``bits_of_codes`` counts them):
each coded step with ``K_s`` candidates (``K`` or ``k_late``) writes, most significant bit first,

    k_1 (log2 K_s bits)                                         if P = 1: nothing more
    then, for slots 2 .. P:  j (CB bits); if j > 0: k (log2 K_s bits); if j = 0: the step ends

so a step that keeps ``a`` further atoms costs ``(1 + a) log2 K_s + CB * min(a + 1, P - 1)`` bits:
a skipped atom is the level code 0 and costs ``CB`` bits. Steps follow each other, items (segments)
follow each other, and the file pads the total to whole bytes with zero bits. The nominal rate
(:func:`max_bits_per_item`) is the worst case ``P log2 K_s + (P - 1) CB`` per coded step; it is
exact for ``P = 1``.

In memory a batch's codes are ``[B, coded_steps, 2P - 1]`` long (``k_1, j_2, k_2, j_3, ...``; after
a level code 0 every entry is 0 and is not written), squeezed to ``[B, coded_steps]`` for ``P = 1``;
Turbo-DDCM's are ``[B, coded_steps, 2M]``.

Container header: :meth:`DDCMOptions.to_header` writes the options that differ from plain DDCM
(absent fields mean the plain-DDCM value, which never changes); :meth:`DDCMOptions.from_header`
checks them, one line per error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

__all__ = ["DDCMOptions", "FLAGS", "PLAIN", "SCORE_MODES", "StepPlan", "add_arguments", "bits_of_codes", "code_widths",
           "max_bits_per_item", "mixing_levels", "pack_codes", "step_plan", "turbo_bits", "turbo_rank", "turbo_unrank", "unpack_codes"]

SCORE_MODES = ("dot", "cosine", "blend")
MAX_LEVEL_BITS = 8  # up to 255 mixing levels (bench/ddcm_options.py measures CB 2 .. 6)
MAX_ATOMS = 16
MAX_TURBO = 4096


def _is_power_of_two(k) -> bool:
    return isinstance(k, int) and k >= 2 and not k & (k - 1)


@dataclass(frozen=True)
class DDCMOptions:
    """Every choice of the DDCM sampler besides steps, K and seed (see the module docstring)."""

    atoms: int = 1  # P: atoms mixed per coded step
    level_bits: int = 4  # CB: bits of a mixing level (used when atoms > 1)
    t_range: tuple[int, int] | None = None  # (t0, t1): steps with t0 >= t >= t1 are coded; None: all
    eta: float = 1.0
    eta_late: float | None = None  # eta at t <= eta_switch
    eta_switch: int | None = None
    score: str = "dot"
    blend_lambda: float = 0.5
    score_late: str | None = None  # score mode at t <= score_switch
    score_switch: int | None = None
    k_late: int | None = None  # candidates per step at t <= k_switch
    k_switch: int | None = None
    rerank: int = 0  # candidates re-ranked by decoded error (0 or 1: off)
    rerank_every: int = 1  # re-rank at every n-th coded step
    turbo: int = 0  # Turbo-DDCM: M atoms per coded step chosen in closed form (0: off)

    def __post_init__(self):
        if self.t_range is not None:
            object.__setattr__(self, "t_range", tuple(int(t) for t in self.t_range))
        problems = self.problems()
        if problems:
            raise ValueError(f"DDCM options: {problems[0]}")

    def problems(self) -> list[str]:
        out = [f"{f.name} must be a number, got {getattr(self, f.name)!r}" for f in fields(self) if isinstance(getattr(self, f.name), bool)]
        if not isinstance(self.atoms, int) or not 1 <= self.atoms <= MAX_ATOMS:
            out.append(f"atoms (P) must be an integer in [1, {MAX_ATOMS}], got {self.atoms!r}")
        if not isinstance(self.level_bits, int) or not 1 <= self.level_bits <= MAX_LEVEL_BITS:
            out.append(f"level_bits (CB) must be an integer in [1, {MAX_LEVEL_BITS}], got {self.level_bits!r}")
        if self.t_range is not None and (len(self.t_range) != 2 or self.t_range[0] < self.t_range[1] or self.t_range[1] < 0):
            out.append(f"t_range (t0, t1) needs t0 >= t1 >= 0, got {self.t_range!r}")
        for name in ("eta", "eta_late"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                out.append(f"{name} must lie in [0, 1], got {value!r}")
        for mode in ("score", "score_late"):
            value = getattr(self, mode)
            if value is not None and value not in SCORE_MODES:
                out.append(f"unknown {mode} mode {value!r}; one of {', '.join(SCORE_MODES)}")
        if not isinstance(self.blend_lambda, (int, float)) or not math.isfinite(self.blend_lambda):
            out.append(f"blend_lambda must be a finite number, got {self.blend_lambda!r}")
        for late, switch in (("eta_late", "eta_switch"), ("score_late", "score_switch"), ("k_late", "k_switch")):
            if (getattr(self, late) is None) != (getattr(self, switch) is None):
                out.append(f"{late} and {switch} go together, got {getattr(self, late)!r} and {getattr(self, switch)!r}")
            elif getattr(self, switch) is not None and (not isinstance(getattr(self, switch), int) or getattr(self, switch) < 0):
                out.append(f"{switch} must be a timestep >= 0, got {getattr(self, switch)!r}")
        if self.k_late is not None and not _is_power_of_two(self.k_late):
            out.append(f"k_late must be a power of two >= 2, got {self.k_late!r}")
        if not isinstance(self.rerank, int) or self.rerank < 0:
            out.append(f"rerank must be an integer >= 0, got {self.rerank!r}")
        if not isinstance(self.rerank_every, int) or self.rerank_every < 1:
            out.append(f"rerank_every must be an integer >= 1, got {self.rerank_every!r}")
        if not isinstance(self.turbo, int) or not 0 <= self.turbo <= MAX_TURBO:
            out.append(f"turbo (M) must be an integer in [0, {MAX_TURBO}], got {self.turbo!r}")
        elif self.turbo and (self.atoms > 1 or self.rerank > 1 or self.score != "dot" or self.score_late is not None):
            out.append("turbo chooses its atoms by the dot score alone: it excludes atoms > 1, rerank and other score modes")
        return out

    @property
    def code_width(self) -> int:
        """Entries of a coded step's codes: ``2P - 1``, or ``2M`` with Turbo-DDCM."""
        return 2 * self.turbo if self.turbo else 2 * self.atoms - 1

    # ------------------------------------------------------------------ per-step values
    def eta_at(self, t: int) -> float:
        return float(self.eta_late if self.eta_late is not None and t <= self.eta_switch else self.eta)

    def score_at(self, t: int) -> str:
        return self.score_late if self.score_late is not None and t <= self.score_switch else self.score

    def k_at(self, t: int, K: int) -> int:
        return self.k_late if self.k_late is not None and t <= self.k_switch else K

    def in_range(self, t: int) -> bool:
        return self.t_range is None or self.t_range[0] >= t >= self.t_range[1]

    def check_schedule(self, num_train_timesteps: int) -> None:
        """The timesteps named here must exist in a schedule of ``num_train_timesteps``."""
        last = num_train_timesteps - 1
        if self.t_range is not None and self.t_range[0] > last:
            raise ValueError(f"DDCM options: t_range {list(self.t_range)} lies outside the schedule's timesteps 0 .. {last}")
        for name in ("eta_switch", "score_switch", "k_switch"):
            if getattr(self, name) is not None and getattr(self, name) > last:
                raise ValueError(f"DDCM options: {name} {getattr(self, name)} lies outside the schedule's timesteps 0 .. {last}")

    # ------------------------------------------------------------------ header
    def to_header(self) -> dict:
        """The options that differ from plain DDCM, as JSON values (``t_range`` as ``[t0, t1]``)."""
        plain = asdict(PLAIN)
        out = {}
        for name, value in asdict(self).items():
            if value != plain[name] and not (name == "level_bits" and self.atoms == 1):
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_header(cls, header: dict | None, num_train_timesteps: int | None = None) -> "DDCMOptions":
        """Options from a container's ``ddcm`` object (absent: plain DDCM), checked; ValueError says why not."""
        if header is None:
            header = {}
        if not isinstance(header, dict):
            raise ValueError(f"ddcm options must be a JSON object, got {type(header).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(header) - known)
        if unknown:
            raise ValueError(f"unknown DDCM option(s) {', '.join(unknown)} in the file")
        values = dict(header)
        if values.get("t_range") is not None:
            if not (isinstance(values["t_range"], list) and len(values["t_range"]) == 2 and all(isinstance(t, int) for t in values["t_range"])):
                raise ValueError(f"DDCM options: t_range must be [t0, t1] integers, got {values['t_range']!r}")
            values["t_range"] = tuple(values["t_range"])
        options = cls(**values)
        if num_train_timesteps is not None:
            options.check_schedule(num_train_timesteps)
        return options


PLAIN = DDCMOptions()


# ---------------------------------------------------------------------- the step plan
@dataclass(frozen=True)
class StepPlan:
    """One noisy transition ``t -> t_prev`` of the sampler and what it codes (``K`` None: nothing)."""

    index: int  # position among the sampler's noisy steps (0 .. steps - 2): names the step's codebook
    t: int
    t_prev: int
    eta: float
    K: int | None  # candidates of a coded step; None: takes codebook row 0, no bits
    score: str
    coded_index: int | None  # position among the coded steps


def step_plan(timesteps: list[int], K: int, options: DDCMOptions = PLAIN) -> list[StepPlan]:
    """The noisy steps of a sampler over ``timesteps`` (descending; the last step adds no noise)."""
    plan, coded = [], 0
    for i, (t, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        eta = options.eta_at(t)
        is_coded = options.in_range(t) and eta > 0
        if is_coded and options.turbo > options.k_at(t, K):
            raise ValueError(f"DDCM options: turbo M = {options.turbo} atoms out of {options.k_at(t, K)} candidates at t = {t}")
        plan.append(StepPlan(i, t, t_prev, eta, options.k_at(t, K) if is_coded else None, options.score_at(t), coded if is_coded else None))
        coded += is_coded
    return plan


def mixing_levels(level_bits: int) -> list[float]:
    """``c_j = j / (2^CB - 1)`` for level codes ``j = 1 .. 2^CB - 1`` (index ``j - 1``)."""
    top = (1 << level_bits) - 1
    return [j / top for j in range(1, top + 1)]


# ---------------------------------------------------------------------- bits
def turbo_bits(K: int, M: int) -> int:
    """Bits of a Turbo-DDCM step: the M-subset of K as its combinatorial rank, ``ceil(log2 C(K, M))``, then M sign bits."""
    return (math.comb(K, M) - 1).bit_length() + M


def turbo_rank(indices) -> int:
    """The combinatorial-number-system rank ``sum_i C(c_i, i + 1)`` of a strictly increasing subset ``c_0 < c_1 < ...``."""
    return sum(math.comb(int(c), i + 1) for i, c in enumerate(indices))


def turbo_unrank(rank: int, K: int, M: int) -> list[int]:
    """The increasing M-subset of ``range(K)`` of a rank; ValueError when ``rank >= C(K, M)``."""
    if rank >= math.comb(K, M):
        raise ValueError(f"Turbo-DDCM subset rank {rank} outside the C({K}, {M}) subsets")
    out, top = [], K
    for i in range(M, 0, -1):
        c = top - 1
        while math.comb(c, i) > rank:
            c -= 1
        out.append(c)
        rank -= math.comb(c, i)
        top = c
    return out[::-1]


def code_widths(coded_K: list[int], options: DDCMOptions = PLAIN) -> np.ndarray:
    """``[coded_steps, 2P - 1]`` bit widths of the entries ``k_1, j_2, k_2, ...`` of one item's codes."""
    P = options.atoms
    widths = np.zeros((len(coded_K), 2 * P - 1), dtype=np.int64)
    for s, K in enumerate(coded_K):
        widths[s, 0::2] = int(math.log2(K))
        widths[s, 1::2] = options.level_bits
    return widths


def _written(codes: np.ndarray) -> np.ndarray:
    """Which entries of ``codes [..., 2P - 1]`` are written: all up to and including the first level code 0."""
    written = np.ones(codes.shape, dtype=bool)
    if codes.shape[-1] > 1:
        stopped = np.cumsum(codes[..., 1::2] == 0, axis=-1) > 0  # level code 0 at this slot or before
        # slot s (entries 2s-1, 2s): the level code is written unless a stop came before it;
        # the index is written unless this slot or one before stopped.
        before = np.concatenate([np.zeros_like(stopped[..., :1]), stopped[..., :-1]], axis=-1)
        written[..., 1::2] = ~before
        written[..., 2::2] = ~stopped
    return written


def bits_of_codes(codes: np.ndarray, coded_K: list[int], options: DDCMOptions = PLAIN) -> int:
    """Exact bits of one item's codes ``[coded_steps, 2P - 1]`` (or ``[coded_steps]`` for P = 1)."""
    if options.turbo:
        return max_bits_per_item(coded_K, options)
    codes = np.asarray(codes, dtype=np.int64).reshape(len(coded_K), 2 * options.atoms - 1)
    return int((code_widths(coded_K, options) * _written(codes)).sum())


def max_bits_per_item(coded_K: list[int], options: DDCMOptions = PLAIN) -> int:
    """Worst case (every atom kept): ``sum_s P log2 K_s + (P - 1) CB``; exact for P = 1 and for Turbo-DDCM."""
    if options.turbo:
        return sum(turbo_bits(K, options.turbo) for K in coded_K)
    return int(code_widths(coded_K, options).sum())


def pack_codes(items: list[np.ndarray], coded_K: list[int], options: DDCMOptions = PLAIN) -> bytes:
    """Items' codes ``[coded_steps(, 2P - 1)]`` one after the other, as the module docstring lays them out."""
    if options.turbo:
        return _pack_turbo(items, coded_K, options.turbo)
    widths = code_widths(coded_K, options).reshape(-1)
    values, sizes = [], []
    for codes in items:
        codes = np.asarray(codes, dtype=np.int64).reshape(len(coded_K), 2 * options.atoms - 1)
        if codes.size and (codes.min() < 0 or (codes.reshape(-1) >= (1 << widths)).any()):
            raise ValueError("DDCM codes out of range for their bit widths")
        written = _written(codes).reshape(-1)
        values.append(codes.reshape(-1)[written])
        sizes.append(widths[written])
    values = np.concatenate(values) if values else np.zeros(0, np.int64)
    sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    top = int(sizes.max()) if sizes.size else 1
    shifts = np.arange(top - 1, -1, -1, dtype=np.int64)
    bits = ((values[:, None] >> shifts) & 1)[shifts[None, :] < sizes[:, None]]  # each entry's low bits, MSB first
    return np.packbits(bits.astype(np.uint8)).tobytes()


def unpack_codes(data: bytes, items: int, coded_K: list[int], options: DDCMOptions = PLAIN) -> np.ndarray:
    """``[items, coded_steps, 2P - 1]`` codes from a payload; ValueError if it is not exactly that long."""
    if options.turbo:
        return _unpack_turbo(data, items, coded_K, options.turbo)
    P, CB = options.atoms, options.level_bits
    fewest = sum(int(math.log2(K)) + (CB if P > 1 else 0) for K in coded_K)  # every step: its first atom, then a stop
    if items * fewest > 8 * len(data):
        # Checked before anything is allocated: a header may declare far more items than its payload holds.
        raise ValueError(f"payload of {len(data)} bytes; {items} item(s) need at least {math.ceil(items * fewest / 8)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
    out = np.zeros((items, len(coded_K), 2 * P - 1), dtype=np.int64)
    if P == 1:  # fixed widths: one vectorised read
        widths = code_widths(coded_K, options).reshape(-1)
        needed = items * int(widths.sum())
        if math.ceil(needed / 8) != len(data) or bits[needed:].any():
            raise ValueError(f"payload of {len(data)} bytes; {items} item(s) of {int(widths.sum())} bits need {math.ceil(needed / 8)}")
        starts = np.concatenate([[0], np.cumsum(np.tile(widths, items))[:-1]])
        top = int(widths.max()) if widths.size else 1
        offsets = np.arange(top, dtype=np.int64)
        tiled = np.tile(widths, items)
        take = np.minimum(starts[:, None] + offsets, max(needed - 1, 0))
        mask = offsets[None, :] < tiled[:, None]
        weights = np.where(mask, 1 << np.maximum(tiled[:, None] - 1 - offsets, 0), 0)
        values = (bits[take] * weights).sum(axis=1) if needed else np.zeros(0, np.int64)
        return values.reshape(items, len(coded_K), 1)
    position = 0

    def read(width: int) -> int:
        nonlocal position
        if position + width > len(bits):
            raise ValueError(f"payload of {len(data)} bytes ends inside the DDCM codes")
        value = 0
        for bit in bits[position : position + width]:
            value = (value << 1) | int(bit)
        position += width
        return value

    for item in range(items):
        for s, K in enumerate(coded_K):
            index_bits = int(math.log2(K))
            out[item, s, 0] = read(index_bits)
            for slot in range(1, P):
                level = read(CB)
                out[item, s, 2 * slot - 1] = level
                if level == 0:
                    break
                out[item, s, 2 * slot] = read(index_bits)
    if math.ceil(position / 8) != len(data) or bits[position:].any():
        raise ValueError(f"payload of {len(data)} bytes; the DDCM codes it holds take {math.ceil(position / 8)}")
    return out


def _pack_turbo(items: list[np.ndarray], coded_K: list[int], M: int) -> bytes:
    """Per coded step the integer ``rank(subset) * 2^M + signs`` (sign bit i: atom i of the subset is
    negated) in ``turbo_bits(K_s, M)`` bits, MSB first."""
    text = []
    for codes in items:
        codes = np.asarray(codes, dtype=np.int64).reshape(len(coded_K), 2 * M)
        for K, step in zip(coded_K, codes):
            indices, signs = step[:M], step[M:]
            if (np.diff(indices) <= 0).any() or indices.min() < 0 or indices.max() >= K or not np.isin(signs, (0, 1)).all():
                raise ValueError("Turbo-DDCM codes need increasing indices in [0, K) and sign bits")
            value = (turbo_rank(indices) << M) | int("".join(map(str, signs)) or "0", 2)
            text.append(format(value, f"0{turbo_bits(K, M)}b"))
    bits = np.frombuffer("".join(text).encode(), dtype=np.uint8) - ord("0")
    return np.packbits(bits).tobytes()


def _unpack_turbo(data: bytes, items: int, coded_K: list[int], M: int) -> np.ndarray:
    needed = items * sum(turbo_bits(K, M) for K in coded_K)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if math.ceil(needed / 8) != len(data) or bits[needed:].any():
        raise ValueError(f"payload of {len(data)} bytes; the Turbo-DDCM codes it holds take {math.ceil(needed / 8)}")
    text = "".join(map(str, bits[:needed].tolist()))
    out = np.zeros((items, len(coded_K), 2 * M), dtype=np.int64)
    position = 0
    for item in range(items):
        for s, K in enumerate(coded_K):
            width = turbo_bits(K, M)
            value = int(text[position : position + width] or "0", 2)
            position += width
            out[item, s, :M] = turbo_unrank(value >> M, K, M)
            out[item, s, M:] = [(value >> (M - 1 - i)) & 1 for i in range(M)]
    return out


# ---------------------------------------------------------------------- command-line flags
def _off(kind):
    """A value of ``kind``, or ``off`` for None (a late option switched off)."""

    def parse(text: str):
        return None if text.strip().lower() in ("off", "none") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _t_range(text: str):
    if text.strip().lower() in ("all", "none"):
        return None
    t0, sep, t1 = text.partition(":")
    if not sep:
        raise ValueError(f"a coded range is T0:T1 or all, got {text!r}")
    return int(t0), int(t1)


def _score(text: str) -> str:
    if text not in SCORE_MODES:
        raise ValueError(f"score mode {text!r} is not one of {', '.join(SCORE_MODES)}")
    return text


_t_range.__name__, _score.__name__ = "T0:T1", "mode"

# option -> (flag, value parser, metavar, help, sweep-column tag)
FLAGS: dict[str, tuple[str, object, str, str, str]] = {
    "atoms": ("--ddcm-atoms", int, "P", "noise mixing: atoms per coded step; each further atom costs CB + log2 K bits when kept, "
              "CB when the step's atoms end there (1: plain DDCM)", "P"),
    "level_bits": ("--ddcm-level-bits", int, "CB", "bits of a mixing level c = j / (2^CB - 1), j = 1 .. 2^CB - 1 (with P > 1)", "CB"),
    "t_range": ("--ddcm-t-range", _t_range, "T0:T1", "code only the steps with T0 >= t >= T1; the others take codebook row 0 "
                "and cost no bits ('all': every step)", "t"),
    "eta": ("--ddcm-eta", float, "E", "DDIM eta: each step adds eta·sqrt(Var_DDIM(t)) times its noise (1: DDPM, plain DDCM)", "eta"),
    "eta_late": ("--ddcm-eta-late", _off(float), "E", "eta at t <= --ddcm-eta-switch ('off': none); a step at eta 0 codes nothing", "etaL"),
    "eta_switch": ("--ddcm-eta-switch", _off(int), "T", "timestep at and below which --ddcm-eta-late applies", "etaS"),
    "score": ("--ddcm-score", _score, "MODE", "how candidates are scored against x0 - x0_hat: dot, cosine, or blend = "
              "z(dot) + lambda·z(cosine) with z-scores across the step's K candidates", "S"),
    "blend_lambda": ("--ddcm-blend-lambda", float, "L", "lambda of the blend score", "lam"),
    "score_late": ("--ddcm-score-late", _off(_score), "MODE", "score mode at t <= --ddcm-score-switch ('off': none)", "SL"),
    "score_switch": ("--ddcm-score-switch", _off(int), "T", "timestep at and below which --ddcm-score-late applies", "SS"),
    "k_late": ("--ddcm-k-late", _off(int), "K", "candidates per step at t <= --ddcm-k-switch, a power of two ('off': none)", "KL"),
    "k_switch": ("--ddcm-k-switch", _off(int), "T", "timestep at and below which --ddcm-k-late applies", "KS"),
    "rerank": ("--ddcm-rerank", int, "N", "re-rank the N best candidates by the decoded log-mel error one step ahead "
               "(N VAE decodes and UNet passes per re-ranked step; encoder only, no bits; 0: off)", "RK"),
    "rerank_every": ("--ddcm-rerank-every", int, "N", "re-rank at every N-th coded step", "RE"),
    "turbo": ("--ddcm-turbo", int, "M", "Turbo-DDCM: each coded step adds M atoms chosen in closed form (the M largest |<C_k, r>|, "
              "signs +-1, renormalised), ceil(log2 C(K, M)) + M bits per step; use far fewer steps (0: off)", "M"),
}


def format_value(value, name: str = "") -> str:
    """A sweep column's rendering of an option value (``t_range`` as ``T0_T1`` or ``all``, None as ``off``)."""
    if value is None:
        return "all" if name == "t_range" else "off"
    if isinstance(value, tuple):
        return "_".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(group, defaults: DDCMOptions = PLAIN, many: bool = False, list_type=None) -> None:
    """One flag per option on an argparse group; ``many``: comma-separated lists (a sweep), via ``list_type``."""
    for name, (flag, parse, metavar, help_text, _) in FLAGS.items():
        default = getattr(defaults, name)
        shown = format_value(default, name)
        if many:
            group.add_argument(flag, type=list_type(parse), default=[default], metavar=f"{metavar}[,{metavar}...]",
                               help=f"{help_text}; several values give one ddcm_noise column each (default: {shown})")
        else:
            group.add_argument(flag, type=_argparse_type(parse), default=default, metavar=metavar, help=f"{help_text} (default: {shown})")


def _argparse_type(parse):
    import argparse

    def run(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    run.__name__ = parse.__name__
    return run
