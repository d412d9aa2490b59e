"""How much the variant runner saves, and what it costs, on the full-size (random-weight) backbone.

    python bench/infer_vs_naive.py                 # defaults: 2 clips, every non-diffusion variant
    python bench/infer_vs_naive.py --clips 4 --ddp-clips 8 --long-seconds 180

Measured in one run, on this machine:
1. runner vs naive: every variant on the same clips through ``VariantRunner`` + ``Trainer.predict``
   (one backbone load, one encode per segment) against the loop the original scripts ran (load
   the backbone, read the file, encode, run one variant, write; for every file x variant).
   Both write the wavs and skip the metrics.
2. runner overhead: runner time over the bare forwards it must do (one encode, each variant's
   function) called in a plain loop.
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

import lightning as L
import numpy as np
import soundfile as sf
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.audio import MelFrontEnd, load_audio, normalise, split_segments  # noqa: E402
from recon.backbone import FrozenAudioLDM2, make_backbone_folder  # noqa: E402
from recon.codebook import CodebookConfig, VectorQuantizer  # noqa: E402
from recon.metrics import log_mel_distance_db  # noqa: E402
from recon.files import write_wav  # noqa: E402
from recon.runner import InferenceFiles, VariantRunner, collate_files, output_relpath  # noqa: E402
from recon.variants import VARIANTS, Models, VariantInput, VariantSettings  # noqa: E402

CLIPS = sorted((ROOT / "examples" / "audio").rglob("*.flac"))


class WavOnlyWriter(BasePredictionWriter):
    def __init__(self, out: Path):
        super().__init__(write_interval="batch")
        self.out = out

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for result in prediction:
            for out in result.variants:
                write_wav(self.out / out.variant / output_relpath(result.relpath), out.wav, 16000)


def make_models(source: str) -> Models:
    backbone = FrozenAudioLDM2.from_source(source)
    torch.manual_seed(0)
    # Codebook quality does not change the cost of a variant; a random 1024 x 8 codebook will do.
    quantizer = VectorQuantizer(CodebookConfig(kmeans_init=False)).eval()
    return Models(backbone, MelFrontEnd(backbone.spec), quantizer)


def run_runner(models: Models, variants, files: list[Path], out: Path) -> float:
    dataset = InferenceFiles(files)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_files)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[WavOnlyWriter(out)],
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.predict(VariantRunner(models, variants, VariantSettings(), segment_batch=1), loader, return_predictions=False)
    return time.perf_counter() - start


def run_bare(models: Models, variants, files: list[Path]) -> float:
    """The forwards alone: one encode per segment, then each variant's function."""
    total = 0.0
    with torch.no_grad():
        for path in files:
            for i, wav in enumerate(split_segments(normalise(load_audio(path)))):
                start = time.perf_counter()
                logmel = models.frontend(wav[None])
                posterior = models.backbone.encode(logmel)
                x = VariantInput(wav[None], logmel, posterior.mean, posterior.std, [f"{path.name}#{i}"])
                for variant in variants:
                    variant.fn(x, models, VariantSettings())
                total += time.perf_counter() - start
    return total


def run_naive(folder: str, variants, files: list[Path], out: Path) -> float:
    """The original scripts' shape: everything reloaded and re-encoded per file and variant."""
    start = time.perf_counter()
    for path in files:
        for variant in variants:
            models = make_models(folder)
            with torch.no_grad():
                wav = split_segments(normalise(load_audio(path)))
                logmel = models.frontend(wav)
                posterior = models.backbone.encode(logmel)
                x = VariantInput(wav, logmel, posterior.mean, posterior.std, [f"{path.name}#{i}" for i in range(len(wav))])
                rec = variant.fn(x, models, VariantSettings())
            write_wav(out / variant.name / f"{path.stem}.wav", rec.wav.reshape(-1).numpy(), 16000)
    return time.perf_counter() - start


def run_infer(args: list[str]) -> float:
    """Wall seconds of an infer.py subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK")}
    env["HF_HUB_OFFLINE"] = "1"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "infer.py"), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2, help="clips for runner vs naive")
    parser.add_argument("--ddp-clips", type=int, default=8)
    parser.add_argument("--long-seconds", type=float, default=180.0)
    parser.add_argument("--size", default="full", choices=["full", "tiny"], help="random backbone size (tiny: a quick check of the script)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["naive", "ddp", "bf16", "memory"])
    args = parser.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="recon-bench-"))
    folder = str(make_backbone_folder(args.size, tmp / f"backbone-{args.size}"))
    variants = [v for v in VARIANTS.values() if "diffusion" not in v.requires]
    files = [CLIPS[i % len(CLIPS)] for i in range(args.clips)]
    result: dict = {"bench": "infer_vs_naive", "backbone": f"{args.size} (random weights)", "threads": torch.get_num_threads(),
                    "variants": [v.name for v in variants], "clips": len(files)}

    models = make_models(folder)
    result["runner_s"] = run_runner(models, variants, files, tmp / "runner")
    result["bare_forwards_s"] = run_bare(models, variants, files)
    result["runner_over_bare"] = result["runner_s"] / result["bare_forwards_s"]
    if "naive" not in args.skip:
        result["naive_s"] = run_naive(folder, variants, files, tmp / "naive")
        result["naive_over_runner"] = result["naive_s"] / result["runner_s"]

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
        "naive_over_runner >= 1.3": result.get("naive_over_runner", 0) >= 1.3,
        "runner_over_bare <= 1.10": result["runner_over_bare"] <= 1.10,
        "ddp_speedup >= 1.6": result.get("ddp_speedup", 0) >= 1.6,
        "peak_rss <= 4 GiB": result.get("peak_rss_long_gib", 99) <= 4.0,
        "peak_rss flat (long/short <= 1.1)": result.get("peak_rss_long_over_short", 99) <= 1.1,
    }
    result["targets"] = targets
    for key, value in result.items():
        if key != "targets":
            print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    for key, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {key}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
