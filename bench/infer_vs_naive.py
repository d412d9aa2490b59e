"""How much ``infer.py`` saves, and what it costs, on the full-size (random-weight) backbone.

    python bench/infer_vs_naive.py                 # defaults: a 1 s and an 8 s clip; vae_mode, vae_sample, vae_mixed
    python bench/infer_vs_naive.py --variants all --ddp-clips 8 --long-seconds 180

Measured in one run, on this machine:
1. ``infer.py`` (a subprocess, metrics on, PESQ/STOI off) against the loop the original scripts
   ran (load the backbone, read the file, encode, run one variant, write; for every file x
   variant). The naive loop runs in this process; the imports a script of it would pay once are
   measured in a fresh process and added. ``infer.py``'s start-up (process start to its first
   batch) comes from its ``summary.json``.
2. ``infer.py`` overhead: its time after start-up over the bare forwards it must do (one encode
   per segment, each variant's function) called in a plain loop.
3. ``infer.py`` on 2 DDP CPU processes vs 1 (``vae_mode`` only, ``--ddp-clips`` clips).
4. ``--precision bf16-mixed`` vs fp32 (``vae_mode``): speed ratio and the log-mel difference (dB).
5. Peak RSS of ``infer.py`` at batch 1 (``vae_mode``): a 10.24 s file vs a ``--long-seconds`` file.
Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.audio import MelFrontEnd, load_audio, normalise, split_file, split_segments  # noqa: E402
from recon.backbone import FrozenAudioLDM2, make_backbone_folder  # noqa: E402
from recon.codebook import CodebookConfig, VectorQuantizer  # noqa: E402
from recon.metrics import log_mel_distance_db  # noqa: E402
from recon.files import write_wav  # noqa: E402
from recon.variants import VARIANTS, Models, VariantInput, VariantSettings  # noqa: E402

CLIPS = sorted((ROOT / "examples" / "audio").rglob("*.flac"))


def make_models(source: str) -> Models:
    backbone = FrozenAudioLDM2.from_source(source)
    torch.manual_seed(0)
    # Codebook quality does not change the cost of a variant; a random 1024 x 8 codebook will do.
    quantizer = VectorQuantizer(CodebookConfig(kmeans_init=False)).eval()
    return Models(backbone, MelFrontEnd(backbone.spec), quantizer)


def run_bare(models: Models, variants, files: list[Path]) -> float:
    """The forwards alone: one encode per segment (cut as infer.py cuts them), then each variant's function."""
    total = 0.0
    with torch.no_grad():
        for path in files:
            for i, wav in enumerate(split_file(normalise(load_audio(path)))):
                start = time.perf_counter()
                logmel = models.frontend(wav[None])
                posterior = models.backbone.encode(logmel)
                x = VariantInput(wav[None], logmel, posterior.mean, posterior.std, [f"{path.name}#{i}"])
                for variant in variants:
                    variant.run(x, models, VariantSettings())
                total += time.perf_counter() - start
    return total


def run_naive(folder: str, variants, files: list[Path], out: Path) -> float:
    """The original scripts' shape: everything reloaded and re-encoded per file and variant."""
    start = time.perf_counter()
    for path in files:
        for variant in variants:
            models = make_models(folder)
            with torch.no_grad():
                wav = split_segments(normalise(load_audio(path)))  # padded to 10.24 s, as the scripts did
                logmel = models.frontend(wav)
                posterior = models.backbone.encode(logmel)
                x = VariantInput(wav, logmel, posterior.mean, posterior.std, [f"{path.name}#{i}" for i in range(len(wav))])
                rec = variant.run(x, models, VariantSettings())
            write_wav(out / variant.name / f"{path.stem}.wav", rec.wav.reshape(-1).numpy(), 16000)
    return time.perf_counter() - start


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WANDB_SERVICE")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_infer(args: list[str]) -> float:
    """Wall seconds of an infer.py subprocess."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "infer.py"), *args], env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return time.perf_counter() - start


def import_seconds() -> float:
    """What a fresh process pays to import what infer.py imports."""
    code = "import time; t = time.perf_counter(); import infer; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def make_clips(folder: Path, seconds: list[float]) -> list[Path]:
    """Clips of the given lengths cut from the example speech (longer ones first)."""
    folder.mkdir(parents=True)
    speech = sorted((ROOT / "examples" / "audio" / "speech").glob("*.flac"))
    paths = []
    for i, length in enumerate(seconds):
        data, sr = sf.read(str(speech[i % len(speech)]), dtype="float32")
        path = folder / f"clip{i}_{length:g}s.wav"
        sf.write(str(path), np.resize(data, int(length * sr)), sr)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-seconds", default="1,8", help="lengths of the clips for infer.py vs naive (default: %(default)s)")
    parser.add_argument("--variants", default="vae_mode,vae_sample,vae_mixed", help="variants for infer.py vs naive, or 'all' (non-diffusion)")
    parser.add_argument("--ckpt", help="codebook checkpoint for the codebook variants of --variants")
    parser.add_argument("--ddp-clips", type=int, default=8)
    parser.add_argument("--long-seconds", type=float, default=180.0)
    parser.add_argument("--size", default="full", choices=["full", "tiny"], help="random backbone size (tiny: a quick check of the script)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["naive", "ddp", "bf16", "memory"])
    args = parser.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="recon-bench-"))
    folder = str(make_backbone_folder(args.size, tmp / f"backbone-{args.size}"))
    names = [v.name for v in VARIANTS.values() if "diffusion" not in v.requires] if args.variants == "all" else args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}")
    variants = [VARIANTS[name] for name in names]
    files = make_clips(tmp / "clips", [float(s) for s in args.clip_seconds.split(",")])
    result: dict = {"bench": "infer_vs_naive", "backbone": f"{args.size} (random weights)", "threads": torch.get_num_threads(),
                    "loadavg_1m": os.getloadavg()[0], "variants": names, "clip_seconds": args.clip_seconds}

    models = make_models(folder)
    infer_args = ["--backbone", folder, "--variants", ",".join(names), "--input", str(tmp / "clips"),
                  "--output", str(tmp / "infer"), "--wandb", "off", "--no-perceptual", "--accelerator", "cpu"]
    if any("codebook" in v.requires for v in variants):
        if not args.ckpt:
            parser.error("the codebook variants need --ckpt (a codebook trained on this backbone size)")
        infer_args += ["--ckpt", args.ckpt]
    result["infer_s"] = run_infer(infer_args)
    timing = json.loads((tmp / "infer" / "summary.json").read_text())["timing"]
    result["infer_startup_s"] = timing["startup_s"]
    result["infer_after_startup_s"] = result["infer_s"] - timing["startup_s"]
    result["infer_stage_s"] = timing["stage_s"]
    result["bare_forwards_s"] = run_bare(models, variants, files)
    result["infer_after_startup_over_bare"] = result["infer_after_startup_s"] / result["bare_forwards_s"]
    if "naive" not in args.skip:
        result["naive_loop_s"] = run_naive(folder, variants, files, tmp / "naive")
        result["imports_s"] = import_seconds()
        result["naive_s"] = result["naive_loop_s"] + result["imports_s"]
        result["naive_over_infer"] = result["naive_s"] / result["infer_s"]

    common = ["--backbone", folder, "--variants", "vae_mode", "--wandb", "off", "--no-perceptual", "--accelerator", "cpu", "--batch-size", "1"]
    ddp_in = tmp / "ddp_in"
    ddp_in.mkdir()
    for i in range(args.ddp_clips):
        data, sr = sf.read(str(CLIPS[i % len(CLIPS)]), dtype="float32")
        sf.write(str(ddp_in / f"clip{i}.wav"), data, sr)
    if "ddp" not in args.skip:
        one = run_infer([*common, "--input", str(ddp_in), "--output", str(tmp / "ddp1"), "--devices", "1"])
        two = run_infer([*common, "--input", str(ddp_in), "--output", str(tmp / "ddp2"), "--devices", "2", "--strategy", "ddp"])
        result.update(ddp1_s=one, ddp2_s=two, ddp_speedup=one / two)
    if "bf16" not in args.skip:
        fp32 = run_infer([*common, "--input", str(ddp_in), "--output", str(tmp / "fp32")])
        bf16 = run_infer([*common, "--input", str(ddp_in), "--output", str(tmp / "bf16"), "--precision", "bf16-mixed"])
        diffs = []
        for path in sorted((tmp / "fp32" / "vae_mode").glob("*.wav")):
            a, _ = sf.read(str(path), dtype="float32")
            b, _ = sf.read(str(tmp / "bf16" / "vae_mode" / path.name), dtype="float32")
            diffs.append(float(log_mel_distance_db(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0]))
        result.update(fp32_s=fp32, bf16_s=bf16, bf16_speedup=fp32 / bf16, bf16_log_mel_diff_db=float(np.mean(diffs)))
    if "memory" not in args.skip:
        short, long = tmp / "short.wav", tmp / "long.wav"
        data, sr = sf.read(str(CLIPS[0]), dtype="float32")
        sf.write(str(short), np.resize(data, int(10.24 * sr)), sr)
        sf.write(str(long), np.resize(data, int(args.long_seconds * sr)), sr)
        # ru_maxrss of children is a running maximum: measure each in its own wrapper process.
        peaks = {}
        for name, path in (("short", short), ("long", long)):
            code = (
                "import resource, subprocess, sys;"
                f"subprocess.run({[sys.executable, str(ROOT / 'infer.py'), *common, '--input', str(path), '--output', str(tmp / ('mem_' + name))]!r}, check=True, capture_output=True);"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            peaks[name] = int(out.stdout.strip().splitlines()[-1]) / 2**20
        result.update(peak_rss_short_gib=peaks["short"], peak_rss_long_gib=peaks["long"], long_seconds=args.long_seconds,
                      peak_rss_long_over_short=peaks["long"] / peaks["short"])

    targets = {
        "naive_over_infer >= 1.3": result.get("naive_over_infer", 0) >= 1.3,
        "infer_after_startup_over_bare <= 1.10": result["infer_after_startup_over_bare"] <= 1.10,
        "infer_startup_s <= 10": result["infer_startup_s"] <= 10.0,
        "ddp_speedup >= 1.6": result.get("ddp_speedup", 0) >= 1.6,
        "peak_rss <= 4 GiB": result.get("peak_rss_long_gib", 99) <= 4.0,
        "peak_rss flat (long/short <= 1.1)": result.get("peak_rss_long_over_short", 99) <= 1.1,
    }
    result["targets"] = targets
    for key, value in result.items():
        if key not in ("targets", "infer_stage_s"):
            print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    for key, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {key}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
