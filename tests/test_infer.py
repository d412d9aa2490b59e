"""infer.py end to end on the tiny backbone: every input x variant exactly once, on 1 and 2 devices."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import infer
from recon.variants import VARIANTS
from tests.conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"


def run_infer(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "WANDB_SERVICE")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_DIR=str(cwd), WANDB_DATA_DIR=str(cwd / "wandb-data"), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "infer.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def main(args: list[str], capsys) -> tuple[int, str]:
    """infer.py in this process (a subprocess pays ~10 s of imports); returns (exit status, stderr)."""
    capsys.readouterr()
    code = infer.main(args)
    return code, capsys.readouterr().err


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def make_inputs(root: Path) -> tuple[set[str], set[str]]:
    """Good files (one nested, one long, one 96 kHz 6-channel, one silent) and bad files."""
    write_tone(root / "tone.wav", 2.0, freq=440)
    write_tone(root / "nested" / "low.flac", 1.5, freq=110, sr=22050)
    write_tone(root / "long.wav", 23.0, freq=330)
    write_tone(root / "surround.wav", 1.0, sr=96000, channels=6)
    sf.write(str(root / "silent.wav"), np.zeros(16000, dtype=np.float32), 16000)
    (root / "empty.wav").write_bytes(b"")
    (root / "not_audio.wav").write_text("hello, I am a text file\n" * 50)
    write_tone(root / "truncated.wav", 1.0)
    (root / "truncated.wav").write_bytes((root / "truncated.wav").read_bytes()[:30])
    write_tone(root / "too_short.wav", 0.05)
    nan = np.zeros(16000, dtype=np.float32)
    nan[10] = np.nan
    sf.write(str(root / "nan.wav"), nan, 16000, subtype="FLOAT")
    good = {"tone.wav", "nested/low.flac", "long.wav", "surround.wav", "silent.wav"}
    bad = {"empty.wav", "not_audio.wav", "truncated.wav", "too_short.wav", "nan.wav"}
    return good, bad


@pytest.mark.parametrize("devices", [1, 2])
def test_every_input_and_variant_written_exactly_once(tmp_path, devices, capsys, caplog):
    good, bad = make_inputs(tmp_path / "in")  # 10 inputs: ranks get 5 and 5 files, but 2 and 3 good ones
    out = tmp_path / "out"
    args = ["--ckpt", str(DEMO_CKPT), "--input", str(tmp_path / "in"), "--output", str(out), "--wandb", "off",
            "--no-perceptual", "--batch-size", "2", "--griffinlim-iters", "4", "--accelerator", "cpu", "--devices", str(devices)]
    if devices > 1:
        # The subprocess launcher re-runs infer.py per rank: the way ddp runs from a command line.
        result = run_infer([*args, "--strategy", "ddp"], cwd=tmp_path)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = main(args, capsys)
        stderr += caplog.text  # in this process, pytest's handler takes the log records
    assert code == 1, stderr[-3000:]  # some inputs failed
    rows = read_csv(out / "metrics.csv")
    counts = Counter((r["file"], r["variant"]) for r in rows)
    assert set(counts) == {(f, v) for f in good for v in VARIANTS if v in {"vae_mode", "vae_sample", "vae_clamped", "vae_highfreq", "vae_mixed", "vocoder_only", "griffinlim", "codebook_hard", "codebook_soft", "opus"}}
    assert set(counts.values()) == {1}
    errors = {r["file"]: r["reason"] for r in read_csv(out / "errors.csv")}
    assert set(errors) == bad
    assert "too short" in errors["too_short.wav"] and "NaN" in errors["nan.wav"] and "empty" in errors["empty.wav"]
    for name in bad:
        assert name in stderr
    for variant in {r["variant"] for r in rows} | {"input"}:
        written = {p.relative_to(out / variant).as_posix() for p in (out / variant).rglob("*.wav")}
        assert written == {str(Path(f).with_suffix(".wav")) for f in good}
    long_info = sf.info(str(out / "codebook_hard" / "long.wav"))
    assert long_info.frames == 23 * 16000 and long_info.samplerate == 16000
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    assert not (out / ".recon-run").exists()


def test_existing_results_are_not_overwritten(tmp_path, capsys):
    write_tone(tmp_path / "in" / "a.wav", 1.0)
    out = tmp_path / "out"
    args = ["--ckpt", str(DEMO_CKPT), "--input", str(tmp_path / "in"), "--output", str(out), "--wandb", "off",
            "--no-perceptual", "--variants", "vae_mode,codebook_hard", "--accelerator", "cpu"]
    assert main(args, capsys)[0] == 0
    before = (out / "vae_mode" / "a.wav").stat().st_mtime_ns
    code, stderr = main(args, capsys)
    assert code == 2 and "--overwrite" in stderr
    assert (out / "vae_mode" / "a.wav").stat().st_mtime_ns == before
    assert main([*args, "--overwrite"], capsys)[0] == 0


def test_usage_errors_are_one_line(tmp_path, capsys):
    code, stderr = main(["--ckpt", str(DEMO_CKPT), "--input", str(tmp_path), "--variants", "vae_mode,bogus", "--wandb", "off"], capsys)
    assert code == 2 and "error: unknown variants ['bogus']" in stderr
    write_tone(tmp_path / "a.wav", 1.0)
    code, stderr = main(["--input", str(tmp_path / "a.wav"), "--backbone", "random:tiny", "--variants", "codebook_hard", "--wandb", "off"], capsys)
    assert code == 2 and "needs codebook" in stderr
    code, stderr = main(["--input", str(tmp_path / "a.wav"), "--backbone", "random:tiny", "--variants", "vae_mode", "--wandb", "off",
                         "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"], capsys)
    assert code == 2 and "1 input file(s) for 2 processes" in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ")


def test_diffusion_variants_on_two_devices(tmp_path):
    from recon.diffusion import make_tiny_pipeline_folder

    pipeline = make_tiny_pipeline_folder(tmp_path / "pipeline")
    for i, freq in enumerate([220, 440, 880]):  # odd count: ranks get 2 and 1 files
        write_tone(tmp_path / "in" / f"t{i}.wav", 1.0 + i, freq=freq)
    out = tmp_path / "out"
    result = run_infer(
        ["--ckpt", str(DEMO_CKPT), "--diffusion", str(pipeline), "--input", str(tmp_path / "in"), "--output", str(out),
         "--variants", "codebook_sdedit,ddcm_noise,text2audio", "--ddcm-steps", "4", "--ddcm-k", "16", "--diffusion-steps", "3",
         "--wandb", "off", "--no-perceptual", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(out / "metrics.csv")
    assert Counter((r["file"], r["variant"]) for r in rows) == Counter(
        {(f"t{i}.wav", v): 1 for i in range(3) for v in ("codebook_sdedit", "ddcm_noise", "text2audio")}
    )
    ddcm_bps = [float(r["bitrate_bps"]) for r in rows if r["variant"] == "ddcm_noise"]
    assert ddcm_bps == pytest.approx([3 * 4 / 10.24] * 3)  # (steps - 1) * log2 K bits per 10.24 s
    import json

    summary = json.loads((out / "summary.json").read_text())["variants"]
    assert summary["text2audio"]["is_reconstruction"] is False
    assert summary["text2audio"]["bitrate_label"] == "n/a (not a reconstruction)"
    assert summary["ddcm_noise"]["bitrate_label"] == "1.2 bps"
    for variant in ("codebook_sdedit", "ddcm_noise", "text2audio"):
        assert sf.info(str(out / variant / "t2.wav")).frames == 3 * 16000

    # The .recn file alone (with the named pipeline) reproduces the written audio.
    from recon.backbone import FrozenAudioLDM2
    from recon.codec import decode_container
    from recon.container import loads
    from recon.diffusion import load_diffusion_components

    container = loads((out / "ddcm_noise" / "t1.recn").read_bytes())
    assert (container.header["steps"], container.header["K"], container.header["num_samples"]) == (4, 16, 2 * 16000)
    components = load_diffusion_components(str(pipeline), local_files_only=True)
    wav = decode_container(container, FrozenAudioLDM2.from_source("random:tiny"), diffusion=components)
    written, _ = sf.read(str(out / "ddcm_noise" / "t1.wav"), dtype="float32")
    np.testing.assert_allclose(written, wav.numpy(), atol=1e-4)


def test_parameter_sweeps_give_one_column_per_value(tmp_path, capsys):
    from recon.diffusion import make_tiny_pipeline_folder

    pipeline = make_tiny_pipeline_folder(tmp_path / "pipeline")
    write_tone(tmp_path / "in" / "a.wav", 1.5, freq=330)
    out = tmp_path / "out"
    code, _ = main(["--ckpt", str(DEMO_CKPT), "--diffusion", str(pipeline), "--input", str(tmp_path / "in"), "--output", str(out),
                    "--variants", "codebook_hard,codebook_sdedit,ddcm_noise", "--refine-strength", "0,0.5", "--diffusion-steps", "2",
                    "--ddcm-steps", "3,5", "--ddcm-k", "16", "--wandb", "off", "--no-perceptual", "--accelerator", "cpu"], capsys)
    assert code == 0
    rows = {r["variant"]: r for r in read_csv(out / "metrics.csv")}
    assert set(rows) == {"codebook_hard", "codebook_sdedit@0", "codebook_sdedit@0.5", "ddcm_noise@T3-K16", "ddcm_noise@T5-K16"}
    # Each point carries its own settings: DDCM's nominal rate is (steps - 1) log2 K per 10.24 s.
    assert float(rows["ddcm_noise@T3-K16"]["bitrate_bps"]) == pytest.approx(2 * 4 / 10.24)
    assert float(rows["ddcm_noise@T5-K16"]["bitrate_bps"]) == pytest.approx(4 * 4 / 10.24)
    # Strength 0 is the codebook alone; 0.5 is not.
    hard, _ = sf.read(str(out / "codebook_hard" / "a.wav"), dtype="float32")
    zero, _ = sf.read(str(out / "codebook_sdedit@0" / "a.wav"), dtype="float32")
    half, _ = sf.read(str(out / "codebook_sdedit@0.5" / "a.wav"), dtype="float32")
    np.testing.assert_array_equal(zero, hard)
    assert np.abs(half - hard).max() > 0.1 * np.abs(hard).max()
    summary = json.loads((out / "summary.json").read_text())["variants"]
    assert summary["ddcm_noise@T5-K16"]["measured_bps"] > summary["ddcm_noise@T3-K16"]["measured_bps"]


# ---------------------------------------------------------------------- the command line for a person
class ConsoleCapture:
    """Everything a person would see from an in-process run: stdout, stderr, log records (Lightning's
    loggers have handlers of their own, bound to the streams of import time) and shown warnings."""

    LOGGERS = ("", "recon", "lightning.pytorch", "lightning.fabric", "lightning_utilities")

    def __enter__(self) -> "ConsoleCapture":
        import contextlib
        import io
        import logging
        import warnings

        self.stdout, self.stderr, self.lines = io.StringIO(), io.StringIO(), []
        capture = self

        class Record(logging.Handler):
            def emit(self, record):
                capture.lines.append(record.getMessage())

        self._handler = Record()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self.stdout))
        self._stack.enter_context(contextlib.redirect_stderr(self.stderr))
        self.warnings = self._stack.enter_context(warnings.catch_warnings(record=True))
        levels = {name: logging.getLogger(name).level for name in self.LOGGERS}
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        # What the run configures stays in the run (later tests keep their own logging).
        self._stack.callback(lambda: [logging.getLogger(n).setLevel(v) for n, v in levels.items()])
        self._stack.callback(lambda: [logging.getLogger(n).removeHandler(self._handler) for n in self.LOGGERS])
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def text(self) -> str:
        return "\n".join([self.stdout.getvalue(), self.stderr.getvalue(), *self.lines, *(str(w.message) for w in self.warnings)])


LIBRARY_NOISE = ("💡 Tip", "GPU available", "TPU available", "Seed set to", "is deprecated")


def test_infer_is_quiet_by_default_and_verbose_brings_lightning_back(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_QUIET", raising=False)  # restored afterwards; the quiet run sets it
    write_tone(tmp_path / "in" / "a.wav", 1.0)
    args = ["--backbone", "random:tiny", "--input", str(tmp_path / "in"), "--variants", "vae_mode", "--wandb", "off",
            "--no-perceptual", "--accelerator", "cpu"]
    with ConsoleCapture() as quiet:
        assert infer.main([*args, "--output", str(tmp_path / "quiet")]) == 0
    assert "wrote " in quiet.stdout.getvalue()
    assert [noise for noise in LIBRARY_NOISE if noise in quiet.text] == [], quiet.text
    # The same capture sees Lightning's banner when asked for it: the absence above is not the capture's.
    with ConsoleCapture() as verbose:
        assert infer.main([*args, "--output", str(tmp_path / "verbose"), "--verbose"]) == 0
    assert "GPU available" in verbose.text


def test_model_loading_chatter_is_hidden_unless_verbose():
    # diffusers and transformers log through handlers bound at import time, so this checks their
    # settings: errors only and no weight-loading bars by default, their own defaults with --verbose.
    import diffusers
    import transformers

    from recon.console import configure_output

    libraries = (diffusers.utils.logging, transformers.utils.logging)
    try:
        configure_output(verbose=False)
        assert [lib.get_verbosity() for lib in libraries] == [logging.ERROR] * 2
        assert not any(lib.is_progress_bar_enabled() for lib in libraries)
        configure_output(verbose=True)
        assert [lib.get_verbosity() for lib in libraries] == [logging.WARNING] * 2
        assert all(lib.is_progress_bar_enabled() for lib in libraries)
    finally:
        configure_output(verbose=False)


def read_manifest(out: Path) -> list[str]:
    from recon.outputs import MANIFEST

    return json.loads((out / MANIFEST).read_text())["entries"]


def test_overwrite_removes_exactly_what_the_previous_run_wrote(tmp_path, capsys):
    write_tone(tmp_path / "in" / "a.wav", 1.0)
    out = tmp_path / "out"
    args = ["--backbone", "random:tiny", "--input", str(tmp_path / "in"), "--output", str(out), "--wandb", "off",
            "--no-perceptual", "--accelerator", "cpu"]
    assert main([*args, "--variants", "vae_mode,vocoder_only"], capsys)[0] == 0
    assert {"input/", "vae_mode/", "vocoder_only/", "metrics.csv", "summary.json", "errors.csv", "report.html"} <= set(read_manifest(out))
    (out / "notes.txt").write_text("the user's own file")
    write_tone(out / "my_clips" / "b.wav", 0.5)  # a folder of audio recon did not write
    # Without --overwrite an earlier run is refused, as before; nothing is touched.
    code, stderr = main([*args, "--variants", "vae_mode"], capsys)
    assert code == 2 and "--overwrite" in stderr and (out / "vocoder_only" / "a.wav").is_file()

    assert main([*args, "--variants", "vae_mode", "--overwrite"], capsys)[0] == 0
    assert not (out / "vocoder_only").exists()  # the stale variant is gone
    assert (out / "vae_mode" / "a.wav").is_file() and {r["variant"] for r in read_csv(out / "metrics.csv")} == {"vae_mode"}
    assert (out / "notes.txt").read_text() == "the user's own file" and (out / "my_clips" / "b.wav").is_file()
    manifest = read_manifest(out)
    assert "vae_mode/" in manifest and "vocoder_only/" not in manifest and "my_clips/" not in manifest

    # A folder recon did not write is never written into (a later --overwrite would remove it): refused, kept.
    (out / "vocoder_only").mkdir()
    (out / "vocoder_only" / "keep.txt").write_text("the user's")
    code, stderr = main([*args, "--variants", "vocoder_only", "--overwrite"], capsys)
    assert code == 2 and "vocoder_only/" in stderr and "no recorded recon run wrote" in stderr
    assert (out / "vocoder_only" / "keep.txt").read_text() == "the user's" and (out / "vae_mode" / "a.wav").is_file()


def walk_options(parser, prefix: str = ""):
    """(command, option) for every option and positional of a parser and its subcommands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_options(sub, f"{prefix}{name} ")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{prefix}{'/'.join(action.option_strings) or action.dest}", action


def test_every_option_of_infer_and_recon_has_help():
    from recon import cli
    from recon.precision import SUPPORTED_PRECISIONS

    for parser in (infer.build_parser(), cli.build_parser()):
        options = dict(walk_options(parser))
        assert len(options) > 10
        assert [name for name, action in options.items() if not (action.help or "").strip()] == []
    precision = dict(walk_options(infer.build_parser()))["--precision"]
    assert tuple(precision.choices) == SUPPORTED_PRECISIONS
    # Lightning's spellings are accepted and named canonically; a refused one says why in one line.
    assert infer.parse_args(["--input", "x", "--precision", "bf16"]).precision == "bf16-mixed"
    with pytest.raises(infer.UsageError, match="must stay float32"):
        infer.parse_args(["--input", "x", "--precision", "16-true"])
