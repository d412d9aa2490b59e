"""AudioSource: a file read by offset equals the whole-file front-end (``normalise(load_audio)``)
within the stated tolerance, refuses the same files with the same messages, and reads a block at a
time."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from recon import audio_source
from recon.audio import AudioLoadError, load_audio, normalisation_gain, normalise, resampler
from recon.audio_source import LEVEL_RTOL, READ_ATOL, AudioSource

# (rate, channels, seconds): several minutes each, one per resampling case.
FILES = {"16k": (16000, 1, 120), "44k_stereo": (44100, 2, 120), "48k": (48000, 1, 90), "22k": (22050, 1, 90), "8k": (8000, 1, 90)}
BLOCK_SECONDS = 7.3  # many statistics-pass blocks, not aligned to any period


def write_signal(path: Path, rate: int, channels: int, seconds: float, seed: int = 0) -> Path:
    """Two tones, noise and a DC offset (so the mean matters), channels at different levels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t + 1) + 0.05 * rng.standard_normal(t.size) + 0.1
    sf.write(str(path), np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {name: write_signal(root / f"{name}.wav", *params, seed=i) for i, (name, params) in enumerate(FILES.items())}


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 11025])
def test_the_shared_resampler_is_torchaudios_functional_one(rate):
    wav = torch.randn(50_001, generator=torch.Generator().manual_seed(rate))
    assert torch.equal(resampler(rate, 16000)(wav), AF.resample(wav, orig_freq=rate, new_freq=16000))


@pytest.mark.parametrize("name", list(FILES))
def test_reads_and_blocks_equal_the_whole_file_front_end(files, name, single_thread):
    whole = load_audio(files[name])
    reference = normalise(whole)
    source = AudioSource(files[name], block_seconds=BLOCK_SECONDS)
    assert source.num_samples == whole.numel()
    assert source.level == pytest.approx(normalisation_gain(whole), rel=LEVEL_RTOL)
    joined = torch.cat(list(source.blocks(163840)))
    assert joined.dtype == torch.float32 and joined.shape == reference.shape
    assert (joined - reference).abs().max() <= READ_ATOL
    small = torch.cat(list(itertools.islice(source.blocks(4097), 40)))  # small reads: other convolution orderings
    assert (small - reference[: small.numel()]).abs().max() <= READ_ATOL
    rng = np.random.default_rng(1)
    for start in rng.integers(0, whole.numel(), 8):
        stop = int(start + rng.integers(1, 200_000))
        got = source.read(int(start), stop)
        assert got.shape == (min(stop, whole.numel()) - start,)
        assert (got - reference[start:stop]).abs().max() <= READ_ATOL
    single = torch.cat([source.read(k, k + 1) for k in range(100)])  # one output sample per read
    assert (single - reference[:100]).abs().max() <= READ_ATOL
    if FILES[name][0] == 16000:  # no resampling: the same samples and the same normalisation terms
        assert torch.equal(joined, reference)


def test_mixdown_first_keeps_channel_zero(files):
    reference = normalise(load_audio(files["44k_stereo"], mixdown="first"))
    source = AudioSource(files["44k_stereo"], mixdown="first", block_seconds=BLOCK_SECONDS)
    assert (source.read(1_000_000, 1_400_000) - reference[1_000_000:1_400_000]).abs().max() <= READ_ATOL


def _write_nan_late(path: Path) -> Path:
    data = np.full((16000 * 20, 2), 0.1, dtype=np.float32)
    data[-5, 1] = np.nan  # channel 1 only, in the last block of the statistics pass
    sf.write(str(path), data, 16000, subtype="FLOAT")
    return path


# (A file soundfile cannot open is decoded by load_audio itself: its errors are load_audio's.)
@pytest.mark.parametrize("kind", ["missing", "empty", "no_samples", "nan_late"])
def test_refuses_the_files_load_audio_refuses_with_its_message(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_samples":
        sf.write(str(path), np.zeros((0, 1), dtype=np.float32), 16000)
    elif kind == "nan_late":
        _write_nan_late(path)
    with pytest.raises(AudioLoadError) as expected:
        load_audio(path)
    with pytest.raises(AudioLoadError) as got:
        AudioSource(path, block_seconds=2.0)
    assert str(got.value) == str(expected.value) and str(path) in str(got.value)


def test_statistics_pass_and_blocks_read_one_block_at_a_time(files, monkeypatch):
    """Every soundfile request is at most a block plus the resampler's margin (a whole-file read
    would request all frames, or -1), and the pass decodes each frame once: no seek, no re-read."""
    path = files["44k_stereo"]
    frames = sf.info(str(path)).frames
    requests = []
    original = sf.SoundFile.read

    def recording(self, frames=-1, *args, **kwargs):
        requests.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", recording)
    monkeypatch.setattr("recon.audio._read_file", lambda *a, **k: pytest.fail("the whole file was read"))
    source = AudioSource(path, block_seconds=2.0)
    bound = 2.0 * 44100 + 2 * 441 + resampler(44100, 16000).width  # a block, a period at each end, the kernel's width
    assert requests and 0 < max(requests) <= bound
    assert sum(requests) <= frames + bound  # the last request may ask past the end
    requests.clear()
    assert sum(block.numel() for block in source.blocks(32000)) == source.num_samples
    assert 0 < max(requests) <= 2 * 44100 + bound and sum(requests) <= frames + bound


@pytest.mark.parametrize("name", ["16k", "44k_stereo"])
def test_a_format_soundfile_cannot_open_is_decoded_front_to_back_and_read_the_same(files, name, monkeypatch, single_thread):
    """Decoded by audioread (as an m4a is; its pure-Python backend reads these wavs), the source
    reads what the whole-file front-end gives, holding one read's frames, never the file."""
    path = files[name]
    reference = normalise(load_audio(path))
    monkeypatch.setattr(audio_source, "_soundfile_info", lambda path: None)
    source = AudioSource(path, block_seconds=BLOCK_SECONDS)
    assert isinstance(source._frames, audio_source._DecodedFrames)
    assert source.num_samples == reference.numel()
    rate = FILES[name][0]
    blocks, held = [], []
    for block in source.blocks(163840):
        blocks.append(block)
        held.append(source._frames._mono.untyped_storage().nbytes() // 4)  # the frames behind the kept view
    joined = torch.cat(blocks)
    assert joined.shape == reference.shape and (joined - reference).abs().max() <= READ_ATOL
    # What it holds is about two reads' frames at the file's rate, not the file (FILES: 120 s).
    one_read = 163840 * rate // 16000 + 2 * rate // 100 + 20_000
    assert max(held) <= 2 * one_read
    # A read behind the last one decodes again from the start; a copy (a DataLoader worker's) reads on.
    assert (source.read(1000, 5000) - reference[1000:5000]).abs().max() <= READ_ATOL
    copy = pickle.loads(pickle.dumps(source))
    assert (copy.read(900_000, 1_000_000) - reference[900_000:1_000_000]).abs().max() <= READ_ATOL
    # It decoded from the start to get there, dropping what lay before the read as it came.
    assert copy._frames._mono.untyped_storage().nbytes() // 4 <= one_read


def test_a_decoder_is_closed_by_close_or_when_its_source_goes(files, monkeypatch):
    """audioread's ffmpeg decoder is a process with reader threads: every one opened is closed, by
    ``close`` or when the source is collected (its own clean-up at interpreter exit aborts)."""
    import gc

    import audioread

    opened = []
    audio_open = audioread.audio_open

    def tracked(path):
        decoder = audio_open(path)
        opened.append(decoder)
        close = decoder.close
        decoder.closed = False

        def closing():
            decoder.closed = True
            close()

        decoder.close = closing
        return decoder

    monkeypatch.setattr(audioread, "audio_open", tracked)
    monkeypatch.setattr(audio_source, "_soundfile_info", lambda path: None)
    source = AudioSource(files["8k"])
    source.read(100_000, 200_000)
    assert len(opened) == 3 and not opened[-1].closed  # the header, the statistics pass, this read
    source.close()
    assert all(d.closed for d in opened)
    source.read(0, 1000)
    del source
    gc.collect()
    assert len(opened) == 4 and all(d.closed for d in opened)


FAKE_FFMPEG = """#!{python}
import sys
import soundfile as sf
if {fail}:
    sys.stderr.write("Invalid data found when processing input\\n")
    sys.exit(1)
data = sf.read(sys.argv[sys.argv.index("-i") + 1], dtype="int16", always_2d=True)[0].tobytes()
with open({progress!r}, "w") as progress:
    for i in range(0, len(data), 4096):
        sys.stdout.buffer.write(data[i : i + 4096])
        sys.stdout.buffer.flush()
        progress.seek(0)
        progress.write(str(i + 4096).ljust(12))
        progress.flush()
"""


def fake_ffmpeg(folder: Path, fail: bool = False) -> tuple[str, Path]:
    """A stand-in for the ffmpeg command (``-i PATH -f s16le -``): the file's 16-bit PCM on stdout,
    4 kB at a time, each write recorded in a progress file; or a decoding error."""
    import sys

    progress = folder / "progress"
    script = folder / ("ffmpeg-failing" if fail else "ffmpeg")
    script.write_text(FAKE_FFMPEG.format(python=sys.executable, fail=fail, progress=str(progress)))
    script.chmod(0o755)
    return str(script), progress


def test_an_ffmpeg_decoder_is_read_through_a_pipe_that_holds_it_back(files, tmp_path, monkeypatch):
    """Where audioread would decode with ffmpeg, its command is run and read through a pipe: the
    same frames, and ffmpeg can run ahead of the reads by no more than the pipe holds."""
    import time

    command, progress = fake_ffmpeg(tmp_path)
    monkeypatch.setattr(audio_source, "_ffmpeg_command", lambda decoder: command)
    path = files["44k_stereo"]
    frames, reference = audio_source._DecodedFrames(path, "mean"), audio_source._SourceFrames(path, "mean")
    assert frames.ffmpeg == command
    assert torch.equal(frames.read(0, 44100), reference.read(0, 44100))
    time.sleep(1.0)  # time enough for an unchecked decoder to write the whole 21 MB file
    assert int(progress.read_text()) <= 44100 * 4 + (1 << 20)  # what was read, plus at most the pipe's buffers
    assert torch.equal(frames.read(2_000_000, 2_100_000), reference.read(2_000_000, 2_100_000))
    assert frames.read(120 * 44100 - 10, 120 * 44100 + 10).numel() == 10
    decoder = frames._decoder
    frames.close()
    assert decoder.proc.poll() is not None  # the process is gone

    monkeypatch.setattr(audio_source, "_soundfile_info", lambda path: None)
    source = AudioSource(path)
    assert (torch.cat(list(source.blocks(163840))) - normalise(load_audio(path))).abs().max() <= READ_ATOL

    failing, _ = fake_ffmpeg(tmp_path, fail=True)
    monkeypatch.setattr(audio_source, "_ffmpeg_command", lambda decoder: failing)
    with pytest.raises(AudioLoadError, match="exited with status 1: Invalid data found when processing input"):
        AudioSource(path)


@pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs the ffmpeg command")
def test_a_real_m4a_streams_to_what_librosa_decodes_whole(files, tmp_path, single_thread):
    import subprocess

    path = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-t", "30", "-i", str(files["44k_stereo"]), "-c:a", "aac", str(path)], check=True)
    whole = load_audio(path)  # librosa, through audioread's ffmpeg backend
    source = AudioSource(path)
    joined = torch.cat(list(source.blocks(163840)))
    decoder = source._frames._decoder
    assert isinstance(decoder, audio_source._FFmpegPipe)  # ffmpeg's command through a pipe, not audioread's reader
    source.close()
    assert decoder.proc.poll() is not None  # the process is gone
    assert joined.shape == whole.shape and (joined - normalise(whole)).abs().max() <= READ_ATOL
    assert source.level == pytest.approx(normalisation_gain(whole), rel=LEVEL_RTOL)


def test_an_unreadable_file_of_another_format_is_refused_as_load_audio_refuses_it(tmp_path):
    path = tmp_path / "noise.m4a"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioLoadError) as whole:
        load_audio(path)
    with pytest.raises(AudioLoadError) as streamed:
        AudioSource(path)
    assert str(streamed.value).split(" (")[0] == str(whole.value).split(" (")[0]
    assert "not a readable audio file" in str(streamed.value)


def test_a_source_pickles_mid_read_and_reads_on(files):
    source = AudioSource(files["48k"], block_seconds=BLOCK_SECONDS)
    first = source.read(0, 50_000)
    copy = pickle.loads(pickle.dumps(source))  # as a DataLoader worker hands it over
    assert torch.equal(copy.read(0, 50_000), first)
    assert torch.equal(copy.read(50_000, 90_000), source.read(50_000, 90_000))
