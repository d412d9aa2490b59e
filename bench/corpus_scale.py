"""What a large corpus costs: infer.py over N one-second files given as a list file, for each N.

    python bench/corpus_scale.py --files 1000,10000            # the target: 10,000 vs 1,000 files
    python bench/corpus_scale.py --files 50,200 --keep DIR     # a quick check

For each N, writes N one-second 16 kHz tones (PCM 16) and a list file naming them, runs
``infer.py --input LIST`` in a subprocess on the tiny random backbone (``vae_mode``, every torch
metric, PESQ/STOI off, no W&B), and measures the peak resident memory of that process (rank 0: the
only one) with ``wait4``, its wall time, and the start-up and predict times from its summary.json.
Prints a table, then one JSON object as its last line:

  runs: [{files, peak_rss_mib, wall_s, seconds_per_file (predict_s / files), startup_s, predict_s,
          journal_mib, output_mib, rss_at_quarter_mib, rss_at_end_mib, rss_slope_mib_per_1000_files (RSS
          sampled once a second against the files committed, slope fitted over the second half)}], rss_ratio (peak RSS of the largest N over the smallest N),
  target_rss_ratio (1.10), loadavg_1m, threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TARGET_RSS_RATIO = 1.10


def make_corpus(folder: Path, count: int, seconds: float, sample_rate: int = 16000) -> Path:
    """``count`` distinct tones (frequency and noise seeded by position) and ``files.txt`` naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    names = []
    for i in range(count):
        name = f"clips/{i // 1000:03d}/clip{i:05d}.wav"
        path = folder / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = np.random.default_rng(i).standard_normal(t.size)
            sf.write(str(path), (0.3 * np.sin(2 * np.pi * (100 + i % 700) * t) + 0.01 * noise).astype(np.float32), sample_rate, subtype="PCM_16")
        names.append(name)
    listing = folder / f"files-{count}.txt"
    listing.write_text("\n".join(names) + "\n")
    return listing


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run(listing: Path, out: Path, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "WANDB_SERVICE")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "infer.py"), "--backbone", "random:tiny", "--input", str(listing), "--output", str(out),
               "--variants", args.variants, "--batch-size", str(args.batch_size), "--wandb", "off", "--no-perceptual",
               "--accelerator", "cpu", "--report-max-files", "4"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, float]] = []  # (files committed, RSS MiB) once a second
    sampler = threading.Thread(target=sample_rss, args=(proc.pid, out, samples), daemon=True)
    sampler.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (KiB on Linux)
    wall = time.perf_counter() - t0
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"infer.py failed ({status}):\n{stderr[-3000:]}")
    timing = json.loads((out / "summary.json").read_text())["timing"]
    files = sum(1 for _ in open(out / "metrics.csv")) - 1
    return {
        "files": files,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "wall_s": round(wall, 2),
        "seconds_per_file": round(timing["predict_s"] / files, 5),
        "startup_s": round(timing["startup_s"], 2),
        "predict_s": round(timing["predict_s"], 2),
        "journal_mib": round(folder_mib(out / ".recon-journal"), 2),
        "output_mib": round(folder_mib(out), 1),
        **rss_growth(samples, files),
    }


def committed_files(out: Path) -> int:
    journal = out / ".recon-journal"
    return sum(path.read_bytes().count(b"\n") for path in journal.glob("*.jsonl")) if journal.is_dir() else 0


def sample_rss(pid: int, out: Path, samples: list) -> None:
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            rss_kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            return  # the process has ended
        samples.append((committed_files(out), rss_kib / 1024))
        time.sleep(1.0)


def rss_growth(samples: list[tuple[int, float]], files: int) -> dict:
    """RSS while files are committed: at a quarter of the files and at the end of predict, and the
    least-squares slope over the second half (MiB per 1000 files): a leak shows as a steady slope."""
    during = [(n, rss) for n, rss in samples if 0 < n <= files]
    if len(during) < 4:
        return {"rss_at_quarter_mib": None, "rss_at_end_mib": None, "rss_slope_mib_per_1000_files": None}
    quarter = next(rss for n, rss in during if n >= files / 4)
    half = [(n, rss) for n, rss in during if n >= files / 2] or during[-2:]
    slope = float(np.polyfit([n for n, _ in half], [r for _, r in half], 1)[0]) * 1000 if len({n for n, _ in half}) > 1 else None
    return {"rss_at_quarter_mib": round(quarter, 1), "rss_at_end_mib": round(during[-1][1], 1),
            "rss_slope_mib_per_1000_files": round(slope, 2) if slope is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="1000,10000", help="corpus sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each file (default: %(default)s)")
    parser.add_argument("--variants", default="vae_mode", help="variants to run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="infer.py --batch-size (default: %(default)s)")
    parser.add_argument("--keep", help="work folder to keep (and reuse the corpus from); default: a temporary one")
    args = parser.parse_args()
    sizes = [int(n) for n in args.files.split(",")]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="recon_corpus_bench_"))
    runs = []
    try:
        for n in sizes:
            listing = make_corpus(work, n, args.seconds)
            out = work / f"out-{n}"
            shutil.rmtree(out, ignore_errors=True)
            runs.append(run(listing, out, args))
            r = runs[-1]
            print(f"{r['files']:>6} files  peak RSS {r['peak_rss_mib']:7.1f} MiB  {r['seconds_per_file'] * 1000:6.1f} ms/file  "
                  f"wall {r['wall_s']:7.1f} s  start-up {r['startup_s']:5.1f} s  RSS at 1/4 {r['rss_at_quarter_mib']} MiB, at the end "
                  f"{r['rss_at_end_mib']} MiB, slope {r['rss_slope_mib_per_1000_files']} MiB/1000 files", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ratio = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    print(f"peak RSS {runs[-1]['files']} vs {runs[0]['files']} files: x{ratio:.3f} (target <= x{TARGET_RSS_RATIO})")
    import torch

    print(json.dumps({"runs": runs, "rss_ratio": round(ratio, 4), "target_rss_ratio": TARGET_RSS_RATIO,
                      "variants": args.variants, "batch_size": args.batch_size, "seconds": args.seconds,
                      "loadavg_1m": os.getloadavg()[0], "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
