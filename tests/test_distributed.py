"""Several ranks without a GPU: ddp_spawn inference, the shared-output check, the latent cache split,
and the DDP strategy's CUDA-only path."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

import infer
from recon.audio import MelFrontEnd
from recon.cache import LatentCache, backbone_fingerprint
from recon.data import AudioDataModule, AudioFolder
from recon.lit import CodebookDDPStrategy
from recon.inputs import InferenceFiles, collate_files
from recon.predict import VariantRunner
from recon.records import RunInfo
from recon.variants import VARIANTS, Models, VariantSettings
from recon.writer import RUN_MARKER, ResultWriter
from tests.conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"


def test_infer_with_ddp_spawn_on_two_cpu_processes(tmp_path):
    """ddp_spawn pickles the runner, the variants and the writer into each process; rows of both ranks
    reach rank 0 through the process group."""
    for i, freq in enumerate([220, 440, 660]):  # odd count: the ranks get 2 and 1 files
        write_tone(tmp_path / "in" / f"t{i}.wav", 1.0, freq=freq)
    (tmp_path / "in" / "bad.wav").write_text("not audio")
    out = tmp_path / "out"
    code = infer.main([
        "--ckpt", str(DEMO_CKPT), "--input", str(tmp_path / "in"), "--output", str(out), "--variants", "vae_mode,griffinlim,codebook_hard",
        "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp_spawn", "--wandb", "off", "--no-perceptual", "--griffinlim-iters", "2",
    ])
    assert code == 1  # bad.wav
    with open(out / "metrics.csv") as f:
        rows = Counter((r["file"], r["variant"]) for r in csv.DictReader(f))
    assert rows == Counter({(f"t{i}.wav", v): 1 for i in range(3) for v in ("vae_mode", "griffinlim", "codebook_hard")})
    with open(out / "errors.csv") as f:
        assert [(e["file"], e["variant"]) for e in csv.DictReader(f)] == [("bad.wav", "")]
    assert (out / "report.html").is_file() and not (out / RUN_MARKER).exists()


class NodeLocalWriter(ResultWriter):
    """Each rank writes into a folder of its own, as nodes without a shared file system would."""

    def setup(self, trainer, pl_module, stage):
        self.out = self.out / f"node{trainer.global_rank}"
        super().setup(trainer, pl_module, stage)


def test_an_output_folder_not_shared_by_all_ranks_stops_every_rank_before_any_work(tmp_path, tiny_backbone):
    for i in range(2):
        write_tone(tmp_path / "in" / f"t{i}.wav", 1.0, freq=300 + 100 * i)
    variants = [VARIANTS["vae_mode"]]
    writer = NodeLocalWriter(tmp_path / "out", RunInfo(variants, {}), perceptual=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, callbacks=[writer],
                        enable_progress_bar=False, enable_model_summary=False)
    models = Models(tiny_backbone, MelFrontEnd(tiny_backbone.spec))
    loader = torch.utils.data.DataLoader(InferenceFiles([tmp_path / "in"]), batch_size=1, collate_fn=collate_files)
    with pytest.raises(Exception, match="is not shared by all ranks: rank 1 on .* cannot see the .recon-run marker"):
        trainer.predict(VariantRunner(models, variants, VariantSettings()), loader, return_predictions=False)
    assert not list((tmp_path / "out").rglob("*.wav"))


def test_cache_shards_are_fixed_before_anything_is_cached(tmp_path, tiny_backbone):
    """Ranks list what is missing at different moments; the split must not depend on it. Rank 1 here
    starts after rank 0 has finished its share (the worst case), and nothing is lost."""
    for i in range(3):
        write_tone(tmp_path / "audio" / f"t{i}.wav", 25.0, freq=200 + 100 * i)  # 3 segments each
    dataset = AudioFolder(tmp_path / "audio")
    cache = LatentCache(tmp_path / "cache", backbone_fingerprint(tiny_backbone))
    built = [cache.build(dataset, tiny_backbone, progress=False, shard=(rank, 2)) for rank in (0, 1)]
    assert built == [5, 4] and cache.missing(dataset) == []


class FakeStrategy:
    """The two collectives attach_latent_cache uses, for one rank of a world of two."""

    def __init__(self, others_complete: bool):
        self.others_complete = others_complete

    def barrier(self, name=None):
        pass

    def reduce_boolean_decision(self, decision, all=True):
        return decision and self.others_complete


class FakeTrainer:
    global_rank, world_size = 0, 2

    def __init__(self, others_complete: bool = True):
        self.strategy = FakeStrategy(others_complete)


def test_an_incomplete_latent_cache_stops_every_rank_and_names_what_is_missing(tmp_path, tiny_backbone):
    """With a node-local cache_dir on several nodes, each rank sees only its node's entries."""
    for i in range(2):
        write_tone(tmp_path / "audio" / f"t{i}.wav", 2.0, freq=200 + 100 * i)
    dm = AudioDataModule(str(tmp_path / "audio"), batch_size=2, val_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    dm.trainer = FakeTrainer()  # rank 0 of 2: the other rank's share never appears here
    with pytest.raises(RuntimeError, match=r"incomplete after every rank encoded its share: rank 0 cannot see 1 segment\(s\) \(t1.wav#0\)"):
        dm.attach_latent_cache(tiny_backbone)
    dm = AudioDataModule(str(tmp_path / "audio"), batch_size=2, val_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    dm.trainer = FakeTrainer(others_complete=False)
    LatentCache(tmp_path / "cache", backbone_fingerprint(tiny_backbone)).build(dm.train_set or AudioFolder(tmp_path / "audio"), tiny_backbone, progress=False)
    with pytest.raises(RuntimeError, match=r"incomplete after every rank encoded its share; data.cache_dir must be on a file system shared"):
        dm.attach_latent_cache(tiny_backbone)


def test_codebook_ddp_leaves_a_model_without_gradients_unwrapped_on_cuda(monkeypatch):
    """Lightning's DDP asserts a DistributedDataParallel wrapper when registering hooks on CUDA; a model
    with nothing to train stays bare under codebook_ddp, which must skip that step."""
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    monkeypatch.setattr(CodebookDDPStrategy, "root_device", property(lambda self: torch.device("cuda", 0)))
    strategy = CodebookDDPStrategy()
    assert strategy._setup_model(model) is model
    strategy.model = model
    strategy._register_ddp_hooks()  # must not raise
    monkeypatch.setattr(L.pytorch.strategies.DDPStrategy, "root_device", property(lambda self: torch.device("cuda", 0)))
    plain = L.pytorch.strategies.DDPStrategy()
    plain.model = model
    with pytest.raises(AssertionError):
        plain._register_ddp_hooks()


def test_a_usage_error_in_a_spawned_process_is_one_line_and_exit_status_2():
    from torch.multiprocessing import ProcessRaisedException

    trace = "Traceback (most recent call last):\n  File ...\nrecon.outputs.UsageError: the output folder /x is not shared by all ranks"
    assert infer.spawned_usage_error(ProcessRaisedException(trace, 1, 1234)) == "the output folder /x is not shared by all ranks"
    assert infer.spawned_usage_error(ProcessRaisedException("Traceback ...\nRuntimeError: boom", 1, 1234)) is None
    assert infer.spawned_usage_error(ValueError("x")) is None


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    write_tone(tmp_path / "in" / "a.wav", 1.0)
    (tmp_path / "taken").write_text("a file where the output folder should be")
    code = infer.main(["--backbone", "random:tiny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "taken"),
                       "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp_spawn", "--wandb", "off"])
    assert code == 2 and capsys.readouterr().err.strip().startswith(f"error: cannot write to --output {tmp_path / 'taken'}")


@pytest.mark.parametrize(
    "env, launching",
    [
        ({}, True),  # a plain run, or the process that starts Lightning's ddp children
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, False),  # a child Lightning started
        # torchrun starts every rank itself, rank 0 included: the writer checks collectively instead.
        ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
          "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, False),
    ],
    ids=["plain", "lightning-child", "torchrun-rank0"],
)
def test_only_the_launching_process_checks_the_output_early(monkeypatch, env, launching):
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    assert infer.is_launching_process(trainer) is launching
