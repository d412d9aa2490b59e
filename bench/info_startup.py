"""Wall time of ``recon info FILE`` (a fresh process) against a process that only imports torch.

    python bench/info_startup.py [--repeats 5]

``recon info`` reads headers and imports no torch; before it did, it paid at least the second
number. Both are medians over ``--repeats`` runs, alternated, in one run (their ratio is what to
compare across machines). Prints a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.container import Container, dumps  # noqa: E402  (torch-free)

HEADER = {"codec": "codebook", "sample_rate": 16000, "num_samples": 16000, "layout": [163840, 20480], "level": 1.0,
          "model": {"codebook": "0", "decoder": "0"}, "codes": 1024, "coding": "fixed", "stages": 1}


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.recn"
        path.write_bytes(dumps(Container(HEADER, bytes(640))))
        commands = {"recon_info_s": [sys.executable, "-m", "recon.cli", "info", str(path)],
                    "import_torch_s": [sys.executable, "-c", "import torch"]}
        runs: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, argv in commands.items():
                runs[name].append(seconds(argv))
    result = {name: round(statistics.median(values), 3) for name, values in runs.items()}
    result["ratio"] = round(result["import_torch_s"] / result["recon_info_s"], 1)
    result["loadavg_1m"] = os.getloadavg()[0]
    print(f"recon info: {result['recon_info_s']:.2f} s   import torch alone: {result['import_torch_s']:.2f} s   ratio {result['ratio']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
