"""Runs that survive being stopped: killed with SIGKILL part-way, then resumed with --resume, they end
with the metrics.csv of an uninterrupted run; the resumed run does only the files the killed one had
not committed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

import infer
from recon.journal import JOURNAL, Journal
from tests.conftest import child_env, write_tone

ROOT = Path(__file__).resolve().parents[1]
FILES = 8
# batch size 2 of 8 files: the same batches on one rank and on two (FileBatches caps at files / ranks).
ARGS = ["--backbone", "random:tiny", "--variants", "vae_mode,griffinlim", "--griffinlim-iters", "16", "--batch-size", "2",
        "--wandb", "off", "--no-perceptual", "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(FILES):
        write_tone(root / f"f{i}.wav", 1.0 + 0.25 * (i % 3), freq=150 + 60 * i, seed=i)
    return root


def committed(out: Path) -> dict[str, set[str]]:
    """Files committed by each attempt (journal file name -> files), complete lines only."""
    found: dict[str, set[str]] = {}
    for path in sorted((out / JOURNAL).glob("*.jsonl")):
        attempt = path.name.split("-rank")[0]
        lines = path.read_text().split("\n")[:-1]  # a torn last line has no newline
        found.setdefault(attempt, set()).update(json.loads(line)["file"] for line in lines)
    return found


def kill_part_way(runs: dict[str, tuple[list[str], Path, int]], timeout: float = 300) -> dict[str, set[str]]:
    """Start infer.py once per entry (name -> (arguments, output folder, files)), all at once so their
    imports overlap; SIGKILL each one's process group once that many of its files are committed.
    Returns the files each had committed."""
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "infer.py"), *args], cwd=out.parent, env=child_env(), start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, (args, out, _) in runs.items()}
    deadline = time.monotonic() + timeout
    try:
        while procs:
            for name, proc in list(procs.items()):
                _, out, at_least = runs[name]
                if (out / JOURNAL).is_dir() and sum(map(len, committed(out).values())) >= at_least:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    del procs[name]
                else:
                    assert proc.poll() is None, f"{name}: the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the runs committed too few files in time"
            time.sleep(0.02)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return {name: set().union(*committed(out).values()) for name, (_, out, _) in runs.items()}


@pytest.fixture(scope="module")
def killed(corpus, tmp_path_factory) -> dict[str, tuple[Path, set[str]]]:
    """A run on one rank and one on 2 DDP processes (the launcher re-runs infer.py per rank), killed part-way."""
    one, ddp = tmp_path_factory.mktemp("one") / "out", tmp_path_factory.mktemp("ddp") / "out"
    done = kill_part_way({
        "one": (["--input", str(corpus), "--output", str(one), *ARGS], one, 2),
        "ddp": (["--input", str(corpus), "--output", str(ddp), *ARGS, "--devices", "2", "--strategy", "ddp"], ddp, 3),
    })
    return {"one": (one, done["one"]), "ddp": (ddp, done["ddp"])}


def table(out: Path) -> list[dict]:
    """metrics.csv without its timing column."""
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(autouse=True)
def one_thread(single_thread, monkeypatch):
    """This process and the ranks it spawns compute with one thread, as the killed subprocesses do."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def whole_run(corpus, tmp_path_factory, single_thread) -> Path:
    out = tmp_path_factory.mktemp("whole") / "out"
    assert infer.main(["--input", str(corpus), "--output", str(out), *ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def uninterrupted(whole_run) -> list[dict]:
    return table(whole_run)


def check_resumed(out: Path, done_before: set[str], uninterrupted: list[dict]) -> None:
    assert 0 < len(done_before) < FILES, done_before  # killed part-way, not before or after
    # Every wav the kill left is whole (written to a temporary name, then renamed).
    for wav in out.rglob("*.wav"):
        assert sf.info(str(wav)).frames > 0
    assert table(out) == uninterrupted
    attempts = committed(out)
    assert len(attempts) == 2
    first, second = sorted(attempts.values(), key=lambda files: files == done_before, reverse=True)
    assert first == done_before and second == {f"f{i}.wav" for i in range(FILES)} - done_before  # only the missing ones
    assert not list(out.rglob(".*.tmp"))


def test_a_killed_run_resumes_to_the_same_metrics(corpus, killed, uninterrupted, capsys):
    out, done = killed["one"]
    before = {f: (out / "vae_mode" / f).stat().st_mtime_ns for f in done}
    assert not (out / "metrics.csv").exists()
    capsys.readouterr()
    assert infer.main(["--input", str(corpus), "--output", str(out), *ARGS]) == 2  # without --resume: refused, and says why
    assert "--resume to continue the run that stopped there" in capsys.readouterr().err
    assert infer.main(["--input", str(corpus), "--output", str(out), *ARGS, "--resume"]) == 0
    check_resumed(out, done, uninterrupted)
    assert {f: (out / "vae_mode" / f).stat().st_mtime_ns for f in done} == before  # committed files were not redone


def test_a_killed_ddp_run_resumes_to_the_same_metrics(corpus, killed, uninterrupted):
    out, done = killed["ddp"]
    assert infer.main(["--input", str(corpus), "--output", str(out), *ARGS, "--devices", "2", "--strategy", "ddp_spawn", "--resume"]) == 0
    check_resumed(out, done, uninterrupted)


def test_a_ddp_resume_with_fewer_batches_than_ranks_finishes(corpus, whole_run, uninterrupted, tmp_path):
    """One file left to do on two ranks: one rank has no batch, and the run still ends with every row."""
    out = tmp_path / "out"
    shutil.copytree(whole_run, out)
    for path in (out / JOURNAL).glob("*.jsonl"):
        kept = [line for line in path.read_text().splitlines(keepends=True) if json.loads(line)["file"] != "f3.wav"]
        path.write_text("".join(kept))
    (out / "metrics.csv").unlink()
    before = committed(out)
    assert infer.main(["--input", str(corpus), "--output", str(out), *ARGS, "--devices", "2", "--strategy", "ddp_spawn", "--resume"]) == 0
    assert table(out) == uninterrupted
    new = {attempt: files for attempt, files in committed(out).items() if attempt not in before}
    assert list(new.values()) == [{"f3.wav"}]


def test_resume_refuses_other_settings_or_weights_in_one_line(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--input", str(corpus / "f0.wav"), "--output", str(out), *ARGS]
    assert infer.main(args) == 0
    capsys.readouterr()
    assert infer.main([*args, "--resume", "--griffinlim-iters", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "griffinlim_iters 16 then, 8 now" in err
    Journal(out).start({"settings": json.loads((out / JOURNAL / "run.json").read_text())["settings"], "weights": "0" * 16})
    assert infer.main([*args, "--resume"]) == 2
    assert "weights '0000000000000000' then" in capsys.readouterr().err


def test_resuming_a_finished_run_redoes_nothing(corpus, whole_run, uninterrupted):
    """Every file is committed: no rank has a batch, and the summary is written again from the journal."""
    wav = whole_run / "vae_mode" / "f0.wav"
    before = wav.stat().st_mtime_ns
    assert infer.main(["--input", str(corpus), "--output", str(whole_run), *ARGS, "--resume"]) == 0
    assert table(whole_run) == uninterrupted and wav.stat().st_mtime_ns == before
    assert sum(map(len, committed(whole_run).values())) == FILES
