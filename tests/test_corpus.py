"""Corpus-scale inputs: list files, the batch plan (by length, shared by duration), bounded
perceptual backlog, the file-based wait for ranks, the DDP timeout and a cache checked without
reading audio."""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import infer
from recon import metrics as M
from recon.cache import LatentCache, backbone_fingerprint
from recon.data import AudioFolder
from recon.inputs import FileBatches, InferenceFiles, find_files
from recon.journal import Journal, RankJournal
from recon.records import FileResult, RunInfo, VariantResult
from recon.variants import VARIANTS
from recon.writer import ResultWriter
from tests.conftest import write_tone


def test_list_files_name_paths_relative_to_their_folder(tmp_path):
    for name in ("a/x.wav", "b.flac"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# a comment\na/x.wav\n\n  b.flac  \nmissing.wav\n")
    (tmp_path / "a" / "meta.csv").write_text("id,path,label\n1,x.wav,k\n2,../b.flac,k\n")
    (tmp_path / "bad.csv").write_text("id,file\n1,x.wav\n")
    assert find_files([tmp_path / "list.txt"]) == [(tmp_path / "a/x.wav", "a/x.wav"), (tmp_path / "b.flac", "b.flac"),
                                                   (tmp_path / "missing.wav", "missing.wav")]
    # Entries outside the list's folder are named from the folder they share, never with "..".
    assert find_files([tmp_path / "a" / "meta.csv"]) == [(tmp_path / "a/x.wav", "a/x.wav"), (tmp_path / "b.flac", "b.flac")]
    with pytest.raises(ValueError, match="no 'path' column"):
        find_files([tmp_path / "bad.csv"])
    # A listed file that is missing is that file's error; the others go on.
    files = InferenceFiles([tmp_path / "list.txt"])
    assert files[2]["relpath"] == "missing.wav" and files[2]["error"]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_batch_plan_gives_every_file_to_one_rank_by_duration(world, monkeypatch):
    durations = [600.0] + [1.0] * 40 + [5.0] * 9  # one hour-long-ish file, many short ones
    plan = FileBatches(durations, batch_size=4, world=world)
    shares = plan.shares(world)
    flat = sorted(i for share in shares for batch in share for i in batch)
    assert flat == list(range(len(durations)))
    for batch in plan.batches:  # files of one batch have similar lengths
        assert max(durations[i] for i in batch) <= 5 * min(durations[i] for i in batch)
    if world > 1:
        # By duration, not count: the rank with the long file gets nothing else.
        long_rank = next(r for r, share in enumerate(shares) if any(0 in b for b in share))
        assert shares[long_rank] == [[0]]
        monkeypatch.setattr("recon.distributed.rank", lambda: long_rank)
        monkeypatch.setattr("recon.distributed.world_size", lambda: world)
        assert list(plan) == [[0]] and len(plan) == 1
    # A resumed plan forms the same batches and drops only the finished ones.
    finished = set(plan.batches[1]) | {plan.batches[2][0]}
    resumed = FileBatches(durations, batch_size=4, world=world, finished=finished)
    assert resumed.batches == [b for i, b in enumerate(plan.batches) if i != 1]


def host_result(index: int) -> FileResult:
    wav = np.zeros(1600, dtype=np.float32)
    return FileResult(index, f"f{index}.wav", input_wav=wav, variants=[VariantResult("vae_mode", wav=wav)])


def test_the_perceptual_backlog_is_bounded_and_pushes_back(tmp_path, monkeypatch):
    """While scores are slow, the writer holds at most ``perceptual_backlog`` files, then waits (so the
    queue and predict wait too); every file is committed once the scores come in."""
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Event()
    monkeypatch.setattr(M, "perceptual_scores", lambda ref, est, label, names: gate.wait(60) and {"pesq_wb": 1.0, "stoi": 1.0})
    writer = ResultWriter(tmp_path, RunInfo([VARIANTS["vae_mode"]], {}), perceptual=True, perceptual_backlog=2)
    writer._pool = ThreadPoolExecutor(1)  # a stand-in for the worker processes
    progress = []
    thread = threading.Thread(target=lambda: [writer.write(host_result(i)) or progress.append(i) for i in range(6)])
    thread.start()
    try:
        deadline = time.monotonic() + 30  # however slow the machine: wait for the third file to be handed in
        while len(writer._pending) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # then give it time to return, which it must not
        assert progress == [0, 1] and len(writer._pending) == 3 and writer.committed == 0  # blocked on the third file
    finally:
        gate.set()
    thread.join(10)
    writer._commit_ready(0)
    assert progress == list(range(6)) and writer.committed == 6
    assert {r["file"] for r in Journal(tmp_path).records()} == {f"f{i}.wav" for i in range(6)}
    writer._pool.shutdown()
    writer._rank_journal.close()


def test_rank_zero_waits_for_done_files_and_gives_up_on_a_silent_rank(tmp_path):
    journal = Journal(tmp_path)
    done = RankJournal(journal, "run1", 1)
    done.done(None)
    failed = RankJournal(journal, "run1", 2)
    failed.done("writing batch 3 failed")
    silent = RankJournal(journal, "run1", 3)
    silent.close()
    os.utime(journal._path("run1", 3, "alive"), (time.time() - 60, time.time() - 60))
    t0 = time.monotonic()
    result = journal.wait_for_ranks("run1", [1, 2, 3], timeout=30)
    assert result[1] is None and result[2] == "writing batch 3 failed" and "no heartbeat in 30 s" in result[3]
    assert time.monotonic() - t0 < 5


def test_ddp_timeout_builds_the_strategy():
    from lightning.pytorch.strategies import DDPStrategy

    strategy = infer.build_strategy("ddp_spawn", 7200)
    assert isinstance(strategy, DDPStrategy) and strategy._timeout == datetime.timedelta(seconds=7200)
    assert strategy._start_method == "spawn"
    assert infer.build_strategy("auto", 60) == "auto"
    assert infer.parse_args(["--input", "x", "--ddp-timeout", "90"]).ddp_timeout == 90


def test_a_complete_cache_is_checked_without_reading_the_audio(tmp_path, tiny_backbone, monkeypatch):
    for i in range(3):
        write_tone(tmp_path / "audio" / f"t{i}.wav", 1.0, freq=200 + 100 * i)
    dataset = AudioFolder(tmp_path / "audio")
    fingerprint = backbone_fingerprint(tiny_backbone)
    assert LatentCache(tmp_path / "cache", fingerprint).build(dataset, tiny_backbone, progress=False) == 3
    hashed = []
    from recon import cache as cache_module

    real = cache_module.file_digest
    monkeypatch.setattr(cache_module, "file_digest", lambda path: hashed.append(Path(path).name) or real(path))
    assert LatentCache(tmp_path / "cache", fingerprint).missing(dataset) == [] and hashed == []
    # A file whose size or time changed is hashed again (and found stale if its content changed).
    write_tone(tmp_path / "audio" / "t1.wav", 1.0, freq=999)
    assert LatentCache(tmp_path / "cache", fingerprint).missing(dataset) == [1] and hashed == ["t1.wav"]
    index = json.loads((tmp_path / "cache" / fingerprint / LatentCache.INDEX).read_text())
    assert len(index) == 3
