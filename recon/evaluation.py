"""The report's evaluation view: rate against distortion with the Pareto front, and the hardest files.

Rate-distortion points
----------------------
Every variant (every sweep column: ``ddcm_noise@T50-K1024`` is its own variant) that is a codec is
one point per distortion metric: x = its bits per second, *measured* from the files it wrote
(``measured_bps`` of summary.json: bytes x 8 / seconds, headers included) where it wrote some, else
its nominal rate (``bitrate_bps``), marked as such; y = the mean of the metric over its files.
Variants without a bitrate (no bitstream: the VAE, the vocoder, soft codes) and those that are not
reconstructions are left out, by name. A point is on the **Pareto front** when no other point has a
rate at most its own and a distortion at least as good, one of the two strictly better.

Failure tags of the hardest files
---------------------------------
Per variant, its files with the largest ``mel_db_mae`` (``log_mel_db`` where that column is absent)
are listed with tags, each a rule on that file's row of metrics.csv (the triage of the public
DDCM-on-AudioLDM2 workflow, with its thresholds):

* ``envelope drift`` (transients, level swings): ``envelope_rms_l1 > 0.02``;
* ``high-band loss``: ``mel_db_mae_high > 1.25 * mel_db_mae_low`` (the error sits above 0.9 kHz);
* ``low-band loss``: ``mel_db_mae_low > 1.25 * mel_db_mae_high``;
* ``broadband``: neither band rule holds (both bands measured);
* ``mel vs STFT`` (the two measures disagree about the file): with ``n >= 4`` files of the variant,
  rank them by ``mel_db_mae`` and by ``stft_mag_mse`` (0 best ... n - 1 worst); the file is tagged
  when ``|rank_mel - rank_stft| >= 0.5 (n - 1)``, i.e. it is among the worst by one measure and
  among the best by the other.

A rule whose metrics are missing (or NaN) in the row gives no tag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ENVELOPE_DRIFT = 0.02  # envelope_rms_l1, waveform units on references peak-normalised to 0.5
BAND_RATIO = 1.25  # one band's mel_db_mae over the other's
DISAGREEMENT = 0.5  # rank difference as a fraction of (files - 1)
MIN_FILES_FOR_RANKS = 4

# Distortions the rate view plots when the run has them, with their direction.
RATE_DISTORTION_METRICS = (("log_mel_db", "lower"), ("mel_db_mae", "lower"), ("visqol_audio", "higher"))

TAG_RULES = {
    "envelope drift": f"envelope_rms_l1 > {ENVELOPE_DRIFT:g} (transients smeared, level drifting)",
    "high-band loss": f"mel_db_mae_high > {BAND_RATIO:g} x mel_db_mae_low (the error sits above 0.9 kHz)",
    "low-band loss": f"mel_db_mae_low > {BAND_RATIO:g} x mel_db_mae_high (the error sits below 0.9 kHz)",
    "broadband": "neither band rule holds",
    "mel vs STFT": (
        f"with n >= {MIN_FILES_FOR_RANKS} files: the file's rank by mel_db_mae and by stft_mag_mse differ by "
        f">= {DISAGREEMENT:g} (n - 1): worst by one measure, among the best by the other"
    ),
}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------------
# rate against distortion


@dataclass(frozen=True)
class RatePoint:
    variant: str
    bps: float
    measured: bool  # from the written files; False: the nominal rate
    value: float


def rate_points(summary: dict, metric: str) -> tuple[list[RatePoint], dict[str, str]]:
    """``(points, left_out)``: one point per codec variant with a mean ``metric``; ``left_out`` maps
    every other variant to why it is not a point."""
    points, left_out = [], {}
    for name, info in (summary.get("variants") or {}).items():
        if info.get("is_reconstruction") is False:
            left_out[name] = "not a reconstruction"
            continue
        measured = info.get("measured_bps")
        bps = measured if _finite(measured) else info.get("bitrate_bps")
        if not _finite(bps) or bps <= 0:
            left_out[name] = "no bitrate (not a codec)"
            continue
        value = (info.get("mean") or {}).get(metric)
        if not _finite(value):
            left_out[name] = f"no {metric}"
            continue
        points.append(RatePoint(name, float(bps), _finite(measured), float(value)))
    return points, left_out


def pareto_front(points: Sequence[RatePoint], better: str = "lower") -> set[str]:
    """Variants of the points that no other point dominates (rate at most, distortion at least as
    good, one strictly); ``better`` is the distortion's direction, ``"lower"`` or ``"higher"``."""
    sign = 1.0 if better == "lower" else -1.0

    def dominates(q: RatePoint, p: RatePoint) -> bool:
        qv, pv = sign * q.value, sign * p.value
        return q.bps <= p.bps and qv <= pv and (q.bps < p.bps or qv < pv)

    return {p.variant for p in points if not any(dominates(q, p) for q in points if q is not p)}


@dataclass
class RateDistortion:
    """The rate view of a run: for each distortion it has (``metrics``: name, direction), every codec
    variant's point, the Pareto front, and why the other variants are not points."""

    metrics: list[tuple[str, str]]
    points: dict[str, dict[str, RatePoint]]  # variant -> metric -> point
    fronts: dict[str, set[str]]  # metric -> variants on its front
    left_out: dict[str, str]  # variant -> why it has no point at all


def rate_distortion(summary: dict) -> RateDistortion:
    """:func:`rate_points` and :func:`pareto_front` for every metric of :data:`RATE_DISTORTION_METRICS`
    that some variant of ``summary`` has a mean of."""
    present = {m for d in (summary.get("variants") or {}).values() for m in (d.get("mean") or {})}
    metrics = [(m, better) for m, better in RATE_DISTORTION_METRICS if m in present]
    points: dict[str, dict[str, RatePoint]] = {}
    fronts, skipped = {}, {}
    for metric, better in metrics:
        mine, why = rate_points(summary, metric)
        fronts[metric] = pareto_front(mine, better)
        skipped.update(why)
        for p in mine:
            points.setdefault(p.variant, {})[metric] = p
    return RateDistortion(metrics, points, fronts, {v: why for v, why in skipped.items() if v not in points})


# --------------------------------------------------------------------------------------------------
# the hardest files and what goes wrong in them


def _ranks(rows: Sequence[dict], metric: str) -> dict[str, float] | None:
    """``file -> rank / (n - 1)`` by ``metric`` (0 best = lowest), or None when a row lacks it."""
    values = [(r.get(metric), r["file"]) for r in rows]
    if len(values) < MIN_FILES_FOR_RANKS or not all(_finite(v) for v, _ in values):
        return None
    order = sorted(values, key=lambda vf: vf[0])
    return {file: i / (len(order) - 1) for i, (_, file) in enumerate(order)}


def failure_tags(row: dict, variant_rows: Sequence[dict] = ()) -> list[str]:
    """The tags of one metrics.csv row (rules in the module docstring); ``variant_rows`` are all the
    rows of its variant, which the ``mel vs STFT`` rule ranks it among."""
    tags = []
    if _finite(row.get("envelope_rms_l1")) and row["envelope_rms_l1"] > ENVELOPE_DRIFT:
        tags.append("envelope drift")
    low, high = row.get("mel_db_mae_low"), row.get("mel_db_mae_high")
    if _finite(low) and _finite(high):
        if high > BAND_RATIO * low:
            tags.append("high-band loss")
        elif low > BAND_RATIO * high:
            tags.append("low-band loss")
        else:
            tags.append("broadband")
    by_mel, by_stft = _ranks(variant_rows, "mel_db_mae"), _ranks(variant_rows, "stft_mag_mse")
    if by_mel is not None and by_stft is not None and row.get("file") in by_mel:
        if abs(by_mel[row["file"]] - by_stft[row["file"]]) >= DISAGREEMENT:
            tags.append("mel vs STFT")
    return tags


def hardest_files(rows: Sequence[dict], variant: str, count: int = 3) -> tuple[str, list[tuple[dict, list[str]]]]:
    """``(metric, [(row, tags), ...])``: the ``count`` rows of ``variant`` with the largest
    ``mel_db_mae`` (``log_mel_db`` when no row has it), worst first, with their tags."""
    mine = [r for r in rows if r.get("variant") == variant]
    metric = "mel_db_mae" if any(_finite(r.get("mel_db_mae")) for r in mine) else "log_mel_db"
    scored = sorted((r for r in mine if _finite(r.get(metric))), key=lambda r: r[metric], reverse=True)
    return metric, [(r, failure_tags(r, mine)) for r in scored[:count]]


__all__ = [
    "RATE_DISTORTION_METRICS",
    "RateDistortion",
    "TAG_RULES",
    "RatePoint",
    "failure_tags",
    "hardest_files",
    "pareto_front",
    "rate_distortion",
    "rate_points",
]
