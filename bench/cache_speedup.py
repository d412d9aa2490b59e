"""Codebook-training throughput with the latent cache vs with the frozen encoder in the loop.

    python bench/cache_speedup.py                          # full-size random backbone (random:full)
    python bench/cache_speedup.py --backbone random:tiny   # quick run
    python bench/cache_speedup.py --audio-steps 10 --cache-steps 300 --mem-segments 256

One model (``CodebookTrainer``, default codebook + dead_code_threshold 100), one process, two
``Trainer.fit`` runs over the same clips (examples/audio, one 10.24 s segment per clip):
* cache: ``AudioDataModule(cache_dir=...)``, i.e. ``LatentDataset`` batches of cached posteriors;
* audio: ``AudioDataModule`` without a cache, i.e. waveforms through the front-end and encoder.
Throughput (samples = 10.24 s segments per second) is measured from the end of the ``--warmup``-th
training step to the end of the last one: the steady-state loop including data loading, excluding
the one-time cache build (timed separately: fingerprint + encoding every segment) and the k-means init.

Also: cache bytes on disk per hour of audio, and peak RSS growth while training one epoch from a
cache of N and 4N segments (``--mem-segments`` N), each in a fresh subprocess, with an in-RAM copy
of the same latents as a control that shows the measurement sees data held in memory. The memory
test's cache entries are built with the ``random:tiny`` encoder (same [2, 8, 256, 16] float32 entry
as any AudioLDM2-shaped backbone, 50x faster to build) from distinct synthetic clips; the model that
trains on them uses ``--backbone``. Peak RSS is Linux's VmHWM, reset after setup via
/proc/self/clear_refs (falls back to ru_maxrss). Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
SEGMENTS_PER_FILE = 8  # synthetic clips of the memory test


def quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import lightning  # noqa: F401  (sets its loggers to INFO on import; quiet them afterwards)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_model(args):
    from recon.codebook import CodebookConfig
    from recon.lit import CodebookTrainer

    cfg = CodebookConfig(update=args.update, dead_code_threshold=100)
    return CodebookTrainer(backbone=args.backbone, codebook=cfg, kmeans_init_batches=1, seed=0)


def fit(model, steps: int, datamodule, callbacks=()):
    import lightning as L

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1 if steps > 0 else 1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=list(callbacks),
    )
    trainer.fit(model, datamodule=datamodule)


def step_timer():
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.ends, self.sizes = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            self.sizes.append(len(batch["index"]))

        def throughput(self, warmup: int) -> tuple[float, int, float]:
            n = sum(self.sizes[warmup:])
            seconds = self.ends[-1] - self.ends[warmup - 1]
            return n / seconds, n, seconds

    return StepTimer()


def throughput_part(args, tmp: Path) -> dict:
    from recon.data import AudioDataModule, audio_duration

    model = make_model(args)
    dm_kwargs = dict(root=args.audio, batch_size=args.batch_size, val_fraction=0.0, seed=0)
    cached_dm = AudioDataModule(**dm_kwargs, cache_dir=str(tmp / "latents"))
    t = time.perf_counter()
    cached_dm.attach_latent_cache(model.backbone)  # one-time build: fingerprint + encode every segment
    build_s = time.perf_counter() - t
    segments = len(cached_dm.train_set)
    files = list((tmp / "latents").rglob("*.npy"))
    cache_bytes = sum(f.stat().st_size for f in files)
    audio_s = sum(audio_duration(path) for path in {seg.path for seg in cached_dm.train_set.segments})
    print(f"cache built: {segments} segments in {build_s:.1f} s, {cache_bytes} bytes", flush=True)

    results = {}
    for name, dm, steps in (("cache", cached_dm, args.cache_steps), ("audio", AudioDataModule(**dm_kwargs), args.audio_steps)):
        timer = step_timer()
        fit(model, args.warmup + steps, datamodule=dm, callbacks=[timer])
        rate, n, seconds = timer.throughput(args.warmup)
        results[name] = {"samples_per_s": rate, "samples": n, "timed_s": seconds, "steps": steps}
        print(f"{name}: {n} samples in {seconds:.2f} s -> {rate:.3f} samples/s", flush=True)
    return {
        "segments": segments, "cache_build_s": build_s, "cache_build_s_per_segment": build_s / segments,
        "cache_bytes": cache_bytes, "cache_files": len(files), "audio_duration_s": audio_s,
        "cache_mib_per_audio_hour": cache_bytes / audio_s * 3600 / 2**20,
        "cache_mib_per_segment_hour": cache_bytes / (segments * model.backbone.spec.duration) * 3600 / 2**20,
        **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()},
        "speedup": results["cache"]["samples_per_s"] / results["audio"]["samples_per_s"],
    }


# ------------------------------------------------------------------------------------ memory test
def synthetic_clips(folder: Path, count: int, seconds: float, sr: int = 16000) -> None:
    """Distinct clips: a few random tones plus noise under a random tremolo, one seed per file."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(count):
        rng = np.random.default_rng(i)
        tones = sum(rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * rng.uniform(80, 4000) * t) for _ in range(3))
        wav = (tones + 0.05 * rng.standard_normal(len(t))) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t))
        sf.write(folder / f"clip{i:04d}.wav", (0.3 * wav / np.abs(wav).max()).astype(np.float32), sr, subtype="PCM_16")


def memory_worker(spec: dict) -> dict:
    """Runs in a fresh process: one epoch over `files` from the latent cache (or an in-RAM copy)."""
    quiet()
    torch.manual_seed(0)
    import lightning as L

    from recon.cache import LatentCache, LatentDataset
    from recon.data import AudioFolder

    args = argparse.Namespace(**spec["args"])
    dataset = LatentDataset(AudioFolder(files=[Path(f) for f in spec["files"]]), LatentCache(spec["cache_root"], spec["fingerprint"]))
    model = make_model(args)

    def status(key: str) -> int:  # KiB
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

    rss_before = status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        rss_before, method = max(rss_before, status("VmHWM")), "ru_maxrss (peak since start)"
    if spec["in_ram"]:  # the control: the same items, all held in memory
        dataset = torch.utils.data.StackDataset(**{k: torch.stack([dataset[i][k] for i in range(len(dataset))]) for k in ("mean", "std")},
                                                index=torch.arange(len(dataset)))
    t = time.perf_counter()
    # A datamodule, not train_dataloaders=: CodebookTrainer.on_fit_start needs one (see bench/README.md).
    fit(model, -1, L.LightningDataModule.from_datasets(train_dataset=dataset, batch_size=args.batch_size, shuffle=True))
    return {"segments": len(dataset), "in_ram": spec["in_ram"], "rss_before_mib": rss_before / 1024,
            "peak_growth_mib": (status("VmHWM") - rss_before) / 1024, "fit_s": time.perf_counter() - t, "method": method}


def memory_part(args, tmp: Path) -> list[dict]:
    from recon.backbone import FrozenAudioLDM2
    from recon.cache import LatentCache, backbone_fingerprint
    from recon.data import AudioFolder

    n = args.mem_segments
    files_per_n = max(1, n // SEGMENTS_PER_FILE)
    folder = tmp / "mem_audio"
    synthetic_clips(folder, 4 * files_per_n, SEGMENTS_PER_FILE * 10.24)
    files = sorted(folder.glob("*.wav"))
    encoder = FrozenAudioLDM2.from_source("random:tiny")
    fingerprint = backbone_fingerprint(encoder)
    cache = LatentCache(tmp / "mem_latents", fingerprint)
    t = time.perf_counter()
    cache.build(AudioFolder(files=files), encoder, batch_size=8, progress=False)
    print(f"memory test: cached {4 * files_per_n * SEGMENTS_PER_FILE} synthetic segments in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for in_ram in (False, True):
        for count in (files_per_n, 4 * files_per_n):
            spec = {"args": vars(args), "files": [str(f) for f in files[:count]], "cache_root": str(tmp / "mem_latents"),
                    "fingerprint": fingerprint, "in_ram": in_ram}
            proc = subprocess.run([sys.executable, __file__, "--memory-worker", json.dumps(spec)], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"memory worker failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"memory: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="random:full")
    p.add_argument("--audio", default=str(ROOT / "examples/audio"))
    p.add_argument("--batch-size", type=int, default=2, help="segments per step (6 example clips = 3 even batches)")
    p.add_argument("--update", choices=["grad", "ema"], default="grad")
    p.add_argument("--warmup", type=int, default=1, help="training steps left out of the throughput")
    p.add_argument("--audio-steps", type=int, default=4, help="timed steps with the encoder in the loop")
    p.add_argument("--cache-steps", type=int, default=60, help="timed steps from the latent cache")
    p.add_argument("--mem-segments", type=int, default=64, help="N of the N vs 4N memory test (0 skips it)")
    p.add_argument("--target", type=float, default=20.0)
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    quiet()
    torch.manual_seed(0)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recon_cache_bench_") as tmp:
        r = throughput_part(args, Path(tmp))
        mem = memory_part(args, Path(tmp)) if args.mem_segments > 0 else []

    print(f"\nbackbone {args.backbone}, batch {args.batch_size} segments, update {args.update}, torch threads {torch.get_num_threads()}")
    print(f"{'path':<8}{'samples/s':>12}{'s/sample':>10}{'timed steps':>13}")
    for name in ("audio", "cache"):
        print(f"{name:<8}{r[f'{name}_samples_per_s']:>12.3f}{1 / r[f'{name}_samples_per_s']:>10.4f}{r[f'{name}_steps']:>13}")
    ok = r["speedup"] >= args.target
    print(f"speedup {r['speedup']:.1f}x (target >= {args.target:g}x: {'PASS' if ok else 'FAIL'})")
    print(f"one-time cache build: {r['cache_build_s']:.1f} s for {r['segments']} segments ({r['cache_build_s_per_segment']:.2f} s/segment)")
    print(f"cache on disk: {r['cache_bytes']} bytes for {r['audio_duration_s']:.1f} s of audio = {r['cache_mib_per_audio_hour']:.1f} MiB per "
          f"audio hour ({r['cache_mib_per_segment_hour']:.1f} MiB per hour of 10.24 s segments)")
    if mem:
        print(f"\n{'dataset':<10}{'segments':>9}{'peak RSS growth MiB':>21}{'fit s':>9}")
        for row in mem:
            print(f"{'in-RAM' if row['in_ram'] else 'cache':<10}{row['segments']:>9}{row['peak_growth_mib']:>21.1f}{row['fit_s']:>9.1f}")
    growth = {("ram" if m["in_ram"] else "cache") + f"_{m['segments']}": round(m["peak_growth_mib"], 1) for m in mem}
    summary = {"bench": "cache_speedup", "backbone": args.backbone, "batch_size": args.batch_size, "update": args.update,
               "threads": torch.get_num_threads(), **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
               "target": args.target, "pass": ok, "peak_rss_growth_mib": growth,
               "rss_method": mem[0]["method"] if mem else None, "loadavg_1m": os.getloadavg()[0], "runtime_s": round(time.perf_counter() - t_start, 1)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
