"""Audio folders: deterministic order, segments of long files, clear rejections, split by file."""

from __future__ import annotations

import torch

from recon.audio import AudioSpec
from recon.data import AudioDataModule, AudioFolder, find_audio_files, split_files
from tests.conftest import write_tone


def make_folder(root):
    write_tone(root / "b" / "long.flac", 25.0, freq=300)
    write_tone(root / "a.wav", 3.0, sr=22050, channels=2)
    write_tone(root / "c" / "tiny.wav", 0.05)
    (root / "c" / "notes.txt").write_text("not audio")
    (root / "c" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    return root


def test_find_is_recursive_sorted_and_filters_extensions(tmp_path):
    root = make_folder(tmp_path)
    names = [p.relative_to(root).as_posix() for p in find_audio_files(root)]
    assert names == ["a.wav", "b/long.flac", "c/broken.wav", "c/tiny.wav"]


def test_segments_and_rejections(tmp_path):
    root = make_folder(tmp_path)
    ds = AudioFolder(root, min_duration=1.0)
    assert [(s.relpath, s.index) for s in ds.segments] == [("a.wav", 0), ("b/long.flac", 0), ("b/long.flac", 1), ("b/long.flac", 2)]
    rejected = {r.path.name: r.reason for r in ds.rejected}
    assert set(rejected) == {"tiny.wav", "broken.wav"}
    assert "too short" in rejected["tiny.wav"]
    item = ds[2]
    assert item["wav"].shape == (163840,) and item["path"] == "b/long.flac" and item["segment"] == 1
    assert item["wav"].abs().max() == torch.tensor(0.5)


def test_trailing_piece_shorter_than_minimum_is_dropped(tmp_path):
    write_tone(tmp_path / "x.wav", 10.24 + 0.5)
    assert len(AudioFolder(tmp_path, min_duration=1.0)) == 1
    assert len(AudioFolder(tmp_path, min_duration=0.25)) == 2


def test_split_is_by_file_and_deterministic(tmp_path):
    files = [tmp_path / f"{i}.wav" for i in range(10)]
    train, val = split_files(files, 0.2, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == sorted(files)
    assert split_files(files, 0.2, seed=0) == (train, val)


def test_datamodule_batches(tmp_path):
    root = make_folder(tmp_path)
    dm = AudioDataModule(str(root), batch_size=2, val_fraction=0.25, seed=0)
    dm.setup("fit")
    train_files = {s.relpath for s in dm.train_set.segments}
    val_files = {s.relpath for s in dm.val_set.segments}
    assert not train_files & val_files
    batch = next(iter(dm.train_dataloader()))
    assert batch["wav"].shape[1:] == (AudioSpec().num_samples,)
