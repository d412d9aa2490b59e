"""Codebook training on the frozen tiny backbone: it learns, resumes exactly, and checkpoints stay honest."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from recon.cache import LatentCache, LatentDataset, backbone_fingerprint
from recon.callbacks import RunCheckpoint
from recon.codebook import CodebookConfig
from recon.data import AudioDataModule, AudioFolder
from recon.lit import CodebookTrainer, load_codebook_trainer
from tests.conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    for i, freq in enumerate([220, 330, 440, 660, 880, 1320]):
        write_tone(root / f"tone_{i}.wav", 4.0, freq=freq, seed=i)
    return root


def make_trainer(tmp_path: Path, max_steps: int, **kwargs) -> L.Trainer:
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**settings, **kwargs})


def codebook_config(**overrides) -> CodebookConfig:
    base = dict(num_codes=64, dim=8, update="grad", kmeans_init=False, dead_code_threshold=2)
    return CodebookConfig(**{**base, **overrides})


def test_loss_falls_and_usage_rises(tmp_path, audio_dir):
    L.seed_everything(0)
    model = CodebookTrainer(backbone="random:tiny", codebook=codebook_config(), lr=0.05)
    dm = AudioDataModule(str(audio_dir), batch_size=2, val_fraction=0.0, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model.quantizer.eval()
    with torch.no_grad():
        before = model.quantizer(model.select_latent(*model.posterior(batch)))
    make_trainer(tmp_path, max_steps=30).fit(model, datamodule=dm)
    model.quantizer.eval()
    with torch.no_grad():
        after = model.quantizer(model.select_latent(*model.posterior(batch)))
    assert after.loss < 0.5 * before.loss
    assert after.usage > before.usage


def test_cache_is_built_once_and_serves_the_encoder_output(tmp_path, audio_dir):
    model = CodebookTrainer(backbone="random:tiny", codebook=codebook_config())
    dataset = AudioFolder(audio_dir)
    cache = LatentCache(tmp_path / "cache", backbone_fingerprint(model.backbone))
    assert cache.build(dataset, model.backbone, progress=False) == len(dataset)
    assert cache.build(dataset, model.backbone, progress=False) == 0
    item = LatentDataset(dataset, cache)[3]
    posterior = model.backbone.encode(model.frontend(dataset[3]["wav"][None]))
    torch.testing.assert_close(item["mean"], posterior.mean[0])
    torch.testing.assert_close(item["std"], posterior.std[0])
    assert sum(f.stat().st_size for f in cache.dir.iterdir()) <= len(dataset) * (2 * 8 * 256 * 16 * 4 + 256)
    # Changed audio: a new entry. Changed backbone weights: a new fingerprint.
    write_tone(tmp_path / "a" / "x.wav", 3.0, freq=500)
    changed = AudioFolder(tmp_path / "a")
    first = cache.entry(changed, 0)
    write_tone(tmp_path / "a" / "x.wav", 3.0, freq=700)
    assert LatentCache(tmp_path / "cache", cache.dir.name).entry(AudioFolder(tmp_path / "a"), 0) != first
    other = CodebookTrainer(backbone="random:tiny", codebook=codebook_config())
    torch.nn.init.normal_(next(other.backbone.vae.encoder.parameters()))
    assert backbone_fingerprint(other.backbone) != cache.dir.name


def test_training_from_cache_matches_training_from_audio(tmp_path, audio_dir):
    def run(cache_dir):
        L.seed_everything(0)
        model = CodebookTrainer(backbone="random:tiny", codebook=codebook_config(update="ema", kmeans_init=True))
        dm = AudioDataModule(str(audio_dir), batch_size=2, val_fraction=0.0, cache_dir=cache_dir)
        make_trainer(tmp_path, max_steps=6).fit(model, datamodule=dm)
        return model.quantizer.codebook.detach().clone()

    torch.testing.assert_close(run(None), run(str(tmp_path / "cache")), atol=1e-5, rtol=1e-5)


class StepRecorder(L.Callback):
    """Which segments each training step saw, and how many dead codes it restarted."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.restarts: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(batch["index"].tolist())
        self.restarts.append(int(pl_module.quantizer.num_restarted))


@pytest.mark.parametrize("checkpointing", ["last at max_steps", "every step, with validation and workers"])
def test_resume_is_exact_from_every_kind_of_stop(tmp_path, audio_dir, checkpointing, single_thread):
    """Stopping at step k and resuming to N gives the state of N uninterrupted steps, by running only
    steps k+1..N on the batches the uninterrupted run saw there (a resume that ignored the checkpoint
    would run N steps; one that lost the data position would see other batches).

    Two ways of writing the checkpoint: the one ``max_steps`` leaves (``save_last``, written after
    Lightning closed the epoch), and the shipped configs' one (``every_n_train_steps``, written inside
    the epoch) with validation running and two dataloader workers."""
    # 512 codes for tones: some go unused, so restarts fire early in the run.
    cfg = codebook_config(num_codes=512, update="ema", kmeans_init=True, dead_code_threshold=2)
    total = 9  # 6 (or 5 training) files / batch 2 = 3 batches per epoch
    per_step = checkpointing.startswith("every step")

    def fit(max_steps, root, ckpt_path=None):
        L.seed_everything(0)
        model = CodebookTrainer(backbone="random:tiny", codebook=cfg, latent="sample", seed=5)
        dm = AudioDataModule(str(audio_dir), batch_size=2, val_fraction=0.2 if per_step else 0.0, seed=3, num_workers=2 if per_step else 0)
        recorder = StepRecorder()
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1 if per_step else None)
        validation = dict(limit_val_batches=1.0, val_check_interval=2) if per_step else {}
        trainer = make_trainer(root, max_steps=max_steps, callbacks=[recorder, checkpoint], **validation)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        state = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
        return state, recorder, torch.load(root / "last.ckpt", weights_only=False)

    straight, seen, final = fit(total, tmp_path / "straight")
    restart_steps = [step for step, n in enumerate(seen.restarts, start=1) if n > 0 and 1 < step < total]
    assert restart_steps, "the configuration must restart dead codes within the run"
    # Stopping right before a restart: the resumed run's first step must fire it from restored counters.
    stops = {"mid-epoch": 4, "epoch end": 6, "just before a dead-code restart": restart_steps[0] - 1}
    for label, k in stops.items():
        fit(k, tmp_path / f"stop{k}")
        resumed, resumed_seen, resumed_final = fit(total, tmp_path / f"resume{k}", ckpt_path=str(tmp_path / f"stop{k}" / "last.ckpt"))
        assert resumed_seen.batches == seen.batches[k:], label
        assert resumed_seen.restarts == seen.restarts[k:], label
        for name, value in straight.items():
            torch.testing.assert_close(resumed[name], value, atol=0, rtol=0, msg=f"{label}: {name}")
        assert (resumed_final["epoch"], resumed_final["global_step"]) == (final["epoch"], final["global_step"]), label
        fresh, _, _ = fit(total - k, tmp_path / f"fresh{k}")
        assert not torch.equal(fresh["codebook"], resumed["codebook"]), f"{label}: the resumed state must come from the checkpoint"


def test_last_checkpoint_is_the_final_step_whatever_the_interval(tmp_path, audio_dir):
    """Checkpoints every 2 steps and max_steps 3: last.ckpt holds step 3 (and so does a step file), and a
    resume from it continues from there (test_resume_is_exact_from_every_kind_of_stop proves that such a
    checkpoint resumes exactly). A second, fresh run into the folder overwrites last.ckpt: no last-v1.ckpt
    beside it, and the first run's end is still in step000003.ckpt."""
    cfg = codebook_config(update="ema", kmeans_init=False)

    def fit(max_steps, folder, ckpt_path=None):
        model = CodebookTrainer(backbone="random:tiny", codebook=cfg)
        dm = AudioDataModule(str(audio_dir), batch_size=2, val_fraction=0.0, seed=3)
        checkpoint = RunCheckpoint(dirpath=folder, filename="step{step:06d}", auto_insert_metric_name=False,
                                   every_n_train_steps=2, save_last=True, save_top_k=-1)
        recorder = StepRecorder()
        make_trainer(folder, max_steps=max_steps, callbacks=[checkpoint, recorder]).fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model, recorder

    def saved(path):
        ckpt = torch.load(path, weights_only=False)
        return ckpt["global_step"], int(ckpt["state_dict"]["quantizer.step"])  # steps counted, steps trained

    folder = tmp_path / "run"
    fit(3, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step000002.ckpt", "step000003.ckpt"]
    assert saved(folder / "last.ckpt") == (3, 3)
    resumed, recorder = fit(4, folder, ckpt_path=str(folder / "last.ckpt"))
    # One step run, on top of the three restored.
    assert len(recorder.batches) == 1 and resumed.trainer.global_step == 4 and int(resumed.quantizer.step) == 4
    assert saved(folder / "last.ckpt") == (4, 4)
    fit(1, folder)  # a fresh run into the same folder
    assert saved(folder / "last.ckpt") == (1, 1) and not list(folder.glob("last-v*"))
    assert saved(folder / "step000003.ckpt") == (3, 3)


def test_ema_codebook_trains_under_16_mixed_with_a_grad_scaler(tmp_path, audio_dir):
    """16-mixed on a GPU runs with a GradScaler, which an EMA codebook (no trainable parameter, no loss
    to scale) must not meet. CPU autocast makes 16-mixed a plain bf16 run, so the CPU GradScaler is
    passed explicitly: it takes the same path as the CUDA one."""
    from lightning.pytorch.plugins import MixedPrecision

    model = CodebookTrainer(backbone="random:tiny", codebook=codebook_config(update="ema", kmeans_init=False))
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = make_trainer(tmp_path, max_steps=2, plugins=[plugin], enable_checkpointing=False)
    trainer.fit(model, datamodule=AudioDataModule(str(audio_dir), batch_size=2, val_fraction=0.0))
    assert trainer.precision == "16-mixed" and trainer.precision_plugin.scaler is plugin.scaler
    assert trainer.global_step == 2 and int(model.quantizer.step) == 2


def test_checkpoint_holds_codebook_not_backbone_and_refuses_other_shapes(tmp_path, audio_dir):
    model = CodebookTrainer(backbone="random:tiny", codebook=codebook_config(kmeans_init=True))
    dm = AudioDataModule(str(audio_dir), batch_size=2, val_fraction=0.0)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "cb.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert not any(k.startswith("backbone.") for k in ckpt["state_dict"])
    assert ckpt["recon"]["codebook"]["num_codes"] == 64 and ckpt["recon"]["spec"]["sample_rate"] == 16000
    assert path.stat().st_size < 200_000
    loaded = load_codebook_trainer(str(path))
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)
    with pytest.raises(ValueError, match="vae_block_out_channels: checkpoint \\[8, 16, 16\\] vs backbone \\[128, 256, 512\\]"):
        load_codebook_trainer(str(path), backbone="random:full")


def run_cli(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "WANDB_SERVICE")}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(cwd), WANDB_DATA_DIR=str(cwd / "wandb-data"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_tiny_config_trains_from_the_command_line(tmp_path):
    result = run_cli(
        ["fit", "--config", str(ROOT / "configs/tiny.yaml"), "--data.root", str(ROOT / "examples/audio"), "--trainer.max_steps", "8"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "tiny" / "last.ckpt").is_file()
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("codebook", ["codebook_hard.yaml", "codebook_soft.yaml", "codebook_rvq.yaml"])
def test_per_concern_configs_compose_and_run(tmp_path, audio_dir, codebook):
    configs = [f"--config={ROOT / 'configs' / name}" for name in ("trainer.yaml", "backbone.yaml", "data.yaml", codebook)]
    result = run_cli(
        ["fit", *configs, "--model.backbone", "random:tiny", "--data.root", str(audio_dir), "--data.num_workers", "0",
         "--trainer.max_steps", "3", "--trainer.logger", "false", "--model.kmeans_init_batches", "1"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "checkpoints" / "codebook" / "last.ckpt"
    stages = load_codebook_trainer(str(ckpt)).quantizer.num_stages
    assert stages == (4 if codebook == "codebook_rvq.yaml" else 1)


# ---------------------------------------------------------------------- the command line for a person
def readme_train_commands() -> tuple[list[str], list[str]]:
    """The README's first training command and its resume command, as argument lists for train.main."""
    import shlex

    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    first = next(line for line in lines if line.startswith("python train.py fit --config configs/tiny.yaml") and "--ckpt_path" not in line)
    resume = next(line for line in lines if line.startswith("python train.py fit") and "--ckpt_path" in line)
    return [shlex.split(line, comments=True)[2:] for line in (first, resume)]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
    """The README's two training commands in a fresh folder, in this process, with what they printed.

    Only where things go changes: configs and the example audio from the repository, no W&B run."""
    import train
    from tests.test_infer import ConsoleCapture

    first, resume = readme_train_commands()
    where = ["--data.root", str(ROOT / "examples" / "audio"), "--trainer.logger", "false"]

    def run(args):
        args = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
        with ConsoleCapture() as console:
            cli = train.main([*args, *where])
        return cli, console

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("readme"))
        mp.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the command's
        mp.delenv("WANDB_QUIET", raising=False)
        first_cli, first_console = run(first)
        first_codebook = first_cli.model.quantizer.codebook.detach().clone()
        first_step = first_cli.trainer.global_step
        resumed_cli, _ = run(resume)
        # The same resume once more, now that the run is at its max_steps: nothing to train, said so.
        with ConsoleCapture() as again, pytest.raises(SystemExit) as stopped:
            train.main([*(str(ROOT / a) if a.startswith("configs/") else a for a in resume), *where])
        yield dict(first=first_cli, first_step=first_step, first_codebook=first_codebook, first_console=first_console,
                   resumed=resumed_cli, resume_args=resume, again=again, again_code=stopped.value.code)


def test_readme_resume_example_continues_training(readme_runs):
    resumed = readme_runs["resumed"]
    target = int(option(readme_runs["resume_args"], "--trainer.max_steps"))
    assert readme_runs["first_step"] > 0
    assert resumed.trainer.global_step == target > readme_runs["first_step"]
    assert not torch.equal(resumed.model.quantizer.codebook, readme_runs["first_codebook"])
    # Resuming a finished run trains nothing: exit status 2 and what to do, not a silent no-op.
    assert readme_runs["again_code"] == 2
    assert "nothing left to train" in readme_runs["again"].stderr.getvalue() and "--trainer.max_steps" in readme_runs["again"].stderr.getvalue()


def test_training_output_is_quiet_and_explains_zero_trainable_parameters(readme_runs):
    from tests.test_infer import LIBRARY_NOISE

    text = readme_runs["first_console"].text
    assert [noise for noise in LIBRARY_NOISE if noise in text] == [], text
    assert "eval mode at the start of training" not in text and "configure_optimizers` returned `None`" not in text
    # The model summary's "Trainable params: 0" comes with the one line that explains it.
    assert "Trainable params: 0" in text
    assert "0 trainable parameters is expected" in text
    assert f"trained to step {readme_runs['first_step']}" in text


def test_progress_bar_counts_the_runs_steps_with_four_significant_digits(readme_runs):
    from recon.progress import StepProgressBar

    for cli in (readme_runs["first"], readme_runs["resumed"]):
        trainer = cli.trainer
        bar = trainer.progress_bar_callback
        assert isinstance(bar, StepProgressBar)
        task = bar.progress.tasks[bar.train_progress_bar_id]
        # Steps of the whole run (the tiny data gives 3-batch epochs), continued across the resume.
        assert (task.completed, task.total) == (trainer.global_step, trainer.max_steps)
        shown = dict(text.split(": ") for text in bar._metric_component._generate_metrics_texts())
        loss = float(trainer.callback_metrics["train/loss"])
        assert shown["train/loss"] == f"{loss:.4g}"
        assert shown["epoch"] == str(math.ceil(trainer.global_step / trainer.num_training_batches))  # counted from 1
        assert "v_num" not in shown


def test_model_and_data_arguments_are_documented_for_fit_help(capsys, monkeypatch):
    """LightningCLI takes --help text from the Args sections of the class docstrings."""
    import inspect

    import docstring_parser

    import train

    for cls in (CodebookTrainer, AudioDataModule):
        documented = {p.arg_name: p.description for p in docstring_parser.parse(cls.__doc__).params}
        params = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        assert [name for name in params if not documented.get(name, "").strip()] == [], cls.__name__
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as done:
        train.main(["fit", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Adam learning rate" in text and "folder of audio files, searched recursively" in text
