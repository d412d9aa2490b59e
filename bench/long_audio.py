"""What a long file costs: infer.py on one file of each length, peak memory and time against length.

    python bench/long_audio.py                                  # the target: 60 min against 1 min
    python bench/long_audio.py --minutes 1,10 --keep /tmp/long  # a quicker check

The input is real audio: the clips of ``examples/audio`` concatenated (cycling) to one minute,
then that minute repeated to each length, written as ``--rate`` Hz, ``--channels`` channels (by
default 44.1 kHz stereo, what a user's recordings are; so the resampler runs too). For each length,
``infer.py`` runs in a subprocess with every non-diffusion variant (``--variants all`` without
``--diffusion``) on the committed small backbone and demo codebook, PESQ/STOI/ViSQOL off (on a long
file they are scored on excerpts, a cost that does not grow with the file; see the README), no W&B.
The shortest length runs again after the others, so the ratios are taken against the mean of two
runs on either side of the long ones (the machine's load drifts).

Measured per run: peak RSS of the infer.py process (``wait4``), RSS sampled every second, the
predict time from its ``summary.json`` (first batch to the end, start-up excluded) and its real-time
factor (predict seconds per second of audio). Prints a table, then one JSON object as its last line:

  runs: [{minutes, peak_rss_mib, wall_s, startup_s, predict_s, x_real_time, rss_median_mib}],
  rss_ratio (peak RSS of the longest over the shortest), x_real_time_ratio (its real-time factor
  over the shortest's), targets {rss_ratio: 1.25, x_real_time_within: 0.10}, met (both), accelerator,
  loadavg_1m, cpu_count. Each run also has rss_median_by_tenth_mib, the median RSS of each tenth of
  the run: flat after the first tenths where nothing grows with the file.

The real-time target is one-sided: the longest file may take at most 10 % more seconds per second
of audio than the shortest. A long file is streamed and the 1-minute one held whole, and the held
path pays its whole-file metrics and its first forward pass within less audio, so a long file may
well be faster per second; that is within the target, whose point is that the cost per second does
not grow with the length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
CLIPS = sorted((ROOT / "examples" / "audio").rglob("*.flac"))
TARGET_RSS_RATIO = 1.25
TARGET_X_REAL_TIME = 0.10


def one_minute(rate: int, channels: int) -> np.ndarray:
    """The example clips, each peak-normalised to 0.5, concatenated (cycling) to 60 s, as ``[samples, channels]`` at ``rate``."""
    import torch
    import torchaudio.functional as AF

    pieces, total = [], 0
    while total < 60 * 16000:
        for clip in CLIPS:
            wav, sr = sf.read(str(clip), dtype="float32", always_2d=True)
            mono = wav.mean(axis=1)
            pieces.append(0.5 * mono / (np.abs(mono).max() + 1e-8))
            total += mono.size
    signal = np.concatenate(pieces)[: 60 * 16000]
    if rate != 16000:
        signal = AF.resample(torch.from_numpy(signal), 16000, rate).numpy()
    # Channels differ a little (a level and a one-sample lag), as a stereo recording's do.
    return np.stack([np.roll(signal, c) * (1.0 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_input(folder: Path, minutes: int, minute: np.ndarray, rate: int) -> Path:
    path = folder / f"long-{minutes}min.wav"
    if not path.exists():
        with sf.SoundFile(str(path), "w", samplerate=rate, channels=minute.shape[1], subtype="PCM_16") as f:
            for _ in range(minutes):
                f.write(minute)
    return path


def sample_rss(pid: int, samples: list[float]) -> None:
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return
        samples.append(rss / 1024)
        time.sleep(1.0)


def run(path: Path, out: Path, minutes: int, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "WANDB_SERVICE")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "infer.py"), "--ckpt", args.ckpt, "--input", str(path), "--output", str(out),
               "--variants", args.variants, "--wandb", "off", "--no-perceptual", "--accelerator", args.accelerator, "--overwrite",
               *args.extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[float] = []
    sampler = threading.Thread(target=sample_rss, args=(proc.pid, samples), daemon=True)
    sampler.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"infer.py failed on {path.name} ({status}):\n{stderr[-3000:]}")
    timing = json.loads((out / "summary.json").read_text())["timing"]
    return {
        "minutes": minutes,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "wall_s": round(wall, 1),
        "startup_s": round(timing["startup_s"], 1),
        "predict_s": round(timing["predict_s"], 1),
        "x_real_time": round(timing["predict_s"] / (60 * minutes), 4),
        "rss_median_mib": round(float(np.median(samples)), 1) if samples else None,
        "rss_median_by_tenth_mib": [round(float(np.median(part))) for part in np.array_split(np.array(samples), 10) if part.size],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", default="1,60", help="lengths to run, shortest first (default: %(default)s)")
    p.add_argument("--rate", type=int, default=44100, help="sample rate of the written inputs (default: %(default)s)")
    p.add_argument("--channels", type=int, default=2, help="channels of the written inputs (default: %(default)s)")
    p.add_argument("--ckpt", default=str(ROOT / "checkpoints" / "demo" / "codebook-small.ckpt"), help="codebook checkpoint (its backbone comes with it)")
    p.add_argument("--variants", default="all", help="infer.py --variants (default: %(default)s: every variant that needs no diffusion model)")
    p.add_argument("--accelerator", default="cpu", help="infer.py --accelerator (default: %(default)s)")
    p.add_argument("--keep", help="folder for the inputs and outputs, kept (default: a temporary folder, removed)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more infer.py arguments")
    args = p.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    lengths = sorted(int(m) for m in args.minutes.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.keep or scratch)
        work.mkdir(parents=True, exist_ok=True)
        minute = one_minute(args.rate, args.channels)
        paths = {m: write_input(work, m, minute, args.rate) for m in lengths}
        order = lengths + [lengths[0]]  # the shortest again at the end: load drifts
        runs = []
        for m in order:
            runs.append(run(paths[m], work / f"out-{m}min", m, args))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    short = [r for r in runs if r["minutes"] == lengths[0]]
    longest = next(r for r in runs if r["minutes"] == lengths[-1])
    base_rss = float(np.mean([r["peak_rss_mib"] for r in short]))
    base_rt = float(np.mean([r["x_real_time"] for r in short]))
    rss_ratio = longest["peak_rss_mib"] / base_rss
    rt_ratio = longest["x_real_time"] / base_rt
    print(f"{'minutes':>8} {'peak RSS MiB':>13} {'median RSS':>11} {'predict s':>10} {'x real time':>12} {'wall s':>8}")
    for r in runs:
        print(f"{r['minutes']:>8} {r['peak_rss_mib']:>13.0f} {r['rss_median_mib'] or 0:>11.0f} {r['predict_s']:>10.1f} {r['x_real_time']:>12.4f} {r['wall_s']:>8.1f}")
    print(f"peak RSS {lengths[-1]} min / {lengths[0]} min: {rss_ratio:.3f} (target <= {TARGET_RSS_RATIO}); "
          f"x real time: {rt_ratio:.3f} (target <= {1 + TARGET_X_REAL_TIME:.2f})")
    result = {
        "runs": runs,
        "rss_ratio": round(rss_ratio, 4),
        "x_real_time_ratio": round(rt_ratio, 4),
        "targets": {"rss_ratio": TARGET_RSS_RATIO, "x_real_time_within": TARGET_X_REAL_TIME},
        "met": rss_ratio <= TARGET_RSS_RATIO and rt_ratio <= 1 + TARGET_X_REAL_TIME,
        "accelerator": args.accelerator,
        "rate": args.rate,
        "channels": args.channels,
        "loadavg_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
