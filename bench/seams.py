"""Seams between 10.24 s windows: where they rank in excess spectral flux, and what the overlap costs.

    python bench/seams.py                                  # small backbone + demo codebook, overlaps 0, 0.16, 0.32
    python bench/seams.py --overlaps 0,0.32,0.64 --seconds 90

A long input is built from real audio: the clips of ``examples/audio`` concatenated (then again
from the start) up to ``--seconds``. It runs through ``VariantRunner`` (the ``infer.py`` pipeline:
windows, variants, crossfaded stitching, bitstreams) for ``vae_mode`` and ``codebook_hard`` at
each overlap. Definitions, per 10 ms frame ``t`` of the front-end's log-mel ``L`` (64 bins):

* spectral flux ``F(t) = sum_m |L[t, m] - L[t - 1, m]|``;
* excess flux ``E(t) = F_out(t) - F_in(t)``: what the reconstruction adds over the input's own
  changes (clip boundaries in the input cancel);
* a seam's score: the largest ``E`` within +-3 frames (the STFT window's half-length) of its
  centre (the boundary at overlap 0, the middle of the crossfade otherwise); its rank: the
  fraction of all frames with a larger ``E``. Target: no seam in the top 1 % (rank >= 0.01).
  ``whole_overlap_rank`` takes the largest ``E`` over the whole crossfade instead (+-3 frames).
  For scale, ``chance_*``: the median rank and the top-1 % fraction of a 7-frame neighbourhood
  at every position of the file (a seam that leaves no trace ranks like that), and
  ``control_ranks``: the same frames ranked in another overlap's output (where no seam lies, or
  another one), to tell the content's own flux from the join's.
* bits: the ``codebook_hard`` file's bytes x 8 / duration (range-coded, header included), and the
  overhead against overlap 0 on this file; on a long file the overhead tends to
  ``overlap / (segment - overlap)``.
* overlap correlation: Pearson correlation of the outgoing and incoming windows' outputs over each
  overlap (mean over seams). Near 1 the two are coherent, so a linear crossfade keeps the level
  (mid-point power gain ``10 log10((1 + rho) / 2)`` dB) where an equal-power one would add
  ``10 log10(1 + rho)`` dB; both gains are reported.
Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recon.predict as predict  # noqa: E402
from recon.audio import MelFrontEnd, load_audio, normalise, overlap_samples  # noqa: E402
from recon.lit import load_inference_codebook  # noqa: E402
from recon.predict import VariantRunner  # noqa: E402
from recon.variants import VARIANTS, Models, VariantSettings  # noqa: E402

CLIPS = sorted((ROOT / "examples" / "audio").rglob("*.flac"))
NEIGHBOURHOOD = 3  # frames either side of a seam: half the 1024-sample STFT window is 3.2 frames


def long_input(seconds: float, spec) -> torch.Tensor:
    """The example clips, each peak-normalised, concatenated (cycling) to ``seconds``."""
    clips = [normalise(load_audio(path, spec)) for path in CLIPS]
    need, parts, i = int(seconds * spec.sample_rate), [], 0
    while sum(p.numel() for p in parts) < need:
        parts.append(clips[i % len(clips)])
        i += 1
    return torch.cat(parts)[:need]


def flux(frontend: MelFrontEnd, wav: torch.Tensor) -> np.ndarray:
    """``F(t)`` for t >= 1 (index t - 1), from the project's log-mel."""
    logmel = frontend(wav[None].float())[0, 0]
    return (logmel[1:] - logmel[:-1]).abs().sum(-1).numpy()


def seam_centres(num_samples: int, segment: int, overlap: int) -> list[tuple[int, int]]:
    """(first, last) sample of each seam: the boundary (overlap 0) or the crossfade."""
    hop, seams, k = segment - overlap, [], 1
    while (k - 1) * hop + segment < num_samples:
        seams.append((k * hop, k * hop + max(overlap, 1) - 1))
        k += 1
    return seams


def rank_of(excess: np.ndarray, lo: int, hi: int) -> float:
    """Fraction of frames whose excess flux exceeds the largest one in frames [lo, hi]."""
    lo, hi = max(lo, 0), min(hi, len(excess) - 1)
    return float((excess > excess[lo : hi + 1].max()).mean())


def chance(excess: np.ndarray, width: int) -> tuple[float, float]:
    """Over every position of a ``width``-frame neighbourhood: the median of its rank (as
    :func:`rank_of`) and the fraction in the top 1 %, what a seam placed at random would score."""
    sorted_excess = np.sort(excess)
    peaks = np.lib.stride_tricks.sliding_window_view(excess, width).max(-1)
    ranks = 1 - np.searchsorted(sorted_excess, peaks, side="right") / len(excess)
    return float(np.median(ranks)), float((ranks < 0.01).mean())


def run(models: Models, wav: torch.Tensor, overlap_s: float) -> dict:
    spec = models.backbone.spec
    overlap = overlap_samples(overlap_s, spec)
    settings = VariantSettings(overlap=overlap, codebook_bits=models.quantizer.bits_per_index)
    runner = VariantRunner(models, [VARIANTS["vae_mode"], VARIANTS["codebook_hard"]], settings, segment_batch=2)
    joined: dict[str, list] = {}
    real_join = predict.crossfade_join

    def recording_join(parts, ov, length):  # the windows' own outputs, to measure the overlaps' coherence
        joined.setdefault("parts", []).append([p.clone() for p in parts])
        return real_join(parts, ov, length)

    predict.crossfade_join = recording_join
    try:
        t0 = time.perf_counter()
        (result,) = runner._predict([{"index": 0, "relpath": "long.wav", "wav": wav, "error": None, "level": 1.0}])
        seconds = time.perf_counter() - t0
    finally:
        predict.crossfade_join = real_join
    reference = flux(models.frontend, wav)
    duration = wav.numel() / spec.sample_rate
    seams = seam_centres(wav.numel(), spec.num_samples, overlap)
    out = {"overlap_s": overlap_s, "overlap_samples": overlap, "windows": len(joined["parts"][0]), "seconds": round(seconds, 1), "variants": {}}
    for entry, parts in zip(result.variants, joined["parts"]):
        if entry.error:
            raise RuntimeError(f"{entry.variant}: {entry.error}")
        excess = flux(models.frontend, torch.from_numpy(entry.wav)) - reference
        hop = spec.hop_length
        centre = [rank_of(excess, (a + b) // 2 // hop - 1 - NEIGHBOURHOOD, (a + b) // 2 // hop - 1 + NEIGHBOURHOOD) for a, b in seams]
        whole = [rank_of(excess, a // hop - 1 - NEIGHBOURHOOD, b // hop - 1 + NEIGHBOURHOOD) for a, b in seams]
        row = {
            "_excess": excess, "_centres": [(a + b) // 2 // hop - 1 for a, b in seams],
            "seam_ranks": [round(r, 4) for r in centre],
            "seams_in_top_1pct": sum(r < 0.01 for r in centre),
            "whole_overlap_ranks": [round(r, 4) for r in whole],
            "whole_overlap_in_top_1pct": sum(r < 0.01 for r in whole),
            "seam_rank_median": round(float(np.median(centre)), 4),
        }
        row["chance_rank_median"], row["chance_in_top_1pct"] = (round(v, 4) for v in chance(excess, 2 * NEIGHBOURHOOD + 1))
        row.update({
            "log_mel_db": entry.metrics.get("log_mel_db") if entry.metrics else None,
        })
        if overlap:
            seg = spec.num_samples
            rho = [float(np.corrcoef(a[seg - overlap :].numpy(), b[:overlap].numpy())[0, 1]) for a, b in zip(parts[:-1], parts[1:])]
            mean_rho = float(np.mean(rho))
            row.update(overlap_correlation=round(mean_rho, 4), linear_midpoint_gain_db=round(10 * np.log10((1 + mean_rho) / 2), 3),
                       equal_power_midpoint_gain_db=round(10 * np.log10(1 + mean_rho), 3))
        if entry.bitstream is not None:
            row["file_bps"] = round(len(entry.bitstream) * 8 / duration, 1)
        out["variants"][entry.variant] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=str(ROOT / "checkpoints" / "demo" / "codebook-small.ckpt"))
    p.add_argument("--seconds", type=float, default=60.0, help="length of the long input (default: %(default)s)")
    p.add_argument("--overlaps", default="0,0.16,0.32", help="comma-separated overlaps in seconds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    backbone, quantizer = load_inference_codebook(args.ckpt)
    models = Models(backbone, MelFrontEnd(backbone.spec), quantizer)
    wav = long_input(args.seconds, backbone.spec)
    runs = []
    with torch.no_grad():
        for text in args.overlaps.split(","):
            runs.append(run(models, wav, float(text)))
            r = runs[-1]
            for name, row in r["variants"].items():
                print(f"overlap {r['overlap_s']:.2f} s  {name:14s} seams in top 1 %: {row['seams_in_top_1pct']}/{len(row['seam_ranks'])}  "
                      f"ranks {row['seam_ranks']} (median {row['seam_rank_median']}, chance {row['chance_rank_median']})  bps {row.get('file_bps', '-')}  rho {row.get('overlap_correlation', '-')}", flush=True)
    # Control: the same frames in another overlap's output, where (mostly) no seam lies: a seam that
    # ranks high there too is ranking the content, not the join.
    for r in runs:
        other = next((o for o in runs if o is not r), None)
        for name, row in r["variants"].items():
            if other is not None:
                excess = other["variants"][name]["_excess"]
                row["control_ranks"] = [round(rank_of(excess, c - NEIGHBOURHOOD, c + NEIGHBOURHOOD), 4) for c in row["_centres"]]
                row["control_overlap_s"] = other["overlap_s"]
    for r in runs:
        for row in r["variants"].values():
            row.pop("_centres")
        for row in r["variants"].values():
            row.pop("_excess")
    base = next((r for r in runs if r["overlap_s"] == 0), None)
    if base is not None and "file_bps" in base["variants"]["codebook_hard"]:
        for r in runs:
            bps = r["variants"]["codebook_hard"]["file_bps"]
            r["codebook_hard_bits_overhead"] = round(bps / base["variants"]["codebook_hard"]["file_bps"] - 1, 4)
            # On a long file every hop of segment - overlap samples costs a whole segment's codes.
            r["codebook_hard_bits_overhead_long_file"] = round(r["overlap_samples"] / (backbone.spec.num_samples - r["overlap_samples"]), 4)
    print(json.dumps({"input_seconds": args.seconds, "clips": [c.relative_to(ROOT).as_posix() for c in CLIPS], "ckpt": args.ckpt,
                      "backbone": backbone.source, "target": "no seam with rank < 0.01", "runs": runs,
                      "threads": args.threads, "loadavg_1m": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
