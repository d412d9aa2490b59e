"""Rate against distortion of recon's codecs on held-out example clips: residual VQ at 1..N stages
(nominal and entropy-coded), with --diffusion DDCM at several (steps, K), and Ogg Opus beside them.

    python bench/rate_distortion.py                                  # random:full backbone, a 4-stage ladder
    python bench/rate_distortion.py --diffusion random:tiny --ddcm 6x64,12x64,12x256
    python bench/rate_distortion.py --ckpt ladder.ckpt               # a ladder trained by train.py
    python bench/rate_distortion.py --ckpt checkpoints/demo/codebook-small.ckpt \
        --backbone checkpoints/backbone-small --held-out all          # every example clip

Every point is the codec itself: files are written with recon.codec (container, range coder) and
decoded back with decode_container, so the measured rate counts headers and padding, and the
distortion is that of the decoded audio. Per point, over the held-out clips:
* ``nominal_bps`` (``stages x log2 K x 400``; DDCM: ``(steps - 1) log2 K`` per 10.24 s segment)
  and ``measured_bps`` (file bytes x 8 / seconds; ``fixed_bps`` without the range coder);
* ``latent_snr_db`` pooled over the latent vectors; ``log_mel_db`` (AudioLDM2 log-mel distance of
  the decoded audio to the input, mean over clips);
* for RVQ stage s, ``kmeans_snr_db``: greedy residual Lloyd k-means (stage s on the training
  residuals of k-means stages 1..s-1), the optimum each stage's training should reach (not with
  ``--held-out all``: no clip is left to train on);
* the perceptual metrics of recon.metrics, means over clips: ``visqol_audio`` (every clip),
  ``visqol_speech`` and ``pesq_wb`` (the speech/ clips only); ``--no-perceptual`` skips them.

Opus (``--opus``, target kb/s) is the conventional codec beside them: each clip (normalised as for
recon) is one Ogg Opus stream written and read back by libsndfile (recon.variants.opus_roundtrip,
what infer.py's ``opus`` variant runs per segment); ``measured_bps`` is the stream's bytes (headers
and pages included) x 8 / seconds, ``nominal_bps`` the encoder's target. It has no latent: no SNR.

Without ``--ckpt`` the ladder is trained here on the training clips' posterior means (recon's
VectorQuantizer, EMA, k-means initialised, ``--steps`` minibatches, ``--dropout`` 0.5), like
bench/codebook_vs_kmeans.py trains one stage. DDCM points use the diffusion pipeline's own VAE and
vocoder (their latents), so with random weights they say how the codec behaves, not how it sounds.
Prints a table, writes a PNG plot (``--plot``), then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon import codec  # noqa: E402
from recon.audio import MelFrontEnd, load_audio, normalisation_gain, normalise, split_file  # noqa: E402
from recon.backbone import FrozenAudioLDM2  # noqa: E402
from recon.codebook import CodebookConfig, VectorQuantizer  # noqa: E402
from recon.container import dumps  # noqa: E402
from recon import metrics as M  # noqa: E402
from recon.metrics import log_mel_distance_db  # noqa: E402
from recon.variants import VariantSettings, opus_roundtrip  # noqa: E402

# The same k-means and SNR as the one-stage quantizer benchmark next to this script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from codebook_vs_kmeans import lloyd, nearest, snr_db  # noqa: E402

CLIPS = sorted((ROOT / "examples" / "audio").rglob("*.flac"))
HELD_OUT = "speech/voice_3.flac,music/sweep_organ.flac"
OPUS_KBPS = "6,8,12,16,24"
SPEECH = "speech/"  # clips whose speech measures (PESQ, ViSQOL speech mode) count
PERCEPTUAL = True  # main() sets it from --no-perceptual


def distortions(clips: list[dict], decoded: list[torch.Tensor]) -> dict:
    """Means over clips of the decoded audio's distortion: ``log_mel_db`` for all, ``visqol_audio``
    for all, ``pesq_wb`` and ``visqol_speech`` over the speech clips (NaN cells left out of the means)."""
    log_mel = [float(log_mel_distance_db(c["wav"][None], w[None].cpu().float())[0]) for c, w in zip(clips, decoded)]
    out = {"log_mel_db": float(np.mean(log_mel))}
    if not PERCEPTUAL:
        return out
    scores = {name: [] for name in ("visqol_audio", "visqol_speech", "pesq_wb")}
    for clip, wav in zip(clips, decoded):
        speech = clip["name"].startswith(SPEECH)
        names = ("visqol_audio", "visqol_speech", "pesq_wb") if speech else ("visqol_audio",)
        for name, (value, _) in M.perceptual_details(clip["wav"].numpy(), wav.cpu().float().numpy(), names).items():
            if math.isfinite(value):
                scores[name].append(value)
    out.update({name: float(np.mean(v)) if v else None for name, v in scores.items()})
    return out


def opus_points(clips: list[dict], rates_kbps: list[float], sample_rate: int) -> list[dict]:
    """Each clip one Ogg Opus stream per target rate; the rate measured from the stream's bytes."""
    points = []
    for kbps in rates_kbps:
        bits = seconds = 0.0
        decoded = []
        for clip in clips:
            wav, stream = opus_roundtrip(clip["wav"].numpy(), kbps, sample_rate)
            bits += len(stream) * 8
            seconds += clip["wav"].numel() / sample_rate
            decoded.append(torch.from_numpy(wav))
        points.append({"codec": f"opus@{kbps:g}k", "nominal_bps": kbps * 1000.0, "measured_bps": bits / seconds, "fixed_bps": bits / seconds,
                       "latent_snr_db": None, "kmeans_snr_db": None, **distortions(clips, decoded)})
    return points


@torch.no_grad()
def encode_clips(paths: list[Path], backbone, frontend) -> list[dict]:
    """Per clip: its normalised waveform, level, segments and per-segment posterior means."""
    clips = []
    for path in paths:
        raw = load_audio(path)
        wav = normalise(raw)
        segments = split_file(wav, backbone.spec)
        means = [backbone.encode(frontend(s[None])).mean.float()[0] for s in segments]
        clips.append({"name": path.relative_to(ROOT / "examples" / "audio").as_posix(), "wav": wav, "level": normalisation_gain(raw),
                      "segments": [s.shape[-1] for s in segments], "means": means})
    return clips


def backbone_channels(clips: list[dict]) -> int:
    return clips[0]["means"][0].shape[0]


def vectors(means: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.permute(1, 2, 0).reshape(-1, m.shape[0]) for m in means])


def train_ladder(train: torch.Tensor, args) -> VectorQuantizer:
    cfg = CodebookConfig(num_codes=args.codes, update="ema", dead_code_threshold=100, stages=args.stages, quantizer_dropout=args.dropout)
    vq = VectorQuantizer(cfg).train()
    vq.init_from_latents(train)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        vq.reseed(args.seed * 1_000_003 + step)
        vq(train[torch.randint(len(train), (args.batch,), generator=g)][:, :, None])
    return vq.eval()


def rvq_points(clips: list[dict], backbone, quantizer, kmeans_snr: list[float]) -> list[dict]:
    points = []
    for stages in range(1, quantizer.num_stages + 1):
        measured = fixed = seconds = 0.0
        z_all, zq_all, decoded = [], [], []
        for clip in clips:
            codes = [quantizer.residual_indices(m[None], stages)[0] for m in clip["means"]]
            num_samples = clip["wav"].numel()
            ranged = codec.codebook_container(codes, clip["segments"], num_samples, quantizer, backbone, clip["level"])
            plain = codec.codebook_container(codes, clip["segments"], num_samples, quantizer, backbone, clip["level"], entropy=False)
            measured += len(dumps(ranged)) * 8
            fixed += len(dumps(plain)) * 8
            seconds += num_samples / backbone.spec.sample_rate
            decoded.append(codec.decode_container(ranged, backbone, quantizer))
            z_all += clip["means"]
            zq_all += [quantizer.decode_residual(c[None])[0] for c in codes]
        points.append({"codec": f"rvq@{stages}", "nominal_bps": stages * quantizer.bits_per_index * 400, "measured_bps": measured / seconds,
                       "fixed_bps": fixed / seconds, "latent_snr_db": snr_db(vectors(z_all), vectors(zq_all)),
                       "kmeans_snr_db": kmeans_snr[stages - 1] if kmeans_snr else None, **distortions(clips, decoded)})
    return points


def ddcm_points(clips: list[dict], backbone, diffusion, grid: list[tuple[int, int]], seed: int) -> list[dict]:
    from recon.ddcm import compress

    points = []
    denoiser = diffusion.denoiser("", 7.5)
    for steps, K in grid:
        settings = VariantSettings(seed=seed, ddcm_steps=steps, ddcm_k=K)
        measured = seconds = 0.0
        z_all, zq_all, decoded = [], [], []
        for clip in clips:
            scale = diffusion.scaling_factor
            results = [compress(denoiser, m[None] * scale, steps, K, seed) for m in clip["means"]]
            container = codec.ddcm_container([r[0][0] for r in results], clip["segments"], clip["wav"].numel(), settings, diffusion,
                                             backbone, clip["level"])
            measured += len(dumps(container)) * 8
            seconds += clip["wav"].numel() / backbone.spec.sample_rate
            decoded.append(codec.decode_container(container, backbone, diffusion=diffusion))
            z_all += clip["means"]
            zq_all += [r[1][0] / scale for r in results]
        points.append({"codec": f"ddcm@T{steps}-K{K}", "nominal_bps": settings.ddcm_bitrate_bps, "measured_bps": measured / seconds,
                       "fixed_bps": measured / seconds, "latent_snr_db": snr_db(vectors(z_all), vectors(zq_all)),
                       "kmeans_snr_db": None, **distortions(clips, decoded)})
    return points


PANELS = (("latent_snr_db", "latent SNR (dB, higher is better)"), ("log_mel_db", "log-mel distance (dB, lower is better)"),
          ("visqol_audio", "ViSQOL audio mode (MOS, higher is better)"))


def plot(points: list[dict], path: Path) -> None:
    """One panel per distortion (latent SNR, log-mel distance, ViSQOL audio), bits/s on a log scale;
    a point without the metric (Opus has no latent) is left out of that panel."""
    panels = [(m, label) for m, label in PANELS if any(p.get(m) is not None for p in points)]
    width, height, pad = 500 * len(panels), 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    rates = [p[k] for p in points for k in ("nominal_bps", "measured_bps")]
    lo, hi = math.log10(min(rates)) - 0.1, math.log10(max(rates)) + 0.1
    colours = {"rvq": (31, 119, 180), "ddcm": (214, 39, 40), "opus": (44, 160, 44)}
    for panel, (metric, label) in enumerate(panels):
        x0, x1, y0, y1 = pad + panel * width // len(panels), (panel + 1) * width // len(panels) - 20, pad, height - pad
        shown = [p for p in points if p.get(metric) is not None]
        values = [p[metric] for p in shown]
        vmin, vmax = min(values) - 0.5, max(values) + 0.5
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, y1 + 20), f"bits/s, log scale: {10 ** lo:.0f} .. {10 ** hi:.0f}", fill="black")
        draw.text((x0, y0 - 20), f"{label}: {vmin:.1f} (bottom) .. {vmax:.1f} (top)", fill="black")
        for kind in ("nominal_bps", "measured_bps"):
            for p in shown:
                x = x0 + (math.log10(p[kind]) - lo) / (hi - lo) * (x1 - x0)
                y = y1 - (p[metric] - vmin) / (vmax - vmin) * (y1 - y0)
                colour = colours[p["codec"].split("@")[0]]
                r = 5
                if kind == "nominal_bps":
                    draw.ellipse([x - r, y - r, x + r, y + r], outline=colour)
                else:
                    draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
                draw.text((x + 7, y - 7), p["codec"], fill=colour)
    draw.text((pad, 10), "o nominal rate, filled square measured (the written file); blue rvq, red ddcm, green opus", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="random:full", help="backbone of the RVQ points (default: %(default)s)")
    p.add_argument("--ckpt", help="a ladder trained by train.py (its backbone unless --backbone); default: train one here")
    p.add_argument("--held-out", default=HELD_OUT, help="comma-separated clips of examples/audio evaluated (the rest train), or 'all' (needs --ckpt)")
    p.add_argument("--opus", default=OPUS_KBPS, help="Opus target rates in kb/s, comma-separated, or '' for none (default: %(default)s)")
    p.add_argument("--no-perceptual", action="store_true", help="skip ViSQOL and PESQ (seconds per clip and point)")
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--codes", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1500, help="training minibatches of the ladder")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dropout", type=float, default=0.5, help="quantizer dropout of the ladder trained here (default: %(default)s)")
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--diffusion", help="AudioLDM2 pipeline for DDCM points (cvssp/audioldm2, a folder, random:tiny)")
    p.add_argument("--ddcm", default="6x64,12x64,12x256,24x256", help="DDCM points as STEPSxK, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="bench/rate_distortion.png")
    args = p.parse_args()
    global PERCEPTUAL
    PERCEPTUAL = not args.no_perceptual
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    names = [c.relative_to(ROOT / "examples" / "audio").as_posix() for c in CLIPS]
    held = set(names) if args.held_out == "all" else set(args.held_out.split(","))
    if held - set(names):
        p.error(f"--held-out names clips that examples/audio does not have: {sorted(held - set(names))}")
    if args.held_out == "all" and not args.ckpt:
        p.error("--held-out all leaves nothing to train the ladder on: pass --ckpt")
    evaluated = [c for c in CLIPS if c.relative_to(ROOT / "examples" / "audio").as_posix() in held]
    training = [c for c in CLIPS if c not in evaluated]
    if args.ckpt:
        from recon.lit import load_inference_codebook

        backbone, quantizer = load_inference_codebook(args.ckpt, backbone=args.backbone if args.backbone != "random:full" else None)
    else:
        backbone, quantizer = FrozenAudioLDM2.from_source(args.backbone), None
    frontend = MelFrontEnd(backbone.spec)
    train_clips, eval_clips = encode_clips(training, backbone, frontend), encode_clips(evaluated, backbone, frontend)
    train = vectors([m for c in train_clips for m in c["means"]]) if train_clips else torch.zeros(0, backbone_channels(eval_clips))
    if quantizer is None:
        quantizer = train_ladder(train, args)
        # code_frequency counted training minibatches: the range coder's prior, as train.py keeps it.
    held_out = vectors([m for c in eval_clips for m in c["means"]])
    kmeans_snr, residual_train, residual_eval, total = [], train.clone(), held_out.clone(), torch.zeros_like(held_out)
    for _ in range(quantizer.num_stages if len(train) else 0):
        codes = lloyd(residual_train, quantizer.cfg.num_codes, args.kmeans_iters, args.seed)
        residual_train = residual_train - codes[nearest(residual_train, codes)]
        step = codes[nearest(residual_eval, codes)]
        total, residual_eval = total + step, residual_eval - step
        kmeans_snr.append(snr_db(held_out, total))
    points = rvq_points(eval_clips, backbone, quantizer, kmeans_snr)
    if args.diffusion:
        from recon.diffusion import load_diffusion_components

        diffusion = load_diffusion_components(args.diffusion)
        ddcm_backbone = FrozenAudioLDM2(diffusion.pipe.vae, diffusion.pipe.vocoder, source=args.diffusion)
        ddcm_clips = encode_clips(evaluated, ddcm_backbone, MelFrontEnd(ddcm_backbone.spec))
        grid = [tuple(int(v) for v in point.split("x")) for point in args.ddcm.split(",")]
        points += ddcm_points(ddcm_clips, ddcm_backbone, diffusion, grid, args.seed)
    if args.opus:
        points += opus_points(eval_clips, [float(v) for v in args.opus.split(",")], backbone.spec.sample_rate)
    plot(points, ROOT / args.plot)
    columns = [("latent_snr_db", "latent SNR"), ("kmeans_snr_db", "k-means"), ("log_mel_db", "log-mel dB")]
    if PERCEPTUAL:
        columns += [("visqol_audio", "ViSQOL aud"), ("visqol_speech", "ViSQOL sp"), ("pesq_wb", "PESQ sp")]
    print(f"{'codec':18s} {'nominal b/s':>11s} {'measured':>9s} {'fixed':>9s} " + " ".join(f"{label:>10s}" for _, label in columns))
    for q in points:
        cells = [f"{q[k]:10.2f}" if q.get(k) is not None else f"{'-':>10s}" for k, _ in columns]
        print(f"{q['codec']:18s} {q['nominal_bps']:11.1f} {q['measured_bps']:9.1f} {q['fixed_bps']:9.1f} " + " ".join(cells))
    result = {"bench": "rate_distortion", "backbone": backbone.source, "ckpt": args.ckpt, "steps": args.steps, "dropout": args.dropout, "held_out": sorted(held),
              "train_vectors": len(train), "held_out_vectors": len(held_out), "threads": torch.get_num_threads(),
              "loadavg_1m": os.getloadavg()[0], "seconds": time.perf_counter() - started, "plot": args.plot,
              "points": [{k: round(v, 3) if isinstance(v, float) else v for k, v in q.items()} for q in points]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
