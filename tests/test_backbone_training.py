"""The small stand-in backbone's recipe (`python -m recon.backbone train-small`) and its corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recon.audio import MelFrontEnd
from recon.backbone import FrozenAudioLDM2, describe_weights, make_backbone_folder
from recon.tools.backbone_cli import main as backbone_main
from recon.tools.backbone_training import SmallRecipe, stft_loss, train_small
from tests.conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]
FEW_STEPS = SmallRecipe(vae_steps=3, vae_batch=2, vocoder_steps=3, vocoder_batch=2)


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tones")
    for i, freq in enumerate((220.0, 440.0, 880.0)):
        write_tone(root / f"tone{i}.wav", 1.5, freq=freq, seed=i)
    return root


@pytest.fixture(scope="module")
def trained(tones, tmp_path_factory) -> Path:
    return train_small(tones, tmp_path_factory.mktemp("small") / "backbone", FEW_STEPS, "cpu")


def test_trained_folder_loads_like_a_hub_snapshot_with_audioldm2_latents(trained):
    backbone = FrozenAudioLDM2.from_source(str(trained))
    assert backbone.latent_shape() == (8, 256, 16)
    assert describe_weights(str(trained)) == "small"
    record = json.loads((trained / "recon_backbone.json").read_text())
    assert record["stages"] == ["vae", "vocoder"] and record["recipe"]["vae_steps"] == 3
    # The scaling factor is computed from the latents, not copied from AudioLDM2.
    assert backbone.scaling_factor == pytest.approx(record["scaling_factor"]) and backbone.scaling_factor != 0.4110932946205139
    mel = MelFrontEnd(backbone.spec)(torch.zeros(1, 2 * 16000))
    assert backbone.decode(backbone.encode(mel).mean).shape == mel.shape
    assert backbone.vocode(mel, num_samples=2 * 16000).shape == (1, 2 * 16000)


def test_continuing_the_vocoder_keeps_the_vae_and_records_the_history(trained, tones, tmp_path):
    out = tmp_path / "round2"
    backbone_main(["train-small", "--data", str(tones), "--out", str(out), "--init", str(trained), "--stages", "vocoder",
                   "--vocoder-steps", "2", "--device", "cpu"])
    before, after = FrozenAudioLDM2.from_source(str(trained)), FrozenAudioLDM2.from_source(str(out))
    assert all(torch.equal(a, b) for a, b in zip(before.vae.state_dict().values(), after.vae.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(before.vocoder.state_dict().values(), after.vocoder.state_dict().values()))
    record = json.loads((out / "recon_backbone.json").read_text())
    assert record["stages"] == ["vocoder"] and record["history"][0]["stages"] == ["vae", "vocoder"]
    assert record["scaling_factor"] == json.loads((trained / "recon_backbone.json").read_text())["scaling_factor"]


def test_stages_must_be_named(tones, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        backbone_main(["train-small", "--data", str(tones), "--out", str(tmp_path / "x"), "--stages", "unet"])
    assert exit_info.value.code == 2 and "--stages" in capsys.readouterr().err


def test_stft_loss_is_zero_for_identical_signals_and_grows_with_error():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 8000, generator=generator)
    assert float(stft_loss(clean, clean)) == pytest.approx(0.0, abs=1e-5)
    assert float(stft_loss(clean + 0.5 * torch.randn(2, 8000, generator=generator), clean)) > float(
        stft_loss(clean + 0.05 * torch.randn(2, 8000, generator=generator), clean)
    )


def test_describe_weights_names_random_small_and_pretrained(tmp_path):
    assert describe_weights("random:tiny") == "random"
    assert describe_weights(str(make_backbone_folder("tiny", tmp_path / "tiny"))) == "random"
    assert describe_weights(str(ROOT / "checkpoints" / "backbone-small")) == "small"
    assert describe_weights("cvssp/audioldm2") == "pretrained"


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox (apt-get install espeak-ng sox)")
def test_corpus_is_repeatable_16k_mono_and_audible(tmp_path):
    from recon.tools.corpus import make_corpus

    first = make_corpus(tmp_path / "a", speech=2, music=3, effects=4)
    second = make_corpus(tmp_path / "b", speech=2, music=3, effects=4)
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert {p.parent.name for p in first} == {"speech", "music", "effects"}
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name  # seeded choices, seeded sox noise
        info = sf.info(str(a))
        assert info.samplerate == 16000 and info.channels == 1 and 1.0 < info.duration < 10.24
        wav, _ = sf.read(str(a))
        assert np.sqrt(np.mean(wav**2)) > 0.01, a.name


def test_clips_too_short_to_crop_are_named_and_left_out(tones, tmp_path, caplog):
    from recon.audio import AudioSpec
    from recon.tools.backbone_training import load_clips

    data = tmp_path / "data"
    shutil.copytree(tones, data)
    write_tone(data / "blip.wav", 0.3)
    with caplog.at_level("WARNING", logger="recon.tools.backbone_training"):
        clips = load_clips(data, AudioSpec())
    assert len(clips) == 3 and "blip.wav" in caplog.text
    only_short = tmp_path / "short"
    write_tone(only_short / "blip.wav", 0.3)
    with pytest.raises(ValueError, match="shorter than"):
        load_clips(only_short, AudioSpec())


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` imports, outside its ``if __name__ == "__main__":`` block."""
    import ast

    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.update([module, *(f"{module}.{alias.name}" for alias in node.names)])
    return names


def test_the_runtime_never_imports_the_backbone_tooling():
    """recon.tools may import the runtime, never the reverse (lazy imports inside functions count too)."""
    offenders = {
        path.name: sorted(name for name in imported_modules(path, "recon") if name.startswith("recon.tools"))
        for path in (ROOT / "recon").glob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}
    # The check sees the imports it looks for.
    assert "recon.tools.backbone_training.train_small" in imported_modules(ROOT / "recon" / "tools" / "backbone_cli.py", "recon.tools")


def test_python_m_recon_backbone_runs_the_tooling_command_line(tmp_path, monkeypatch):
    import runpy
    import sys

    monkeypatch.delitem(sys.modules, "recon.backbone")  # as in a fresh `python -m`: not imported yet
    monkeypatch.setattr(sys, "argv", ["python -m recon.backbone", "make", "--size", "tiny", "--out", str(tmp_path / "tiny")])
    runpy.run_module("recon.backbone", run_name="__main__")
    assert describe_weights(str(tmp_path / "tiny")) == "random"
    assert FrozenAudioLDM2.from_source(str(tmp_path / "tiny")).latent_channels == 8


GAN_STEPS = SmallRecipe(gan_steps=5, gan_batch=2, gan_frames=16, checkpoint_every=5)


def _weights(path: Path, part: str) -> dict[str, torch.Tensor]:
    backbone = FrozenAudioLDM2.from_source(str(path))
    return getattr(backbone, part).state_dict()


def test_an_interrupted_adversarial_round_resumes_to_the_weights_of_an_uninterrupted_one(trained, tones, tmp_path, monkeypatch):
    """3 steps, SIGTERM, then 2 resumed steps == 5 steps in one go: what makes a 3-hour run safe to stop."""
    import dataclasses
    import os
    import signal

    from recon.tools.backbone_training import CropSampler
    from recon.tools.gan_training import STATE_FILE, TrainingInterrupted

    straight = train_small(tones, tmp_path / "straight", GAN_STEPS, "cpu", init=trained, stages=("gan",))

    saved_steps = []  # the step of the saved state seen before each crop is drawn
    sample = CropSampler.sample

    def sample_then_stop_at_the_third(self, *args):
        state = tmp_path / "resumed" / STATE_FILE
        saved_steps.append(torch.load(state, weights_only=True)["step"] if state.exists() else None)
        if len(saved_steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the step finishes, then the state is saved
        return sample(self, *args)

    monkeypatch.setattr(CropSampler, "sample", sample_then_stop_at_the_third)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_small(tones, tmp_path / "resumed", dataclasses.replace(GAN_STEPS, checkpoint_every=2), "cpu", init=trained, stages=("gan",))
    assert stopped.value.step == 3 and stopped.value.signum == signal.SIGTERM
    assert saved_steps == [None, None, 2]  # every checkpoint_every steps: a kill -9 loses at most 2 here
    first_session = torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)
    assert first_session["step"] == 3 and not (tmp_path / "resumed" / "vocoder").exists()
    monkeypatch.setattr(CropSampler, "sample", sample)

    resumed = train_small(tones, tmp_path / "resumed", GAN_STEPS, "cpu", init=trained, stages=("gan",), resume=True)
    end_straight = torch.load(straight / STATE_FILE, weights_only=True)
    end_resumed = torch.load(resumed / STATE_FILE, weights_only=True)
    for model in ("generator", "discriminator"):
        for name, value in end_straight[model].items():
            torch.testing.assert_close(end_resumed[model][name], value, rtol=0, atol=1e-6, msg=f"{model}.{name}")
    saved = _weights(resumed, "vocoder")
    torch.testing.assert_close(saved, _weights(straight, "vocoder"), rtol=0, atol=1e-6)
    # Both models trained: the generator moved from the saved backbone, the discriminator between sessions.
    start = _weights(trained, "vocoder")
    assert not all(torch.equal(start[k], v) for k, v in saved.items())
    assert not all(torch.equal(first_session["discriminator"][k], v) for k, v in end_resumed["discriminator"].items())
    # The VAE and its scaling are the saved backbone's, untouched.
    assert all(torch.equal(a, b) for a, b in zip(_weights(trained, "vae").values(), _weights(resumed, "vae").values()))
    record = json.loads((resumed / "recon_backbone.json").read_text())
    assert record["stages"] == ["gan"] and record["gan_steps_done"] == 5 and record["gan_sessions"] == 2
    assert record["history"][-1]["stages"] == ["vae", "vocoder"]
    assert record["scaling_factor"] == json.loads((trained / "recon_backbone.json").read_text())["scaling_factor"]


def test_an_adversarial_round_is_never_overwritten_or_resumed_from_nothing(trained, tones, tmp_path, capsys):
    from recon.tools.gan_training import STATE_FILE

    args = ["train-small", "--data", str(tones), "--init", str(trained), "--stages", "gan", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        backbone_main([*args, "--out", str(tmp_path / "empty"), "--resume"])
    assert exit_info.value.code == 1 and "no gan_state.pt" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / STATE_FILE).write_bytes(b"a round in progress")
    with pytest.raises(SystemExit) as exit_info:
        backbone_main([*args, "--out", str(tmp_path / "busy")])
    assert exit_info.value.code == 1 and "--resume" in capsys.readouterr().err
    assert (tmp_path / "busy" / STATE_FILE).read_bytes() == b"a round in progress"
    with pytest.raises(SystemExit) as exit_info:
        backbone_main([*args[:-4], "--stages", "vocoder", "--out", str(tmp_path / "x"), "--resume"])
    assert exit_info.value.code == 2 and "--resume" in capsys.readouterr().err
