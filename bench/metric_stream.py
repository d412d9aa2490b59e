"""Streamed waveform metrics against ``compute_all`` on whole tensors: time and agreement.

    python bench/metric_stream.py                      # a 10-minute pair, V = 2, blocks of 10.24 s
    python bench/metric_stream.py --minutes 1 --block-seconds 1 --threads 1

A synthetic 16 kHz pair: the reference is two slowly gliding tones plus noise whose level swells
and fades; estimate 0 is the reference low-passed (3-tap mean) plus noise growing over the file,
estimate 1 is 0.7 x the reference plus a fixed noise and offset. ``compute_all(reference expanded
to V rows, estimates, include_perceptual=False)`` is timed against ``MetricStream`` fed the same
signals in consecutive blocks (both passes when ``mel_db_mae`` is on, as it is by default), after a
short warm-up of each. Reported: both wall times and process CPU times, their ratios (stream /
whole), and per metric the largest relative difference between the two values over the estimates.
On a shared machine the CPU-time ratio is the steadier one: two intra-op threads that wait on other
processes inflate wall time, and more so for the stream's smaller tensors.

Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon import metrics as M  # noqa: E402
from recon.metric_stream import MetricStream  # noqa: E402

SAMPLE_RATE = M.SAMPLE_RATE


def synthetic_pair(seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference [n]`` and ``estimates [2, n]`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    swell = 0.5 + 0.5 * torch.sin(2 * torch.pi * t / 37.0) ** 2
    tones = 0.25 * torch.sin(2 * torch.pi * (330 * t + 20 * torch.sin(t / 5))) + 0.1 * torch.sin(2 * torch.pi * (2500 * t + 200 * torch.sin(t / 3)))
    reference = (tones + 0.05 * swell * torch.randn(n, generator=gen, dtype=torch.float64)).float()
    lowpassed = torch.nn.functional.conv1d(reference[None, None], torch.full((1, 1, 3), 1 / 3), padding=1)[0, 0]
    growing = torch.linspace(0.002, 0.05, n) * torch.randn(n, generator=gen)
    estimates = torch.stack([lowpassed + growing, 0.7 * reference + 0.02 * torch.randn(n, generator=gen) + 0.01])
    return reference, estimates


def streamed(reference: torch.Tensor, estimates: torch.Tensor, block: int) -> dict[str, list[float]]:
    stream = MetricStream(estimates.shape[0])
    for pass_index in range(stream.passes):
        for start in range(0, reference.shape[0], block):
            stream.update(reference[start : start + block], estimates[:, start : start + block], pass_index=pass_index)
    return stream.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the synthetic pair in minutes (default 10)")
    parser.add_argument("--block-seconds", type=float, default=10.24, help="seconds per block fed to the stream (default 10.24, a window of infer.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic noise")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    reference, estimates = synthetic_pair(args.minutes * 60, args.seed)
    block = max(1, int(args.block_seconds * SAMPLE_RATE))
    warm = slice(0, 2 * SAMPLE_RATE)
    M.compute_all(reference[warm].expand(2, -1).contiguous(), estimates[:, warm], include_perceptual=False)
    streamed(reference[warm], estimates[:, warm], block)

    start, cpu = time.perf_counter(), time.process_time()
    whole = M.compute_all(reference.expand(estimates.shape[0], -1).contiguous(), estimates, include_perceptual=False)
    whole_s, whole_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    stream = streamed(reference, estimates, block)
    stream_s, stream_cpu = time.perf_counter() - start, time.process_time() - cpu

    deviation = {
        name: max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(whole[name].tolist(), stream[name])) for name in M.WAVEFORM_METRICS
    }
    print(f"{args.minutes:g} min pair, V = {estimates.shape[0]}, blocks of {args.block_seconds:g} s, {torch.get_num_threads()} threads")
    print(f"compute_all (whole tensors): {whole_s:8.1f} s wall {whole_cpu:8.1f} s CPU")
    print(f"MetricStream (both passes):  {stream_s:8.1f} s wall {stream_cpu:8.1f} s CPU   ratios {stream_s / whole_s:.2f} wall, {stream_cpu / whole_cpu:.2f} CPU")
    for name, dev in deviation.items():
        print(f"  {name:22s} whole {whole[name].tolist()}  max relative difference {dev:.1e}")
    print(
        json.dumps(
            {
                "minutes": args.minutes,
                "block_seconds": args.block_seconds,
                "variants": int(estimates.shape[0]),
                "compute_all_s": round(whole_s, 2),
                "stream_s": round(stream_s, 2),
                "stream_over_compute_all": round(stream_s / whole_s, 3),
                "compute_all_cpu_s": round(whole_cpu, 2),
                "stream_cpu_s": round(stream_cpu, 2),
                "stream_over_compute_all_cpu": round(stream_cpu / whole_cpu, 3),
                "max_relative_difference": {name: float(f"{dev:.2e}") for name, dev in deviation.items()},
                "threads": torch.get_num_threads(),
                "loadavg_1m": os.getloadavg()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
