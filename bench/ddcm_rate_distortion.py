"""DDCM rate-distortion on a unit Gaussian latent, against the classic and the perfect-realism bounds.

    python bench/ddcm_rate_distortion.py [--clips 4] [--codec-points 100x1024,200x256,...] [--skip-unet]

Source: one clip's AudioLDM2 latent, modelled as i.i.d. N(0, 1) of dimension d = 8*256*16 = 32768
(10.24 s), denoised by the exact analytic denoiser (``recon.ddcm.AnalyticGaussianDenoiser``) on
AudioLDM2's scheduler ('leading' spacing, steps_offset 1, so the last step is at t = 1); 1000 steps
cannot be spaced that way (t would reach 1000) and use 'trailing' (999 .. 0). The last step returns
the clean estimate, so the output is a near-exact source sample only because that t is 0 or 1
(``out_var``, the output's mean square, shows how realistic it is: 1 for the source). A DDCM code
of ``steps`` steps with codebooks of ``K`` entries spends R = (steps - 1) log2 K bits per clip,
R / 10.24 bits per second. Columns:

* ``sim``: DDCM distortion from an exact-in-distribution shortcut (below), over the whole grid;
* ``codec``: the real codec (``recon.ddcm.compress``, codebooks generated from the seed) at a few
  points, which costs ``steps * K * d`` Gaussian draws (minutes on CPU for the largest ones);
* ``RD``: classic rate-distortion of a Gaussian source, SNR = 6.02 R/d dB (MSE-optimal decoder);
* ``realism``: the perfect-realism bound (Blau & Michaeli 2019, decoder output distributed as the
  source): D = 2 (1 - sqrt(1 - 2^(-2R/d))) per dimension, SNR = -10 log10 D;
* random indices decode to an independent source sample: D = 2, -3.01 dB.

The shortcut. At a step with residual r = x0 - x0_hat, the codebook rows C_k ~ N(0, I) split into
a_k = <C_k, u> (u = r / |r|) and an orthogonal part independent of a_k. The argmax depends only on
the a_k, so the chosen row is distributed exactly as max_k(a_k) u + (z - <z, u> u) with z ~ N(0, I):
K + d draws per step instead of K d. Each item's marginal distortion is exact (the real codec shares
a codebook across the batch, which only correlates items); the codec column checks it.

Also measured: the full-size random AudioLDM2 UNet (architecture of ``recon.diffusion.FULL_UNET_CONFIG``)
per clip per step on CPU (one forward of the guidance batch of 2, warm), and the ``codebook_hard``
reference (4.0 kbps: K = 1024 per 8-dim vector, 400 vectors/s) for the Gaussian source, measured with
k-means (scikit-learn) on 8-dim Gaussian samples.

Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from diffusers import DDIMScheduler

from recon.ddcm import AnalyticGaussianDenoiser, DiffusionSchedule, bits_per_item, compress, ddcm_sample, decompress
from recon.diffusion import AUDIOLDM2_SCHEDULER_CONFIG, build_random_unet

CLIP_SECONDS = 10.24
LATENT_SHAPE = (8, 256, 16)
DIM = math.prod(LATENT_SHAPE)


def schedule_for(steps: int) -> DiffusionSchedule:
    """AudioLDM2's DDIM schedule, or its 'trailing' variant where 'leading' + offset 1 would pass t = 999."""
    scheduler = DDIMScheduler(**AUDIOLDM2_SCHEDULER_CONFIG)
    leading_last = (steps - 1) * (scheduler.config.num_train_timesteps // steps) + scheduler.config.steps_offset
    return DiffusionSchedule.from_scheduler(scheduler, None if leading_last < scheduler.config.num_train_timesteps else "trailing")


def snr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    return 10 * math.log10(float(x.pow(2).mean() / (x - y).pow(2).mean()))


def rd_snr_db(bits: float, dim: int = DIM) -> float:
    """Classic Gaussian rate-distortion: D = 2^(-2R/d), SNR = 6.02 R/d dB."""
    return 10 * math.log10(2) * 2 * bits / dim


def realism_snr_db(bits: float, dim: int = DIM) -> float:
    """Perfect-realism bound (Blau & Michaeli 2019) for a unit Gaussian: D = 2 (1 - sqrt(1 - 2^(-2R/d)))."""
    return -10 * math.log10(2 * (1 - math.sqrt(1 - 2 ** (-2 * bits / dim))))


def simulated_ddcm(denoiser, x0: torch.Tensor, steps: int, K: int, seed: int) -> torch.Tensor:
    """DDCM's reconstruction with the chosen codebook row drawn from its exact distribution (see module doc)."""
    generator = torch.Generator().manual_seed(seed)
    target = x0.flatten(1)

    def choose(step, codebook, x0_hat):
        u = torch.nn.functional.normalize(target - x0_hat, dim=1)
        best = torch.randn(x0.shape[0], K, generator=generator).amax(dim=1, keepdim=True)
        z = torch.randn(target.shape, generator=generator)
        return best * u + z - (z * u).sum(dim=1, keepdim=True) * u

    return ddcm_sample(denoiser, tuple(x0.shape), steps, K, seed, "cpu", choose)


def random_index_snr(denoiser, x0: torch.Tensor, steps: int, seed: int) -> float:
    """A random index picks a fresh N(0, I) row: the sampler draws an independent source sample."""
    generator = torch.Generator().manual_seed(seed)
    recon = ddcm_sample(denoiser, tuple(x0.shape), steps, 2, seed, "cpu", lambda s, c, h: torch.randn(h.shape, generator=generator))
    return snr_db(x0, recon)


def time_full_unet(repeats: int, prompt_tokens: int = 16) -> dict:
    """Seconds per clip per step: one warm forward of [uncond; cond] (batch 2) on a [8, 256, 16] latent."""
    unet = build_random_unet("full")
    x = torch.randn(2, *LATENT_SHAPE)
    kwargs = dict(
        encoder_hidden_states=torch.randn(2, 8, 768),  # GPT2: 8 generated tokens
        encoder_hidden_states_1=torch.randn(2, prompt_tokens, 1024),  # Flan-T5-large tokens
        encoder_attention_mask_1=torch.ones(2, prompt_tokens, dtype=torch.long),
    )
    with torch.inference_mode():
        unet(x, 500, **kwargs)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            unet(x, 500, **kwargs)
            times.append(time.perf_counter() - start)
    return {
        "parameters_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "s_per_clip_step_best": round(min(times), 3),
        "s_per_clip_step_median": round(sorted(times)[len(times) // 2], 3),
        "threads": torch.get_num_threads(),
    }


def kmeans_codebook_hard(train: int = 200_000, test: int = 200_000, seed: int = 0) -> dict:
    """SNR of a 1024-code k-means VQ of 8-dim unit Gaussian vectors (the hard codebook's rate)."""
    from sklearn.cluster import KMeans

    generator = torch.Generator().manual_seed(seed)
    fit = torch.randn(train, 8, generator=generator).numpy()
    held_out = torch.randn(test, 8, generator=generator)
    kmeans = KMeans(n_clusters=1024, n_init=1, max_iter=100, random_state=seed).fit(fit)
    centers = torch.from_numpy(kmeans.cluster_centers_).float()
    quantized = centers[torch.cdist(held_out, centers).argmin(dim=1)]
    bits = 10 * DIM / 8  # 10 bits per 8-dim vector
    return {
        "bits_per_clip": bits,
        "bps": bits / CLIP_SECONDS,
        "kmeans_snr_db": round(snr_db(held_out, quantized), 2),
        "rd_snr_db": round(rd_snr_db(bits), 2),
        "realism_snr_db": round(realism_snr_db(bits), 2),
    }


def parse_points(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="unit-Gaussian latents averaged per point")
    parser.add_argument("--steps", default="20,50,100,200,500,1000")
    parser.add_argument("--K", default="64,256,1024,4096")
    parser.add_argument("--codec-points", default="100x1024,200x256,500x64,1000x64",
                        help="STEPSxK points run with the real codec (cost ~ steps*K*d draws)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-repeats", type=int, default=3)
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--skip-kmeans", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x0 = torch.randn(args.clips, *LATENT_SHAPE, generator=torch.Generator().manual_seed(args.seed))
    codec_points = set(parse_points(args.codec_points))
    grid = [(s, k) for s in map(int, args.steps.split(",")) for k in map(int, args.K.split(","))]
    grid += sorted(codec_points - set(grid))

    rows = []
    for steps, K in sorted(grid, key=lambda p: bits_per_item(*p)):
        bits = bits_per_item(steps, K)
        denoiser = AnalyticGaussianDenoiser(schedule_for(steps))
        row = {"steps": steps, "K": K, "bits": bits, "bps": round(bits / CLIP_SECONDS, 1)}
        row["spacing"], row["t_last"] = denoiser.schedule.timestep_spacing, denoiser.schedule.timesteps(steps)[-1]
        start = time.perf_counter()
        simulated = simulated_ddcm(denoiser, x0, steps, K, args.seed + 1)
        row["sim_snr_db"], row["out_var"] = round(snr_db(x0, simulated), 3), round(float(simulated.pow(2).mean()), 4)
        row["sim_s"] = round(time.perf_counter() - start, 2)
        if (steps, K) in codec_points:
            start = time.perf_counter()
            indices, reconstruction = compress(denoiser, x0, steps, K, args.seed + 2)
            row["codec_snr_db"] = round(snr_db(x0, reconstruction), 3)
            row["codec_s"] = round(time.perf_counter() - start, 1)
            if steps * K == min(s * k for s, k in codec_points):  # one exact-decode check, on the cheapest point
                row["codec_decodes_exactly"] = torch.equal(decompress(denoiser, indices, steps, K, args.seed + 2, x0.shape), reconstruction)
        row["rd_snr_db"] = round(rd_snr_db(bits), 3)
        row["realism_snr_db"] = round(realism_snr_db(bits), 3)
        row["gap_to_realism_db"] = round(row["realism_snr_db"] - row.get("codec_snr_db", row["sim_snr_db"]), 3)
        rows.append(row)
        print(f"  {steps:5d} x {K:5d}: {row['bps']:7.1f} bps  sim {row['sim_snr_db']:6.2f} dB"
              + (f"  codec {row['codec_snr_db']:6.2f} dB ({row['codec_s']} s)" if "codec_snr_db" in row else ""), flush=True)

    result = {
        "source": "iid N(0,1) latent, d = 8*256*16 per 10.24 s clip, analytic denoiser",
        "schedule": "AudioLDM2 DDIM (scaled_linear 0.0015-0.0195, 1000 steps, leading + offset 1; trailing for 1000), eta=1",
        "dim": DIM,
        "clips": args.clips,
        "threads": torch.get_num_threads(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "random_indices_snr_db": round(random_index_snr(AnalyticGaussianDenoiser(schedule_for(100)), x0, 100, args.seed + 3), 3),
        "grid": rows,
    }
    in_band = [r for r in rows if 100 <= r["bps"] <= 1000]
    if in_band:
        best = min(in_band, key=lambda r: r["gap_to_realism_db"])
        result["band_100_1000_bps"] = {
            "points": len(in_band),
            "gap_to_realism_db_min": min(r["gap_to_realism_db"] for r in in_band),
            "gap_to_realism_db_max": max(r["gap_to_realism_db"] for r in in_band),
            "smallest_gap_at": {k: best[k] for k in ("steps", "K", "bps")},
        }
    if not args.skip_kmeans:
        result["codebook_hard"] = kmeans_codebook_hard(seed=args.seed)
    if not args.skip_unet:
        unet = time_full_unet(args.unet_repeats)
        unet["ddcm_1000_steps_s_per_clip"] = round(1000 * unet["s_per_clip_step_best"], 1)
        unet["turbo_30_steps_s_per_clip"] = round(30 * unet["s_per_clip_step_best"], 1)
        result["unet_full_cpu"] = unet

    print()
    print(f"DDCM on an i.i.d. unit Gaussian latent (d = {DIM}, {args.clips} clips); SNR in dB; bps = bits / {CLIP_SECONDS} s")
    print(f"{'steps':>6} {'K':>6} {'t_last':>6} {'bits':>7} {'bps':>8} {'sim':>7} {'codec':>7} {'out_var':>7} {'RD':>7} {'realism':>8} {'gap':>6}")
    for r in rows:
        codec = f"{r['codec_snr_db']:7.2f}" if "codec_snr_db" in r else f"{'':>7}"
        print(f"{r['steps']:>6} {r['K']:>6} {r['t_last']:>6} {r['bits']:>7} {r['bps']:>8.1f} {r['sim_snr_db']:>7.2f} {codec} {r['out_var']:>7.3f} "
              f"{r['rd_snr_db']:>7.2f} {r['realism_snr_db']:>8.2f} {r['gap_to_realism_db']:>6.2f}")
    print(f"random indices (100 steps): {result['random_indices_snr_db']:.2f} dB "
          "(-3.01 for an exact sampler; coarse DDIM steps shrink the output a little)")
    if "codebook_hard" in result:
        hard = result["codebook_hard"]
        print(f"codebook_hard {hard['bps']:.0f} bps: k-means VQ {hard['kmeans_snr_db']:.2f} dB, RD {hard['rd_snr_db']:.2f}, "
              f"realism {hard['realism_snr_db']:.2f}")
    if "unet_full_cpu" in result:
        unet = result["unet_full_cpu"]
        print(f"full AudioLDM2 UNet ({unet['parameters_M']} M params), CPU {unet['threads']} threads: "
              f"{unet['s_per_clip_step_best']} s per clip per step (guidance batch 2) -> "
              f"{unet['ddcm_1000_steps_s_per_clip']} s per clip at 1000 steps, {unet['turbo_30_steps_s_per_clip']} s at 30")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
