"""Summary: metrics.csv, errors.csv and summary.json from every file's rows.

summary.json holds, per variant, the mean and median of every metric column over the files that
have it (NaN and missing values left out), seconds per clip = compute seconds / files, real-time
factor = audio seconds / compute seconds, and the measured bitrate = written bits / audio seconds.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from . import files
from .records import ERROR_COLUMNS, METRIC_COLUMNS, ROW_COLUMNS, RunInfo


def bitrate_label(bps: float | None, is_reconstruction: bool = True) -> str:
    if not is_reconstruction:
        return "n/a (not a reconstruction)"
    if bps is None:
        return "n/a (not a bitstream)"
    return f"{bps / 1000:.1f} kbps" if bps >= 1000 else f"{bps:.1f} bps"


def summarise(rows: list[dict], info: RunInfo) -> dict:
    variants = {}
    for variant in info.variants:
        mine = [r for r in rows if r["variant"] == variant.name]
        stats = {"mean": {}, "median": {}}
        for column in METRIC_COLUMNS:
            values = [r[column] for r in mine if r.get(column) is not None and not math.isnan(r[column])]
            if values:
                stats["mean"][column] = statistics.fmean(values)
                stats["median"][column] = statistics.median(values)
        audio_seconds = sum(r["duration_s"] for r in mine)
        compute_seconds = sum(r["seconds"] for r in mine)
        bps = variant.bitrate(info.variant_settings)
        coded = [r for r in mine if r.get("measured_bps") is not None]
        coded_seconds = sum(r["duration_s"] for r in coded)
        variants[variant.name] = {
            "description": variant.description,
            "is_reconstruction": variant.is_reconstruction,
            "bitrate_bps": bps,
            "bitrate_label": bitrate_label(bps, variant.is_reconstruction),
            # Every written file's bits over all their audio: headers and padding included.
            "measured_bps": sum(r["measured_bps"] * r["duration_s"] for r in coded) / coded_seconds if coded_seconds > 0 else None,
            "files": len(mine),
            "seconds_per_clip": compute_seconds / len(mine) if mine else None,
            "real_time_factor": audio_seconds / compute_seconds if compute_seconds > 0 else None,
            **stats,
        }
    return {"variants": variants, "run": info.settings}


def finalize(out: Path, info: RunInfo, rows: list[dict], errors: list[dict], timing: dict | None = None) -> dict:
    """Write metrics.csv, errors.csv and summary.json from every rank's rows (global rank 0 only)."""
    order = [v.name for v in info.variants]
    rows = sorted(rows, key=lambda r: (r["file"], order.index(r["variant"])))
    errors = sorted(errors, key=lambda e: (e["file"], order.index(e["variant"]) if e["variant"] in order else -1))
    files.write_csv(out / "metrics.csv", ROW_COLUMNS, rows)
    files.write_csv(out / "errors.csv", ERROR_COLUMNS, errors)
    summary = summarise(rows, info)
    summary["errors"] = len(errors)
    if timing is not None:
        summary["timing"] = timing
    files.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
