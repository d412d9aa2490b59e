"""bench/infer_gpu.py runs on the CPU with a few clips and reports numbers that add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_infer_gpu_bench_runs_on_cpu_and_its_numbers_add_up(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "WANDB_SERVICE")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "infer_gpu.py"), "--clips", "3", "--seconds", "3", "--batch-size", "2",
         "--backbone", "random:tiny", "--accelerator", "cpu", "--precision", "32-true", "--num-workers", "0",
         "--variants", "vae_mode,codebook_hard", "--out", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] == 3 * 2 and report["device"] == "cpu"
    assert report["clips_per_s"] == pytest.approx(3 / report["wall_s"], rel=1e-2)
    assert report["x_real_time"] == pytest.approx(3 * 3 / report["wall_s"], rel=1e-2)
    stages = report["stage_s"]
    assert set(stages) == {"encode", "vae_mode", "codebook_hard", "metrics", "assemble", "write"}
    assert all(v >= 0 for v in stages.values())
    # The main thread's stages run one after another inside the wall; the writer thread overlaps them,
    # so "write" is bounded by the wall on its own, not added to the rest.
    in_step = sum(v for k, v in stages.items() if k != "write")
    assert 0 < in_step <= report["wall_s"] + 1e-3 and stages["write"] <= report["wall_s"] + 1e-3  # rounding
    assert 0 < report["device_busy_fraction"] <= 1
    assert report["first_batch_s"] > 0
