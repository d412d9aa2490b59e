"""Held-out latent SNR and code usage of recon's codebook vs plain k-means and vector-quantize-pytorch.

    python bench/codebook_vs_kmeans.py                       # VAE latents of examples/audio (random:full)
    python bench/codebook_vs_kmeans.py --latents gaussian-mixture
    python bench/codebook_vs_kmeans.py --steps 10000 --batch 8192 --backbone /path/to/audioldm2

This is a *quantizer* benchmark: recon's ``VectorQuantizer`` is driven directly by a plain loop
(``init_from_latents`` on the training vectors, then ``--steps`` minibatches of ``--batch`` vectors;
Adam on ``out.loss`` for ``update=grad``, nothing for ``update=ema``), not through Lightning. The
latent is fixed data here, so the commitment term has no parameter to move and ``out.loss`` trains
the codebook only, exactly the codebook part of ``CodebookTrainer``'s loss.

Every method sees the same training vectors and, where it trains by steps, the same minibatches:
* recon hard/grad, hard/ema, soft/grad (soft is evaluated hard, i.e. nearest code; its soft z_q at
  the final temperature is reported too; the temperature anneals over the run, ``--anneal-steps``);
* k-means: Lloyd with k-means++ seeding on all training vectors (``--kmeans-iters``, default 100);
* peer: ``vector_quantize_pytorch.VectorQuantize(dim=8, codebook_size=1024, kmeans_init=True,
  decay=0.99, threshold_ema_dead_code=2)`` (its README's dead-code setting; it k-means-initialises
  on its first minibatch).

Latents (default ``audio``): posterior means of the backbone (default ``random:full``, architecture-
identical to AudioLDM2 with random weights) over the clips of examples/audio and augmented copies
(sub-hop time shifts, resample-trick pitch/speed changes, added noise, low-pass). Whole files are
held out (``--held-out``, default one speech and one music clip, with their augmented copies). Latent frames past the end of a clip (zero padding up to
10.24 s) are dropped. The encoded latents are cached under ``--cache-dir`` (default .cache/bench).
``--latents gaussian-mixture`` is a seeded 8-D Gaussian mixture stand-in that needs no backbone.

SNR = 10 log10(sum ||z||^2 / sum ||z - z_q||^2) pooled over all vectors; usage = fraction of the
K codes that are nearest to at least one vector (also reported on the training vectors).
Targets, per recon mode, on held-out vectors: SNR within 0.2 dB of k-means, SNR >= the peer's,
>= 95 % of the 1024 codes used. Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torchaudio.functional as AF

from recon.codebook import CodebookConfig, VectorQuantizer

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = "speech/voice_3.flac,music/sweep_organ.flac"
# (name, speed factor for the resample trick, shift in samples, noise SNR dB, low-pass Hz)
AUGMENTS = [
    ("orig", 1.0, 0, None, None),
    ("shift37", 1.0, 37, None, None),
    ("shift101", 1.0, 101, None, None),
    ("speed0.89", 0.89, 0, None, None),
    ("speed0.94", 0.94, 0, None, None),
    ("speed1.06", 1.06, 0, None, None),
    ("speed1.12", 1.12, 0, None, None),
    ("noise30dB", 1.0, 0, 30.0, None),
    ("noise20dB", 1.0, 0, 20.0, None),
    ("lowpass4k", 1.0, 0, None, 4000.0),
]
CACHE_VERSION = 2


# ---------------------------------------------------------------------------------------- latents
def augment(wav: torch.Tensor, sr: int, speed: float, shift: int, noise_db, lowpass, seed: int) -> torch.Tensor:
    if speed != 1.0:  # resample to sr/speed and play back at sr: pitch and tempo scale by `speed`
        wav = AF.resample(wav, orig_freq=round(sr * speed), new_freq=sr)
    wav = wav[shift:]
    if lowpass is not None:
        wav = AF.lowpass_biquad(wav, sr, lowpass)
    if noise_db is not None:
        noise = torch.randn(wav.shape, generator=torch.Generator().manual_seed(seed))
        wav = wav + noise * wav.pow(2).mean().sqrt() * 10 ** (-noise_db / 20)
    return wav


@torch.no_grad()
def encode_clip(wav: torch.Tensor, backbone, frontend) -> torch.Tensor:
    """Posterior means of every 10.24 s segment of a raw 16 kHz clip as [N, 8] vectors, padding dropped."""
    from recon.audio import prepare_segment

    spec, out = backbone.spec, []
    frames_per_vector = spec.hop_length * backbone.downsample_factor
    for start in range(0, wav.shape[-1], spec.num_samples):
        seg = wav[start : start + spec.num_samples]
        mean = backbone.encode(frontend(prepare_segment(seg, spec)[None])).mean[0]  # [8, T, F]
        valid = min(mean.shape[1], math.ceil(seg.shape[-1] / frames_per_vector))
        out.append(mean[:, :valid].permute(1, 2, 0).reshape(-1, mean.shape[0]))
    return torch.cat(out)


def audio_latents(args) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Encoded once per (backbone, clips, augmentations) into --cache-dir; split by --held-out afterwards."""
    from recon.audio import MelFrontEnd, load_audio
    from recon.backbone import FrozenAudioLDM2
    from recon.cache import backbone_fingerprint, file_digest
    from recon.data import find_audio_files

    root = Path(args.audio)
    files = {f.relative_to(root).as_posix(): f for f in find_audio_files(root)}
    backbone = FrozenAudioLDM2.from_source(args.backbone)
    key = hashlib.sha1(
        json.dumps([CACHE_VERSION, backbone_fingerprint(backbone), AUGMENTS, [(r, file_digest(f)) for r, f in files.items()]]).encode()
    ).hexdigest()[:16]
    cache, t0 = Path(args.cache_dir) / f"codebook_latents_{key}.pt", time.perf_counter()
    if cache.is_file():
        print(f"latents: cached {cache}")
        per_file = torch.load(cache)  # {relpath: [N, 8] vectors of all its augmented versions}
    else:
        frontend, per_file = MelFrontEnd(backbone.spec), {}
        for i, (rel, path) in enumerate(files.items()):
            raw, parts = load_audio(path, backbone.spec), []
            for j, (name, *aug) in enumerate(AUGMENTS):
                parts.append(encode_clip(augment(raw, backbone.spec.sample_rate, *aug, seed=1000 * i + j), backbone, frontend))
                print(f"  encoded {rel} [{name}] ({time.perf_counter() - t0:.0f} s)", flush=True)
            per_file[rel] = torch.cat(parts)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(per_file, cache)
    held = args.held_out.split(",")
    if missing := set(held) - set(per_file):
        raise SystemExit(f"--held-out names files not under {root}: {sorted(missing)}")
    train = torch.cat([v for r, v in per_file.items() if r not in held])
    held_out = torch.cat([per_file[r] for r in held])
    return train, held_out, {"cache": str(cache), "encode_s": round(time.perf_counter() - t0, 1), "held_out_files": held}


def gaussian_mixture(n_train: int, n_eval: int, seed: int, components: int = 64, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g)
    scales = 0.05 + 0.25 * torch.rand(components, 1, generator=g)
    weights = torch.rand(components, generator=g) + 0.2

    def draw(n):
        c = torch.multinomial(weights, n, replacement=True, generator=g)
        return means[c] + scales[c] * torch.randn(n, dim, generator=g)

    return draw(n_train), draw(n_eval), {}


# ---------------------------------------------------------------------------------------- methods
def nearest(x: torch.Tensor, codes: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    sq = codes.pow(2).sum(1)  # argmin ||x - c||^2 = argmin ||c||^2 - 2 x.c
    return torch.cat([(sq - 2 * c @ codes.t()).argmin(1) for c in x.split(chunk)])


def lloyd(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Plain k-means: k-means++ seeding, then `iters` Lloyd iterations (empty clusters keep their code)."""
    g = torch.Generator().manual_seed(seed)
    codes = x[torch.randint(len(x), (1,), generator=g)]
    d2 = (x - codes[0]).pow(2).sum(1)
    for _ in range(1, k):
        new = x[torch.multinomial(d2, 1, generator=g)]
        codes, d2 = torch.cat([codes, new]), torch.minimum(d2, (x - new).pow(2).sum(1))
    for _ in range(iters):
        idx = nearest(x, codes)
        counts = torch.bincount(idx, minlength=k)[:, None]
        sums = torch.zeros_like(codes).index_add_(0, idx, x)
        codes = torch.where(counts > 0, sums / counts.clamp_min(1), codes)
    return codes


def minibatches(n: int, steps: int, batch: int, seed: int):
    """The same sequence of index batches for every method: shuffled epochs over the training set."""
    g, order = torch.Generator().manual_seed(seed), torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch:
            order = torch.cat([order, torch.randperm(n, generator=g)])
        yield order[:batch]
        order = order[batch:]


def train_recon(train: torch.Tensor, cfg: CodebookConfig, args) -> VectorQuantizer:
    vq = VectorQuantizer(cfg).train()
    vq.init_from_latents(train)
    opt = torch.optim.Adam(vq.parameters(), lr=args.lr) if cfg.update == "grad" else None
    for idx in minibatches(len(train), args.steps, args.batch, args.seed):
        out = vq(train[idx])
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    return vq.eval()


def train_peer(train: torch.Tensor, args):
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(args.seed)  # the peer draws from the global RNG (k-means init, dead-code restarts)
    vq = VectorQuantize(dim=8, codebook_size=args.codes, kmeans_init=True, decay=0.99, threshold_ema_dead_code=2).train()
    with torch.no_grad():
        for idx in minibatches(len(train), args.steps, args.batch, args.seed):
            vq(train[idx][None])
    return vq.eval()


def snr_db(z: torch.Tensor, z_q: torch.Tensor) -> float:
    """10 log10(sum ||z||^2 / sum ||z - z_q||^2), pooled over all vectors (not a mean of per-vector SNRs)."""
    return 10 * math.log10(z.double().pow(2).sum() / (z.double() - z_q.double()).pow(2).sum())


@torch.no_grad()
def scores(assign, held_out: torch.Tensor, train: torch.Tensor, k: int) -> dict:
    """assign(z) -> (indices, z_q); SNR and code usage on held-out vectors, and on the training vectors."""
    out = {}
    for prefix, z in (("", held_out), ("train_", train)):
        idx, z_q = assign(z)
        out[prefix + "snr_db"] = round(snr_db(z, z_q), 3)
        out[prefix + "usage"] = round(len(idx.unique()) / k, 4)
    return out


def compare_ladder(train: torch.Tensor, held_out: torch.Tensor, k: int, args, info: dict, t_start: float) -> None:
    """Held-out SNR after each stage: recon's ladder against Lloyd k-means fitted stage by stage on the
    training residuals of the k-means stages before it (each stage's optimum given those before)."""
    reference, residual, residual_held, total = [], train.clone(), held_out.clone(), torch.zeros_like(held_out)
    t = time.perf_counter()
    for _ in range(args.ladder):
        codes = lloyd(residual, k, args.kmeans_iters, args.seed)
        residual = residual - codes[nearest(residual, codes)]
        chosen = codes[nearest(residual_held, codes)]
        total, residual_held = total + chosen, residual_held - chosen
        reference.append(snr_db(held_out, total))
    kmeans_s = time.perf_counter() - t
    cfg = CodebookConfig(num_codes=k, dim=train.shape[1], update="ema", ema_decay=args.ema_decay, kmeans_iters=args.init_iters,
                         dead_code_threshold=args.dead_code_threshold, seed=args.seed, stages=args.ladder, quantizer_dropout=args.dropout)
    t = time.perf_counter()
    vq = VectorQuantizer(cfg).train()
    vq.init_from_latents(train)
    for step, idx in enumerate(minibatches(len(train), args.steps, args.batch, args.seed)):
        vq.reseed(args.seed * 1_000_003 + step)
        vq(train[idx])
    vq.eval()
    recon_s = time.perf_counter() - t
    with torch.no_grad():
        ours = [snr_db(held_out, vq.decode_residual(vq.residual_indices(held_out, n))) for n in range(1, args.ladder + 1)]
    print(f"\n{'stage':>5}{'k-means dB':>12}{'recon dB':>10}{'gap dB':>8}   target: gap >= -0.05")
    for n, (a, b) in enumerate(zip(reference, ours), start=1):
        print(f"{n:>5}{a:>12.3f}{b:>10.3f}{b - a:>8.3f}   {'PASS' if b - a >= -0.05 else 'FAIL'}")
    print(json.dumps({
        "bench": "codebook_vs_kmeans", "mode": "ladder", "stages": args.ladder, "dropout": args.dropout, "n_train": len(train),
        "n_held_out": len(held_out), "codes": k, "steps": args.steps, "batch": args.batch, "kmeans_iters": args.kmeans_iters,
        "ema_decay": args.ema_decay, "dead_code_threshold": args.dead_code_threshold, **info,
        "kmeans_snr_db": [round(v, 3) for v in reference], "recon_snr_db": [round(v, 3) for v in ours],
        "gap_db": [round(b - a, 3) for a, b in zip(reference, ours)], "all_targets_pass": all(b - a >= -0.05 for a, b in zip(reference, ours)),
        "kmeans_s": round(kmeans_s, 1), "recon_s": round(recon_s, 1), "threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0], "runtime_s": round(time.perf_counter() - t_start, 1),
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latents", choices=["audio", "gaussian-mixture"], default="audio")
    p.add_argument("--audio", default=str(ROOT / "examples/audio"), help="folder of clips")
    p.add_argument("--held-out", default=HELD_OUT, help="comma-separated files (relative to --audio) held out for evaluation")
    p.add_argument("--backbone", default="random:full")
    p.add_argument("--cache-dir", default=str(ROOT / ".cache/bench"))
    p.add_argument("--gm-train", type=int, default=131072, help="gaussian-mixture training vectors")
    p.add_argument("--gm-eval", type=int, default=32768, help="gaussian-mixture held-out vectors")
    p.add_argument("--steps", type=int, default=2000, help="training minibatches for every trained method")
    p.add_argument("--batch", type=int, default=4096, help="vectors per minibatch (one 10.24 s segment = 4096)")
    p.add_argument("--codes", type=int, default=1024)
    p.add_argument("--kmeans-iters", type=int, default=100, help="Lloyd iterations of the k-means baseline (>= 50)")
    # recon settings: CodebookTrainer's lr and configs/codebook_*.yaml's values by default
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr for update=grad (CodebookTrainer default)")
    p.add_argument("--dead-code-threshold", type=int, default=100, help="as in configs/codebook_*.yaml")
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--init-iters", type=int, default=20, help="recon's own k-means init iterations (kmeans_iters)")
    p.add_argument("--temperature-min", type=float, default=0.01)
    p.add_argument("--anneal-steps", type=int, default=None, help="soft temperature anneal steps (default: --steps)")
    p.add_argument("--modes", default="hard/grad,hard/ema,soft/grad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ladder", type=int, default=0,
                   help="instead: a residual ladder of this many stages (hard/ema, quantizer dropout --dropout) against greedy "
                        "residual k-means, stage by stage; target within 0.05 dB at every stage")
    p.add_argument("--dropout", type=float, default=0.5, help="quantizer dropout of --ladder")
    args = p.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)

    if args.latents == "audio":
        train, held_out, info = audio_latents(args)
    else:
        train, held_out, info = gaussian_mixture(args.gm_train, args.gm_eval, args.seed)
    train, held_out, k = train.float().contiguous(), held_out.float().contiguous(), args.codes
    print(f"latents: {args.latents}, {len(train)} training / {len(held_out)} held-out vectors of dim {train.shape[1]}, "
          f"train rms {train.pow(2).mean().sqrt():.4f}")

    if args.ladder:
        return compare_ladder(train, held_out, k, args, info, t_start)

    results, times = {}, {}
    t = time.perf_counter()
    codes = lloyd(train, k, args.kmeans_iters, args.seed)
    times["kmeans"] = time.perf_counter() - t
    results["kmeans"] = scores(lambda z: (idx := nearest(z, codes), codes[idx]), held_out, train, k)

    t = time.perf_counter()
    peer = train_peer(train, args)
    times["peer"] = time.perf_counter() - t

    def peer_assign(z):
        z_q, idx, _ = peer(z[None])
        return idx[0], z_q[0]

    results["peer"] = scores(peer_assign, held_out, train, k)

    anneal = args.anneal_steps if args.anneal_steps is not None else args.steps
    for name in args.modes.split(","):
        mode, update = name.split("/")
        cfg = CodebookConfig(num_codes=k, dim=train.shape[1], mode=mode, update=update, ema_decay=args.ema_decay,
                             kmeans_iters=args.init_iters, dead_code_threshold=args.dead_code_threshold,
                             temperature_min=args.temperature_min, temperature_anneal_steps=anneal, seed=args.seed)
        t = time.perf_counter()
        vq = train_recon(train, cfg, args)
        times[f"recon {name}"] = time.perf_counter() - t
        r = scores(lambda z: (idx := vq.quantize_indices(z), vq.decode_indices(idx)), held_out, train, k)
        with torch.no_grad():
            if mode == "soft":  # eval forward keeps the soft weights at the final temperature
                r["soft_snr_db"] = round(snr_db(held_out, vq(held_out).z_q), 3)
                r["final_temperature"] = vq.temperature_at(int(vq.step))
        r["restarted_codes"] = int(vq.total_restarted)
        r["targets"] = {
            "within_0.2dB_of_kmeans": r["snr_db"] >= results["kmeans"]["snr_db"] - 0.2,
            "at_least_peer": r["snr_db"] >= results["peer"]["snr_db"],
            "usage_95pct": r["usage"] >= 0.95,
        }
        results[f"recon {name}"] = r

    print(f"\n{'method':<17}{'held-out SNR dB':>16}{'usage %':>9}{'train SNR dB':>13}{'usage %':>9}{'time s':>8}"
          "   held-out targets (k-means - 0.2 dB / >= peer / usage >= 95 %)")
    for name, r in results.items():
        tg = " / ".join("PASS" if v else "FAIL" for v in r["targets"].values()) if "targets" in r else ""
        print(f"{name:<17}{r['snr_db']:>16.3f}{100 * r['usage']:>9.1f}{r['train_snr_db']:>13.3f}{100 * r['train_usage']:>9.1f}"
              f"{times[name]:>8.1f}   {tg}")
        if "soft_snr_db" in r:
            print(f"{'  (soft z_q)':<17}{r['soft_snr_db']:>16.3f}{'':>9}{'':>13}{'':>9}{'':>8}   at final temperature {r['final_temperature']:.4g}")
    for name, r in results.items():
        r["time_s"] = round(times[name], 2)
    summary = {
        "bench": "codebook_vs_kmeans", "latents": args.latents, "backbone": args.backbone if args.latents == "audio" else None,
        "n_train": len(train), "n_held_out": len(held_out), "codes": k, "steps": args.steps, "batch": args.batch,
        "kmeans_iters": args.kmeans_iters, "lr": args.lr, "dead_code_threshold": args.dead_code_threshold,
        "ema_decay": args.ema_decay, "init_iters": args.init_iters, "anneal_steps": anneal, "seed": args.seed,
        **info, "results": results,
        "all_targets_pass": all(all(r["targets"].values()) for r in results.values() if "targets" in r),
        "threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0], "runtime_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
