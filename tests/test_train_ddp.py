"""Codebook training on two processes under ``codebook_ddp``: what must hold on every rank (here on two
CPU processes with gloo; tests/test_gpu.py runs the same check on two GPUs when there are two).

One subprocess runs this file as a script (two trainings in a row); Lightning's launcher starts the
second rank by running the same command again. Each rank saves what it ended with, and the test
compares the ranks with each other and with a one-process run on the same global batches.

The global batch: recon's ResumableSampler gives rank r of W every W-th index of the epoch's
permutation, so step k of two ranks with batch b covers positions [2kb, 2kb + 2b) of that
permutation, which is step k of one process with batch 2b.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from recon.codebook import CodebookConfig  # noqa: E402
from recon.data import AudioDataModule  # noqa: E402
from recon.lit import CodebookTrainer  # noqa: E402
from tests.conftest import write_tone  # noqa: E402

FILES = 8  # one segment each; a multiple of 2 ranks x BATCH, so no rank pads its share
BATCH = 2  # per rank
STEPS = 3  # an epoch of two global batches and the first of the next
RVQ_STAGES = 3


def ema_model() -> CodebookTrainer:
    # No k-means and no dead-code restarts: both draw rows from the gathered batch, whose row order
    # differs between one and two processes. What is left is exactly the EMA and the counts.
    cfg = CodebookConfig(num_codes=16, update="ema", kmeans_init=False, dead_code_threshold=0)
    return CodebookTrainer(backbone="random:tiny", codebook=cfg)


def rvq_model() -> CodebookTrainer:
    # Dropout on every step: each step trains a random prefix of 1..3 stages, so later stages go unused.
    cfg = CodebookConfig(num_codes=16, update="grad", stages=RVQ_STAGES, quantizer_dropout=1.0, kmeans_init=True, dead_code_threshold=0)
    return CodebookTrainer(backbone="random:tiny", codebook=cfg, lr=0.05, kmeans_init_batches=1)


class RankRecord(L.Callback):
    """What one rank saw and ended with, saved to ``out/{name}-rank{r}.pt`` at the end of training."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = Path(out), name
        self.batches: list[list[int]] = []
        self.unused_stages: list[list[int]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # After backward, so after DDP's gradient all-reduce.
        stages = [pl_module.quantizer, *pl_module.quantizer.residual]
        self.unused_stages.append([s for s, stage in enumerate(stages) if stage.codebook.grad is None])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(batch["index"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.quantizer.state_dict().items()}
        record = dict(state=state, batches=self.batches, unused_stages=self.unused_stages, global_step=trainer.global_step)
        torch.save(record, self.out / f"{self.name}-rank{trainer.global_rank}.pt")


def fit(model: CodebookTrainer, audio: Path, cache: Path, batch_size: int, devices: int, record: RankRecord, accelerator: str) -> None:
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy="codebook_ddp" if devices > 1 else "auto", max_steps=STEPS,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, callbacks=[record],
    )
    dm = AudioDataModule(str(audio), batch_size=batch_size, val_fraction=0.0, seed=1, cache_dir=str(cache))
    trainer.fit(model, datamodule=dm)


def two_process_runs(out: Path, audio: Path, cache: Path, accelerator: str) -> None:
    fit(ema_model(), audio, cache, BATCH, 2, RankRecord(out, "ema"), accelerator)
    fit(rvq_model(), audio, cache, BATCH, 2, RankRecord(out, "rvq"), accelerator)


def test_codebook_ddp_ranks_agree_and_match_one_process_on_the_same_global_batches(tmp_path):
    check_two_process_training(tmp_path, accelerator="cpu")


def check_two_process_training(tmp_path: Path, accelerator: str) -> None:
    """Two ranks (gloo on CPU, NCCL on GPUs) against each other and against one process."""
    audio, cache, out = tmp_path / "audio", tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    for i in range(FILES):
        write_tone(audio / f"t{i}.wav", 1.5, freq=150 + 110 * i, seed=i)
    # The one-process reference first: it also fills the latent cache both runs read, so the two runs
    # quantize bit-identical latents.
    reference = RankRecord(out, "ema-one-process")
    fit(ema_model(), audio, cache, 2 * BATCH, 1, reference, accelerator)

    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, __file__, str(out), str(audio), str(cache), accelerator], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ema = [torch.load(out / f"ema-rank{r}.pt", map_location="cpu", weights_only=False) for r in range(2)]
    rvq = [torch.load(out / f"rvq-rank{r}.pt", map_location="cpu", weights_only=False) for r in range(2)]
    one = torch.load(out / "ema-one-process-rank0.pt", map_location="cpu", weights_only=False)

    # EMA: each step's two rank batches together are the one-process batch, and the ranks never overlap.
    assert all(r["global_step"] == STEPS for r in (*ema, *rvq, one))
    for k in range(STEPS):
        assert sorted(ema[0]["batches"][k] + ema[1]["batches"][k]) == sorted(one["batches"][k]), k
        assert not set(ema[0]["batches"][k]) & set(ema[1]["batches"][k]), k
    # Every rank holds the same codebook, EMA statistics and code counts (all-reduced, not per rank) ...
    for name, value in ema[0]["state"].items():
        torch.testing.assert_close(ema[1]["state"][name], value, atol=0, rtol=0, msg=f"ema rank 1 vs 0: {name}")
    # ... and they are those of one process on the global batches: the counts exactly, the sums of
    # latent vectors up to the order of float32 additions (measured: 1.6e-5 of the largest sum).
    for name, value in one["state"].items():
        if name in ("codebook", "embed_sum"):
            torch.testing.assert_close(ema[0]["state"][name], value, atol=1e-4 * float(value.abs().max()), rtol=0, msg=name)
        else:
            assert torch.equal(ema[0]["state"][name], value), f"ema 2 ranks vs 1: {name}"
    assert float(one["state"]["code_frequency"].sum()) > 0 and not torch.equal(one["state"]["cluster_size"], torch.ones(16))

    # RVQ by gradient with quantizer dropout: steps before the last skipped stages on both ranks alike
    # (so plain DDP would have failed on the next step), a skipped stage got no gradient (not a zero one,
    # which Adam's momentum would still move), and the ranks end identical.
    assert rvq[0]["unused_stages"] == rvq[1]["unused_stages"]
    assert any(rvq[0]["unused_stages"][:-1]), rvq[0]["unused_stages"]
    assert all(0 not in unused for unused in rvq[0]["unused_stages"])
    for name, value in rvq[0]["state"].items():
        torch.testing.assert_close(rvq[1]["state"][name], value, atol=0, rtol=0, msg=f"rvq rank 1 vs 0: {name}")


def test_plain_ddp_refuses_a_residual_grad_codebook_with_dropout_up_front():
    from lightning.pytorch.strategies import DDPStrategy

    from recon.strategy import CodebookDDPStrategy

    model = rvq_model()
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=DDPStrategy(), logger=False)
    model.trainer = trainer
    with pytest.raises(ValueError, match="train with `trainer.strategy: codebook_ddp`"):
        model.setup("fit")
    model.trainer = L.Trainer(accelerator="cpu", devices=1, strategy=CodebookDDPStrategy(find_unused_parameters=False), logger=False)
    with pytest.raises(ValueError, match="train with `trainer.strategy: codebook_ddp`"):
        model.setup("fit")
    # With unused parameters allowed, or under codebook_ddp, the same model is accepted.
    for strategy in (DDPStrategy(find_unused_parameters=True), "codebook_ddp"):
        model.trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, logger=False)
        model.setup("fit")


if __name__ == "__main__":
    two_process_runs(*map(Path, sys.argv[1:4]), accelerator=sys.argv[4])
