"""What each DDCM option buys, at equal bits, on a unit Gaussian source with its exact denoiser.

    python bench/ddcm_options.py [--dim 2048] [--clips 4] [--K 64] [--budgets 0.25,0.5] [--threads 2]

Source: ``--clips`` vectors x0 ~ N(0, I_dim), coded by the real codec (``recon.ddcm.compress``, the
options of ``recon.ddcm_options``, codebooks from the seed) with the exact MMSE denoiser
(``recon.ddcm.AnalyticGaussianDenoiser``) on AudioLDM2's DDIM schedule (``schedule_for`` of
``ddcm_rate_distortion.py``). Every configuration is run at the same bit budgets (``--budgets``,
bits per dimension): its step count is the one whose worst-case bits meet the budget, and for
noise mixing (P > 1), whose atoms are not all kept, it is scaled once more so that the *measured*
bits meet it. Columns:

* ``bits/dim``: measured bits of the codes (recon.ddcm_options.bits_of_codes) per dimension;
* ``SNR``: 10 log10(|x0|^2 / |x0 - x0_hat|^2) over all clips, dB;
* ``realism``: the perfect-realism bound at the measured rate (Blau & Michaeli 2019):
  D = 2 (1 - sqrt(1 - 2^(-2R/d))) per dimension; ``gap`` = realism - SNR (smaller is better);
* ``RD``: the classic Gaussian rate-distortion SNR, 6.02 R/d dB (reachable only by giving up realism);
* ``out_var``: mean square of the output, 1 for an exact source sample. Below 1 the sampler trades
  realism for MSE (as a lower eta does) and may pass the realism bound;
* ``s``: seconds to encode all clips.

Writes ``--json`` and ``--plot`` (SNR against bits/dim with both bounds), prints the table, then one
JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddcm_rate_distortion import rd_snr_db, realism_snr_db, schedule_for, snr_db  # noqa: E402
from recon.ddcm import AnalyticGaussianDenoiser, coded_sizes, compress, decompress  # noqa: E402
from recon.ddcm_options import PLAIN, DDCMOptions, bits_of_codes, max_bits_per_item  # noqa: E402

PRESET = dict(atoms=2, level_bits=4, score="blend", blend_lambda=0.5, eta=1.0, eta_late=0.35, eta_switch=200)


def configurations(K: int) -> list[tuple[str, str, DDCMOptions | None, int]]:
    """(family, name, options, K): plain DDCM and one option changed at a time, the batch preset, Turbo-DDCM."""
    rows = [("plain", "plain P1", PLAIN)]
    rows += [("mixing", f"P2 CB{cb}", DDCMOptions(atoms=2, level_bits=cb)) for cb in (2, 3, 4, 5, 6)]
    rows += [("mixing", f"P4 CB{cb}", DDCMOptions(atoms=4, level_bits=cb)) for cb in (2, 4, 6)]
    rows += [("eta", "eta 1->0.35 @t<=200", DDCMOptions(eta_late=0.35, eta_switch=200)),
             ("eta", "eta 1->0.5 @t<=200", DDCMOptions(eta_late=0.5, eta_switch=200)),
             ("eta", "eta 1->0.35 @t<=500", DDCMOptions(eta_late=0.35, eta_switch=500)),
             ("eta", "eta 0.9", DDCMOptions(eta=0.9)),
             ("eta", "eta 0.8", DDCMOptions(eta=0.8)),
             ("eta", "eta 0.7", DDCMOptions(eta=0.7)),
             ("eta", "eta 0.6", DDCMOptions(eta=0.6))]
    rows += [("score", "cosine", DDCMOptions(score="cosine")),
             ("score", "blend 0.5", DDCMOptions(score="blend", blend_lambda=0.5)),
             ("score", "blend 0.5, dot @t<=200", DDCMOptions(score="blend", score_late="dot", score_switch=200))]
    rows += [("late K", "K/4 @t<=200", None), ("late K", "K/8 @t<=400", None)]
    rows += [("range", "t 999..100", DDCMOptions(t_range=(999, 100)))]
    rows += [("rerank", "rerank top-4", DDCMOptions(rerank=4))]
    rows += [("preset", "preset P2 CB4 blend eta->0.35", DDCMOptions(**PRESET))]
    rows = [(family, name, options, K) for family, name, options in rows]
    # Turbo-DDCM: many atoms per step from a larger codebook, far fewer steps.
    rows += [("turbo", f"turbo M{m} K{k}", DDCMOptions(turbo=m), k) for m, k in ((8, 256), (16, 1024), (32, 1024))]
    return rows


def late_k(name: str, K: int) -> DDCMOptions:
    divisor, switch = (4, 200) if name.startswith("K/4") else (8, 400)
    return DDCMOptions(k_late=max(2, K // divisor), k_switch=switch)


def steps_for(bits: float, K: int, options: DDCMOptions) -> int:
    """The step count whose worst-case bits per item come closest to ``bits``."""
    best, best_gap = 2, math.inf
    for steps in range(2, 1000):
        worst = max_bits_per_item(coded_sizes(schedule_for(steps), steps, K, options), options)
        if abs(worst - bits) < best_gap:
            best, best_gap = steps, abs(worst - bits)
        if worst > bits * 1.5:
            break
    return best


def run(x0: torch.Tensor, steps: int, K: int, options: DDCMOptions, seed: int) -> dict:
    denoiser = AnalyticGaussianDenoiser(schedule_for(steps))
    start = time.perf_counter()
    codes, reconstruction = compress(denoiser, x0, steps, K, seed, options)
    seconds = time.perf_counter() - start
    sizes = coded_sizes(denoiser.schedule, steps, K, options)
    bits = sum(bits_of_codes(c.numpy(), sizes, options) for c in codes) / len(codes)
    return {"steps": steps, "codes": codes, "reconstruction": reconstruction, "bits": bits, "seconds": seconds}


COLOURS = {"plain": (0, 0, 0), "mixing": (31, 119, 180), "eta": (44, 160, 44), "score": (214, 39, 40), "late K": (148, 103, 189),
           "range": (140, 86, 75), "rerank": (227, 119, 194), "preset": (255, 127, 14), "turbo": (23, 190, 207)}


def plot(rows: list[dict], dim: int, path: Path) -> None:
    """Left: SNR against bits/dim with both bounds, a point per run. Right: each configuration's gap
    to the realism bound (a bar per budget, the plain DDCM gap marked)."""
    budgets = sorted({r["budget"] for r in rows})
    configs = list(dict.fromkeys(r["config"] for r in rows))
    width, height, pad = 1300, max(560, 90 + 16 * len(configs) * len(budgets)), 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 12), f"DDCM options on a unit Gaussian source (d = {dim}, exact denoiser), equal bits per budget", fill="black")
    # Left panel.
    r_hi = max(r["bits_per_dim"] for r in rows) * 1.15
    snrs = [r["snr_db"] for r in rows]
    s_lo, s_hi = min(min(snrs), 0.0) - 0.5, max(max(snrs), realism_snr_db(r_hi * dim, dim)) + 0.5
    x0, x1, y0, y1 = pad, 560, pad, height - pad
    X = lambda r: x0 + r / r_hi * (x1 - x0)  # noqa: E731
    Y = lambda s: y1 - (s - s_lo) / (s_hi - s_lo) * (y1 - y0)  # noqa: E731
    draw.rectangle([x0, y0, x1, y1], outline="black")
    for label, bound, colour in (("perfect realism", realism_snr_db, (0, 0, 0)), ("classic RD", rd_snr_db, (150, 150, 150))):
        points = [(X(r), Y(bound(r * dim, dim))) for r in [r_hi * i / 200 for i in range(1, 201)] if s_lo <= bound(r * dim, dim) <= s_hi]
        draw.line(points, fill=colour, width=2)
        draw.text((points[-1][0] - 100, points[-1][1] - 16), label, fill=colour)
    for r in rows:
        x, y = X(r["bits_per_dim"]), Y(r["snr_db"])
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=COLOURS[r["family"]])
    draw.text((x0, y1 + 12), f"measured bits per dimension, 0 .. {r_hi:.2f}", fill="black")
    draw.text((x0, y0 - 16), f"SNR, dB: {s_lo:.1f} (bottom) .. {s_hi:.1f} (top)", fill="black")
    # Right panel: gap to the realism bound, per configuration and budget.
    gx0, gx1 = 820, width - 30
    gaps = [r["gap_db"] for r in rows]
    g_lo, g_hi = min(0.0, min(gaps)), max(gaps) * 1.05
    G = lambda g: gx0 + (g - g_lo) / (g_hi - g_lo) * (gx1 - gx0)  # noqa: E731
    draw.text((600, y0 - 16), f"gap to the realism bound, dB ({g_lo:.1f} .. {g_hi:.1f}; shorter is better); | plain DDCM", fill="black")
    y = y0
    plain = {r["budget"]: r["gap_db"] for r in rows if r["family"] == "plain"}
    for config in configs:
        for budget in budgets:
            match = [r for r in rows if r["config"] == config and r["budget"] == budget]
            if not match:
                continue
            r = match[0]
            draw.text((600, y), f"{config} @{budget:g}", fill="black")
            draw.rectangle([G(min(0.0, r["gap_db"])), y + 2, G(max(0.0, r["gap_db"])), y + 11], fill=COLOURS[r["family"]])
            draw.line([(G(plain[budget]), y), (G(plain[budget]), y + 13)], fill="black", width=1)
            y += 15
    for i, (family, colour) in enumerate(COLOURS.items()):
        draw.rectangle([x0 + 10 + 62 * i, y1 + 32, x0 + 20 + 62 * i, y1 + 42], fill=colour)
        draw.text((x0 + 23 + 62 * i, y1 + 30), family, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=2048, help="source dimension (default: %(default)s)")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--K", type=int, default=64, help="candidates per step (default: %(default)s)")
    p.add_argument("--budgets", default="0.25,0.5", help="bits per dimension, comma-separated (default: %(default)s)")
    p.add_argument("--only", help="comma-separated families to run (plain always runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default="bench/ddcm_options.json")
    p.add_argument("--plot", default="bench/ddcm_options.png")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x0 = torch.randn(args.clips, args.dim, generator=torch.Generator().manual_seed(args.seed))
    budgets = [float(b) for b in args.budgets.split(",")]
    wanted = set(args.only.split(",")) | {"plain"} if args.only else None
    rows = []
    started = time.perf_counter()
    for family, name, options, K in configurations(args.K):
        if wanted is not None and family not in wanted:
            continue
        options = options or late_k(name, K)
        for budget in budgets:
            target = budget * args.dim
            result = run(x0, steps_for(target, K, options), K, options, args.seed + 1)
            if abs(result["bits"] - target) > 0.05 * target and options.atoms > 1:  # atoms not all kept: meet the budget in measured bits
                steps = min(999, max(2, round((result["steps"] - 1) * target / result["bits"]) + 1))
                result = run(x0, steps, K, options, args.seed + 1)
            rate = result["bits"] / args.dim
            snr = snr_db(x0, result["reconstruction"])
            row = {"family": family, "config": name, "options": options.to_header(), "K": K, "budget": budget, "steps": result["steps"],
                   "bits_per_dim": round(rate, 4), "snr_db": round(snr, 3), "realism_snr_db": round(realism_snr_db(result["bits"], args.dim), 3),
                   "rd_snr_db": round(rd_snr_db(result["bits"], args.dim), 3), "out_var": round(float(result["reconstruction"].pow(2).mean()), 4),
                   "seconds": round(result["seconds"], 2)}
            row["gap_db"] = round(row["realism_snr_db"] - snr, 3)
            rows.append(row)
            print(f"  {name:32s} budget {budget:4.2f}: {result['steps']:4d} steps, {rate:.3f} bits/dim, SNR {snr:6.2f} dB, "
                  f"gap {row['gap_db']:5.2f} dB, out_var {row['out_var']:.3f} ({row['seconds']} s)", flush=True)
    # One exact-decode check: the preset's codes replay to the encoder's reconstruction.
    preset = DDCMOptions(**PRESET)
    check = run(x0[:2], 30, args.K, preset, args.seed + 2)
    decodes = torch.equal(decompress(AnalyticGaussianDenoiser(schedule_for(30)), check["codes"], 30, args.K, args.seed + 2, x0[:2].shape,
                                     options=preset), check["reconstruction"])
    plain = {r["budget"]: r for r in rows if r["config"] == "plain P1"}
    for r in rows:
        r["gap_vs_plain_db"] = round(r["gap_db"] - plain[r["budget"]]["gap_db"], 3)
    result = {"source": f"iid N(0,1), d = {args.dim}, analytic denoiser, AudioLDM2 DDIM schedule", "dim": args.dim, "clips": args.clips,
              "K": args.K, "budgets_bits_per_dim": budgets, "threads": torch.get_num_threads(), "loadavg_1min": round(os.getloadavg()[0], 2),
              "total_s": round(time.perf_counter() - started, 1), "preset_decodes_exactly": decodes, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    plot(rows, args.dim, Path(args.plot))
    print()
    print(f"DDCM options at equal bits: d = {args.dim}, {args.clips} clips, K = {args.K}; SNR and bounds in dB; "
          "gap = realism bound - SNR (smaller is better); vs plain = gap - plain's gap at the same budget")
    print(f"{'config':32s} {'budget':>6} {'steps':>5} {'bits/dim':>8} {'SNR':>6} {'realism':>7} {'RD':>6} {'gap':>6} {'vs plain':>8} {'out_var':>7} {'s':>6}")
    for r in rows:
        print(f"{r['config']:32s} {r['budget']:>6.2f} {r['steps']:>5} {r['bits_per_dim']:>8.3f} {r['snr_db']:>6.2f} {r['realism_snr_db']:>7.2f} "
              f"{r['rd_snr_db']:>6.2f} {r['gap_db']:>6.2f} {r['gap_vs_plain_db']:>+8.2f} {r['out_var']:>7.3f} {r['seconds']:>6.1f}")
    print(f"preset codes decode exactly: {decodes}; wrote {args.json}, {args.plot}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
