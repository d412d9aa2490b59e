"""Seconds per 10.24 s clip for encode, decode and vocode of a backbone (default: full-size random).

    python bench/backbone_speed.py [--source random:full] [--repeats 3] [--bf16]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from recon.audio import AudioSpec, MelFrontEnd
from recon.backbone import FrozenAudioLDM2


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="random:full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="run under CPU bf16 autocast")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = AudioSpec()
    backbone = FrozenAudioLDM2.from_source(args.source)
    wav = 0.1 * torch.randn(1, spec.num_samples)
    logmel = MelFrontEnd(spec)(wav)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        z = backbone.encode(logmel).mean
        mel_hat = backbone.decode(z)
        result = {
            "source": args.source,
            "threads": torch.get_num_threads(),
            "bf16": args.bf16,
            "encode_s": timed(lambda: backbone.encode(logmel), args.repeats),
            "decode_s": timed(lambda: backbone.decode(z), args.repeats),
            "vocode_s": timed(lambda: backbone.vocode(mel_hat), args.repeats),
        }
    result["round_trip_s"] = result["encode_s"] + result["decode_s"] + result["vocode_s"]
    result["real_time_factor"] = spec.duration / result["round_trip_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
