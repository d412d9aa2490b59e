"""What only a GPU shows: infer.py with every variant and precision on CUDA, bf16 against fp32 on the
trained small backbone, 16-mixed and codebook_ddp training, the latent cache and a DDCM round trip on
the device. Skipped without CUDA; run with

    python -m pytest -m gpu
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import infer
from recon.audio import MelFrontEnd
from recon.variants import VARIANTS
from tests.conftest import write_tone

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"
NON_DIFFUSION = [name for name, v in VARIANTS.items() if "diffusion" not in v.requires]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from recon.diffusion import make_tiny_pipeline_folder

    return make_tiny_pipeline_folder(tmp_path_factory.mktemp("pipeline") / "tiny")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in")
    write_tone(root / "short.wav", 1.5, freq=330)
    write_tone(root / "long.wav", 23.0, freq=660)  # three segments, split across batches
    write_tone(root / "stereo_44k.wav", 3.0, sr=44100, channels=2)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run_infer(args: list[str]) -> int:
    return infer.main([*args, "--accelerator", "gpu", "--devices", "1", "--wandb", "off", "--no-perceptual"])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_infer_runs_every_variant_on_cuda(tmp_path, inputs, tiny_pipeline, precision):
    out = tmp_path / "out"
    code = run_infer(["--ckpt", str(DEMO_CKPT), "--diffusion", str(tiny_pipeline), "--input", str(inputs), "--output", str(out),
                      "--precision", precision, "--batch-size", "2", "--ddcm-steps", "5", "--ddcm-k", "64", "--diffusion-steps", "3"])
    assert read_csv(out / "errors.csv") == [] and code == 0
    rows = read_csv(out / "metrics.csv")
    files = {"short.wav", "long.wav", "stereo_44k.wav"}
    # "all" with the one-stage demo codebook: every variant but codebook_rvq.
    assert Counter((r["file"], r["variant"]) for r in rows) == Counter({(f, v): 1 for f in files for v in VARIANTS if v != "codebook_rvq"})
    assert all(math.isfinite(float(r["log_mel_db"])) for r in rows)
    assert sf.info(str(out / "vae_mode" / "long.wav")).frames == 23 * 16000


SMALL_BACKBONE = ROOT / "checkpoints" / "backbone-small"
SMALL_CKPT = ROOT / "checkpoints" / "demo" / "codebook-small.ckpt"
# The networks' variants of the trained small backbone and its demo codebook; griffinlim is an fp32 island.
BF16_VARIANTS = ("vae_mode", "vae_sample", "vae_clamped", "vae_highfreq", "vae_mixed", "vocoder_only", "codebook_hard", "griffinlim")
# Largest |log_mel_db(bf16-mixed) - log_mel_db(32-true)| over the `inputs` files and BF16_VARIANTS, measured
# on the CPU (bf16 autocast) with `bf16_log_mel_shift(..., accelerator="cpu")`: 0.36 dB (long.wav, vae_mixed;
# the fp32 log-mel distances there lie between 1.4 and 9.6 dB).
CPU_BF16_SHIFT_DB = 0.36


def bf16_log_mel_shift(out: Path, inputs: Path, accelerator: str) -> dict[tuple[str, str], float]:
    """log_mel_db(bf16-mixed) - log_mel_db(32-true) per (file, variant), on the trained small backbone."""
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        code = infer.main(["--ckpt", str(SMALL_CKPT), "--input", str(inputs), "--output", str(out / precision), "--precision", precision,
                           "--batch-size", "8", "--variants", ",".join(BF16_VARIANTS), "--accelerator", accelerator, "--devices", "1",
                           "--wandb", "off", "--no-perceptual"])
        assert code == 0
        results[precision] = {(r["file"], r["variant"]): float(r["log_mel_db"]) for r in read_csv(out / precision / "metrics.csv")}
    assert results["32-true"].keys() == results["bf16-mixed"].keys()
    return {key: results["bf16-mixed"][key] - value for key, value in results["32-true"].items()}


def test_infer_trained_small_backbone_bf16_matches_fp32(tmp_path, inputs):
    """On the GPU, bf16-mixed moves the log-mel distance of the trained small backbone (whose errors are
    those of a working codec, unlike a random backbone's) by at most 3x what CPU bf16 moves it; the fp32
    island (griffinlim) does not move at all."""
    shift = bf16_log_mel_shift(tmp_path, inputs, accelerator="gpu")
    for (file, variant), value in shift.items():
        tolerance = 1e-3 if variant == "griffinlim" else 3 * CPU_BF16_SHIFT_DB
        assert abs(value) <= tolerance, (file, variant, value)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_networks_match_eager_on_cuda(tmp_path, inputs, tiny_pipeline, mode):
    """--compile (Inductor; reduce-overhead adds CUDA graphs) on every network, diffusion included:
    the outputs stay those of the eager run in log-mel terms, through shapes that change (tails)."""
    args = ["--ckpt", str(DEMO_CKPT), "--diffusion", str(tiny_pipeline), "--input", str(inputs), "--batch-size", "2",
            "--variants", "vae_mode,vocoder_only,codebook_hard,codebook_sdedit", "--diffusion-steps", "3"]
    results = {}
    for name in ("off", mode):
        out = tmp_path / name
        assert run_infer([*args, "--output", str(out), "--compile", name]) == 0
        results[name] = {(r["file"], r["variant"]): float(r["log_mel_db"]) for r in read_csv(out / "metrics.csv")}
    assert results["off"].keys() == results[mode].keys()
    for key, value in results["off"].items():
        assert abs(results[mode][key] - value) <= 0.05, key


def run_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "WANDB_SERVICE")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("adapters", [False, True], ids=["ema-no-parameters", "adapters-trainable"])
def test_codebook_ddp_trains_on_cuda(tmp_path, inputs, adapters):
    """codebook_ddp with one device goes through Lightning's DDP path (process group, hooks) on CUDA,
    with a model that has nothing to train (bare module) and one that has (DDP wrapper); the latent
    cache is built on the device."""
    result = run_train(
        ["fit", "--config", str(ROOT / "configs/tiny.yaml"), "--data.root", str(inputs), "--trainer.accelerator", "gpu",
         "--trainer.devices", "1", "--trainer.strategy", "codebook_ddp", "--trainer.max_steps", "4", "--trainer.logger", "false",
         "--model.adapters", str(adapters).lower(), "--model.kmeans_init_batches", "1", "--data.cache_dir", str(tmp_path / "cache")],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "tiny" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and bool(ckpt["state_dict"]["quantizer.initialized"])


@pytest.mark.parametrize("codebook", ["ema", "grad-rvq-dropout", "ema-adapters"])
def test_16_mixed_training_on_cuda(tmp_path, inputs, codebook):
    """16-mixed on CUDA runs with a GradScaler: an EMA codebook has no loss for it to scale, a grad
    codebook and adapters do. Each trains to max_steps and leaves last.ckpt at that step."""
    model = {
        "ema": [],
        "grad-rvq-dropout": ["--model.codebook.update", "grad", "--model.codebook.stages", "3", "--model.codebook.quantizer_dropout", "0.5"],
        "ema-adapters": ["--model.adapters", "true"],
    }[codebook]
    result = run_train(
        ["fit", "--config", str(ROOT / "configs/tiny.yaml"), "--data.root", str(inputs), "--trainer.accelerator", "gpu",
         "--trainer.devices", "1", "--trainer.precision", "16-mixed", "--trainer.max_steps", "5", "--trainer.logger", "false",
         "--model.kmeans_init_batches", "1", *model],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "tiny" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5 and bool(ckpt["state_dict"]["quantizer.initialized"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_codebook_ddp_on_two_gpus_ranks_agree_and_match_one_gpu(tmp_path):
    """tests/test_train_ddp.py's invariants with NCCL on two GPUs."""
    from tests.test_train_ddp import check_two_process_training

    check_two_process_training(tmp_path, accelerator="gpu")


def test_latent_cache_on_cuda_matches_the_cpu_encoder(tmp_path, inputs, tiny_backbone):
    from recon.cache import LatentCache, LatentDataset, backbone_fingerprint
    from recon.data import AudioFolder

    dataset = AudioFolder(inputs)
    cpu_fingerprint = backbone_fingerprint(tiny_backbone)
    backbone = tiny_backbone.to("cuda")
    try:
        assert backbone_fingerprint(backbone) == cpu_fingerprint
        cache = LatentCache(tmp_path / "cache", cpu_fingerprint)
        assert cache.build(dataset, backbone, progress=False) == len(dataset)
    finally:
        tiny_backbone.to("cpu")
    cached = LatentDataset(dataset, cache)
    for i in range(len(dataset)):
        with torch.no_grad():
            posterior = tiny_backbone.encode(MelFrontEnd()(dataset[i]["wav"][None]))
        torch.testing.assert_close(cached[i]["mean"], posterior.mean[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("decode_device", ["cpu", "cuda"])
def test_ddcm_file_written_on_cuda_decodes_on_any_device(tmp_path, inputs, tiny_pipeline, decode_device):
    """The DDCM noise is recon's portable generator: a file encoded on this GPU decodes on the CPU (and on
    the GPU) to the encoder's reconstruction, up to float rounding (1e-3 of the waveform's peak)."""
    from recon import cli

    out, decoded = tmp_path / "out", tmp_path / "decoded"
    assert run_infer(["--backbone", "random:tiny", "--diffusion", str(tiny_pipeline), "--input", str(inputs), "--output", str(out),
                      "--variants", "ddcm_noise", "--ddcm-steps", "6", "--ddcm-k", "64"]) == 0
    assert cli.main(["decode", str(out / "ddcm_noise"), "--diffusion", str(tiny_pipeline), "--device", decode_device,
                     "--out", str(decoded), "--normalised", "--format", "float", "--quiet"]) == 0
    for name in ("short", "long", "stereo_44k"):
        written, _ = sf.read(str(out / "ddcm_noise" / f"{name}.wav"), dtype="float32")
        wav, _ = sf.read(str(decoded / f"{name}.wav"), dtype="float32")
        assert wav.shape == written.shape and np.abs(wav - written).max() <= 1e-3 * max(np.abs(written).max(), 1e-6)


def test_device_memory_does_not_grow_with_file_length(tmp_path):
    """A streamed file's peak device memory is the same for 2 and for 8 minutes of audio: the device
    holds one forward pass of windows and the metrics' running sums, never the file."""
    peaks = {}
    for minutes in (2, 8):
        path = write_tone(tmp_path / f"in{minutes}" / f"long{minutes}.wav", 60.0 * minutes, sr=44100, channels=2, freq=440)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        out = tmp_path / f"out{minutes}"
        assert run_infer(["--ckpt", str(DEMO_CKPT), "--input", str(path), "--output", str(out), "--variants", ",".join(NON_DIFFUSION),
                          "--batch-size", "4"]) == 0
        assert sf.info(str(out / "vae_mode" / path.name)).frames == 60 * minutes * 16000
        peaks[minutes] = torch.cuda.max_memory_allocated()
    # Allocator rounding aside, the same: 5 % of slack, where holding the file would add 4x.
    assert peaks[8] <= 1.05 * peaks[2], peaks
