"""Peak RSS and seconds of reading a long file as the normalised 16 kHz signal: ``AudioSource``
(statistics pass, then ``blocks`` of one 10.24 s segment) against ``load_audio`` + ``normalise``
of the whole file.

    python bench/audio_source.py [--minutes 60] [--rate 44100] [--channels 2] [--path /tmp/long.wav] [--m4a] [--pause 0.1]

Writes the file (16-bit wav of tones and noise; with ``--m4a`` that wav encoded by ffmpeg as 96 kbit/s
AAC, a format soundfile cannot open) unless it exists, then runs each way in a fresh
process and reads that process's peak RSS from ``os.wait4`` (what ``/usr/bin/time -v`` reports as
"Maximum resident set size"). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def write_long(path: Path, minutes: float, rate: int, channels: int) -> None:
    """A minute of tones and noise, written over and over (bounded memory while writing)."""
    rng = np.random.default_rng(0)
    t = np.arange(60 * rate) / rate
    minute = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    block = np.stack([minute * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16") as f:
        for _ in range(int(minutes)):
            f.write(block)


def run_way(way: str, path: Path, pause: float = 0.0) -> None:
    """Child process: read the file one way, print the samples' count and checksum; the stream way
    waits ``pause`` seconds after each block, as infer.py waits on a forward pass."""
    import torch

    from recon.audio import load_audio, normalise
    from recon.audio_source import AudioSource

    torch.set_num_threads(1)  # the same for both ways, and what a loaded CPU gives anyway
    start = time.perf_counter()
    if way == "whole":
        wav = normalise(load_audio(path))
        count, total = wav.numel(), float(wav.double().sum())
    else:
        source = AudioSource(path)
        count, total = 0, 0.0
        for block in source.blocks(163840):
            count, total = count + block.numel(), total + float(block.double().sum())
            time.sleep(pause)
    print(json.dumps({"samples": count, "sum": total, "seconds": time.perf_counter() - start}))


def measure(way: str, path: Path, pause: float = 0.0) -> dict:
    child = subprocess.Popen([sys.executable, __file__, "--way", way, "--path", str(path), "--pause", str(pause)],
                             stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{way} failed (status {status})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the file written (default: %(default)s)")
    parser.add_argument("--rate", type=int, default=44100, help="its sample rate in Hz (default: %(default)s)")
    parser.add_argument("--channels", type=int, default=2, help="its channels (default: %(default)s)")
    parser.add_argument("--path", type=Path, default=None, help="the file (default: /tmp/audio_source_MINmin_RATE_CH.wav, written if missing)")
    parser.add_argument("--m4a", action="store_true", help="read the file as AAC in an m4a (needs the ffmpeg command)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds the streaming reader waits after each 10.24 s block, as on a forward pass (default: %(default)s)")
    parser.add_argument("--way", choices=["whole", "stream"], help=argparse.SUPPRESS)  # the child processes
    args = parser.parse_args()
    wav = Path(f"/tmp/audio_source_{args.minutes:g}min_{args.rate}_{args.channels}.wav")
    path = args.path or (wav.with_suffix(".m4a") if args.m4a else wav)
    if args.way:
        return run_way(args.way, path, args.pause)
    if not path.exists() and not args.m4a:
        write_long(path, args.minutes, args.rate, args.channels)
    elif not path.exists():
        if not shutil.which("ffmpeg"):
            raise SystemExit("--m4a needs the ffmpeg command to write the file (apt-get install ffmpeg), or --path to an m4a")
        if not wav.exists():
            write_long(wav, args.minutes, args.rate, args.channels)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "96k", str(path)], check=True)
    stream, whole = measure("stream", path, args.pause), measure("whole", path)
    print(json.dumps({
        "file": str(path), "minutes": args.minutes, "rate": args.rate, "channels": args.channels, "pause_per_block_s": args.pause,
        "stream": stream, "whole": whole,
        "rss_ratio_stream_over_whole": stream["peak_rss_mb"] / whole["peak_rss_mb"],
        "time_ratio_stream_over_whole": stream["seconds"] / whole["seconds"],  # the pauses included
        # torchaudio rounds a whole file's resampled length in float32: an hour at 44.1 kHz comes out one short.
        "samples_difference": stream["samples"] - whole["samples"],
        "sum_difference": abs(stream["sum"] - whole["sum"]),
    }))


if __name__ == "__main__":
    main()
