"""Seconds per 10.24 s clip for encode, decode and vocode of a backbone (default: full-size random).

    python bench/backbone_speed.py [--source random:full] [--repeats 3] [--bf16] [--batch 1] [--device cuda]
    python bench/backbone_speed.py --compile default      # eager and compiled, in one run

With ``--compile MODE`` the same networks are then compiled in place (recon.compile, as
``infer.py --compile``) and timed again: the JSON gains ``compiled_*_s``, ``compile_s`` (the first
call of each network, compilation included) and ``speedup`` (eager round trip / compiled).
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from recon.audio import AudioSpec, MelFrontEnd
from recon.backbone import FrozenAudioLDM2
from recon.compile import COMPILE_MODES, compile_networks
from recon.variants import Models


def synchronised(fn, device: torch.device):
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stage_times(backbone: FrozenAudioLDM2, logmel, z, mel_hat, repeats: int, batch: int) -> tuple[dict, float]:
    """Best seconds per clip of each stage, and the seconds of the first (warm-up) calls."""
    device = logmel.device
    start = time.perf_counter()
    synchronised(lambda: (backbone.encode(logmel), backbone.decode(z), backbone.vocode(mel_hat)), device)()
    warmup = time.perf_counter() - start
    times = {
        "encode_s": timed(synchronised(lambda: backbone.encode(logmel), device), repeats) / batch,
        "decode_s": timed(synchronised(lambda: backbone.decode(z), device), repeats) / batch,
        "vocode_s": timed(synchronised(lambda: backbone.vocode(mel_hat), device), repeats) / batch,
    }
    times["round_trip_s"] = sum(times.values())
    return times, warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="random:full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="clips per forward pass")
    parser.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: %(default)s)")
    parser.add_argument("--compile", choices=[m for m in COMPILE_MODES if m != "off"], help="also time the compiled networks")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = AudioSpec()
    device = torch.device(args.device)
    backbone = FrozenAudioLDM2.from_source(args.source, device=device)
    wav = 0.1 * torch.randn(args.batch, spec.num_samples, device=device)
    logmel = MelFrontEnd(spec).to(device)(wav)
    result = {"source": args.source, "device": str(device), "threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0], "bf16": args.bf16, "batch": args.batch}
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        z = backbone.encode(logmel).mean
        mel_hat = backbone.decode(z)
        eager, _ = stage_times(backbone, logmel, z, mel_hat, args.repeats, args.batch)
        result.update(eager)
        if args.compile:
            compile_networks(Models(backbone, None), args.compile)
            compiled, result["compile_s"] = stage_times(backbone, logmel, z, mel_hat, args.repeats, args.batch)
            result.update({f"compiled_{k}": v for k, v in compiled.items()}, compile_mode=args.compile)
            result["speedup"] = eager["round_trip_s"] / compiled["round_trip_s"]
    result["real_time_factor"] = spec.duration / result["round_trip_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
