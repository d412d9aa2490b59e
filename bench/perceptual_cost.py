"""Seconds per 10.24 s clip of each perceptual metric (PESQ, STOI, ViSQOL audio and speech mode).

    python bench/perceptual_cost.py            # 3 repeats after one warm-up call per metric

A speech clip of examples/audio, repeated to 10.24 s and peak-normalised to 0.5, against an Opus
12 kb/s copy of itself (a realistic degraded estimate). Each metric is timed through
``recon.metrics.perceptual_details``, the call the result writer's workers make, after a warm-up
call (the first ViSQOL call of a process loads its models and Numba kernels: ``first_call_s``).
Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon import metrics as M  # noqa: E402
from recon.variants import opus_roundtrip  # noqa: E402

CLIP = ROOT / "examples" / "audio" / "speech" / "voice_2.flac"
SAMPLES = 163840  # 10.24 s at 16 kHz


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    wav, rate = sf.read(str(CLIP), dtype="float32")
    assert rate == M.SAMPLE_RATE
    reference = np.tile(wav, SAMPLES // wav.size + 1)[:SAMPLES]
    reference = 0.5 * reference / np.abs(reference).max()
    estimate, _ = opus_roundtrip(reference, 12)
    rows = {}
    for name in M.PERCEPTUAL_METRICS:
        t0 = time.perf_counter()
        value, why = M.perceptual_details(reference, estimate, [name])[name]
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            M.perceptual_details(reference, estimate, [name])
            times.append(time.perf_counter() - t0)
        rows[name] = {"value": value, "reason": why, "first_call_s": round(first, 3), "median_s": round(statistics.median(times), 3)}
    print(f"{'metric':14s} {'value':>6s} {'s / 10.24 s clip':>17s} {'first call s':>13s}")
    for name, r in rows.items():
        print(f"{name:14s} {r['value']:6.2f} {r['median_s']:17.2f} {r['first_call_s']:13.2f}")
    print(json.dumps({"bench": "perceptual_cost", "clip": CLIP.relative_to(ROOT).as_posix(), "seconds_audio": SAMPLES / M.SAMPLE_RATE,
                      "repeats": args.repeats, "cpu_count": os.cpu_count(), "numba_threads": _numba_threads(),
                      "loadavg_1m": os.getloadavg()[0], "metrics": rows}))


def _numba_threads() -> int | None:
    try:
        import numba
    except ImportError:
        return None
    return numba.get_num_threads()


if __name__ == "__main__":
    main()
