"""Every variant under bf16 and fp16 autocast on the CPU, with the fp32 islands bit-exact, and infer.py
end to end under ``bf16-mixed`` and ``16-mixed`` (all twelve variants, the diffusion ones included)."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import infer
from recon.audio import MelFrontEnd
from recon.codebook import CodebookConfig
from recon.precision import UnsupportedPrecision, check_precision
from recon.variants import VARIANTS, VariantSettings, highpass_zero_phase
from tests.conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"
HALF = [torch.bfloat16, torch.float16]
NON_DIFFUSION = sorted(name for name, v in VARIANTS.items() if "diffusion" not in v.requires)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", NON_DIFFUSION)
def test_every_variant_runs_under_half_autocast(name, dtype, models, batch, single_thread):
    settings = VariantSettings(griffinlim_iters=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        rec = VARIANTS[name].fn(batch, models, settings)
    assert rec.wav.dtype == torch.float32 and rec.wav.shape == batch.wav.shape
    assert torch.isfinite(rec.wav).all()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_fp32_islands_are_exact_under_autocast(dtype, models, batch, single_thread):
    """The quantizer, Griffin-Lim, the zero-phase filter and the front-end give bit-identical results
    with autocast on: their math does not depend on the run's precision."""
    settings = VariantSettings(griffinlim_iters=4)
    with torch.no_grad():
        fp32 = {name: VARIANTS[name].fn(batch, models, settings) for name in ("codebook_soft", "codebook_hard", "griffinlim")}
        with torch.autocast("cpu", dtype=dtype):
            half = {name: VARIANTS[name].fn(batch, models, settings) for name in fp32}
            filtered = highpass_zero_phase(batch.wav, 50.0, 16000)
            logmel = models.frontend(batch.wav)
    for name in ("codebook_soft", "codebook_hard"):
        assert torch.equal(half[name].latent, fp32[name].latent), name
    assert torch.equal(half["griffinlim"].wav, fp32["griffinlim"].wav)
    assert torch.equal(filtered, highpass_zero_phase(batch.wav, 50.0, 16000))
    assert torch.equal(logmel, models.frontend(batch.wav))


def test_frontend_is_immune_to_module_casts(batch):
    """A module-wide cast to half (what a *-true precision does) leaves the front-end's float32 math
    and its filterbank values untouched; moves still apply."""
    reference = MelFrontEnd()(batch.wav)
    for cast in (torch.bfloat16, torch.float16):
        frontend = MelFrontEnd().to(cast)
        assert frontend.mel_basis.dtype == torch.float32 and frontend.window.dtype == torch.float32
        assert torch.equal(frontend(batch.wav), reference)
    assert torch.equal(MelFrontEnd().half().float()(batch.wav), reference)


def test_precisions_are_checked_up_front():
    assert [check_precision(p) for p in ("32-true", "32", "bf16-mixed", "16-mixed", None)] == ["32-true", "32-true", "bf16-mixed", "16-mixed", "32-true"]
    for precision in ("bf16-true", "16-true", "64-true", "transformer-engine"):
        with pytest.raises(UnsupportedPrecision, match="not supported: use one of 32-true, bf16-mixed, 16-mixed"):
            check_precision(precision)


def test_infer_refuses_true_precisions_with_one_line(tmp_path, capsys):
    write_tone(tmp_path / "in" / "a.wav", 1.0)
    code = infer.main(["--backbone", "random:tiny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       "--accelerator", "cpu", "--precision", "bf16-true", "--wandb", "off"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: precision 'bf16-true' is not supported")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from recon.diffusion import make_tiny_pipeline_folder

    return make_tiny_pipeline_folder(tmp_path_factory.mktemp("pipeline") / "tiny")


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_infer_runs_every_variant_under_mixed_precision_on_cpu(tmp_path, precision, tiny_pipeline):
    """Lightning runs 16-mixed as bf16-mixed on the CPU (fp16 math itself is covered above). One short
    file: bf16 convolutions on this CPU are an order of magnitude slower than fp32."""
    write_tone(tmp_path / "in" / "a.wav", 1.0, freq=330)
    out = tmp_path / "out"
    code = infer.main([
        "--ckpt", str(DEMO_CKPT), "--diffusion", str(tiny_pipeline), "--input", str(tmp_path / "in"), "--output", str(out),
        "--accelerator", "cpu", "--precision", precision, "--batch-size", "2", "--wandb", "off", "--no-perceptual",
        "--griffinlim-iters", "2", "--ddcm-steps", "3", "--ddcm-k", "8", "--diffusion-steps", "2",
    ])
    with open(out / "errors.csv") as f:
        errors = list(csv.DictReader(f))
    assert code == 0 and errors == []
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # "all" with a one-stage codebook: every variant but codebook_rvq (which is codebook_hard then).
    assert Counter((r["file"], r["variant"]) for r in rows) == Counter({("a.wav", v): 1 for v in VARIANTS if v != "codebook_rvq"})
    assert all(math.isfinite(float(r["log_mel_db"])) for r in rows)


def test_training_refuses_true_precisions_before_any_step(tmp_path):
    import lightning as L

    from recon.lit import CodebookTrainer

    model = CodebookTrainer(backbone="random:tiny", codebook=CodebookConfig(num_codes=16, kmeans_init=False))
    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader([{"wav": torch.zeros(163840), "index": 0}], batch_size=1)
    with pytest.raises(UnsupportedPrecision, match="precision 'bf16-true' is not supported"):
        trainer.fit(model, train_dataloaders=loader)
    assert model.quantizer.codebook.dtype == torch.float32 and int(model.quantizer.step) == 0
