"""Overlapping windows joined by a crossfade: the weights, the layout, overlap 0 as before, and the
codec files that record the overlap and decode to what infer.py wrote."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recon import codec
from recon.files import WavStream
from recon.audio import (AudioSpec, CrossfadeStream, MelFrontEnd, crossfade_join, crossfade_weights, overlap_samples, segment_lengths, split_file)
from recon.container import Container, ContainerError, dumps, loads, segment_count
from recon.inputs import collate_files
from recon.lit import load_inference_codebook
from recon.predict import VariantRunner
from recon.variants import VARIANTS, Models, VariantInput, VariantSettings
from recon.windows import encode_windows

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"
SPEC = AudioSpec()
OVERLAP = 5120  # 0.32 s


def test_crossfade_weights_sum_to_one_and_fade_linearly():
    w = crossfade_weights(OVERLAP)
    assert torch.all((w > 0) & (w < 1)) and torch.all(w[1:] > w[:-1])
    torch.testing.assert_close(w + w.flip(0), torch.ones(OVERLAP), rtol=0, atol=1e-6)  # symmetric ramp
    # Two windows of different constants: over the overlap the output is a*(1-w) + b*w, outside it a or b.
    a, b = torch.full((SPEC.num_samples,), 2.0), torch.full((40960,), -1.0)
    joined = crossfade_join([a, b], OVERLAP, SPEC.num_samples - OVERLAP + 40960)
    hop = SPEC.num_samples - OVERLAP
    assert torch.all(joined[:hop] == 2.0) and torch.all(joined[SPEC.num_samples :] == -1.0)
    torch.testing.assert_close(joined[hop : SPEC.num_samples], 2.0 * (1 - w) + -1.0 * w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seconds", [1.0, 10.24, 12.0, 20.16, 20.2, 33.3])
def test_windows_that_agree_rebuild_any_signal_exactly(seconds):
    """A constant-through variant (each window's output is its input) gives the file back bit for bit."""
    wav = torch.randn(int(seconds * SPEC.sample_rate), generator=torch.Generator().manual_seed(0))
    for overlap in (0, 640, OVERLAP):
        parts = split_file(wav, SPEC, overlap=overlap)
        assert [p.shape[-1] for p in parts] == segment_lengths(wav.numel(), SPEC.num_samples, 20480, overlap)
        assert len(parts) == segment_count(wav.numel(), SPEC.num_samples, overlap)
        assert torch.equal(crossfade_join(parts, overlap, wav.numel()), wav)
    assert torch.equal(crossfade_join([torch.full_like(p, 0.3) for p in split_file(wav, SPEC, overlap=OVERLAP)], OVERLAP, wav.numel()),
                       torch.full_like(wav, 0.3))


@pytest.mark.parametrize("seconds", [1.0, 10.24, 20.2, 33.3])
def test_a_streamed_crossfade_equals_the_whole_join(seconds):
    """Windows pushed one at a time give, concatenated, exactly crossfade_join's signal."""
    length = int(seconds * SPEC.sample_rate)
    for overlap in (0, 640, OVERLAP, SPEC.num_samples // 2):
        lengths = segment_lengths(length, SPEC.num_samples, 20480, overlap)
        g = torch.Generator().manual_seed(len(lengths))
        windows = [torch.randn(n, generator=g) for n in lengths]  # windows that disagree, as a model's do
        stream = CrossfadeStream(overlap, length)
        pieces = [stream.push(w) for w in windows]
        assert all(p.numel() <= w.numel() for p, w in zip(pieces, windows))  # never more than one window at a time
        assert torch.equal(torch.cat([*pieces, stream.finish()]), crossfade_join(windows, overlap, length))


def test_a_wav_stream_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "a.wav"
    blocks = [np.full(1000, 0.25, np.float32), np.linspace(-1, 1, 333, dtype=np.float32)]
    stream = WavStream(target, 16000)
    for block in blocks:
        stream.write(block)
    assert not target.exists() and stream.tmp.name.startswith(".a.wav.")  # hidden until committed
    stream.commit()
    assert np.array_equal(sf.read(target, dtype="float32")[0], np.concatenate(blocks)) and sf.info(target).subtype == "FLOAT"
    with pytest.raises(RuntimeError):
        with WavStream(target, 16000) as failing:
            failing.write(blocks[0])
            raise RuntimeError("the model failed half-way")
    assert not failing.tmp.exists() and sorted(p.name for p in target.parent.iterdir()) == ["a.wav"]  # the earlier file stands


def test_layout_with_and_without_overlap():
    # Overlap 0 is the butted layout files have always had: 12 s = 10.24 s + 1.76 s padded to 2.56 s.
    assert segment_lengths(192000, 163840, 20480) == segment_lengths(192000, 163840, 20480, 0) == [163840, 40960]
    assert segment_lengths(163840 * 2, 163840, 20480) == [163840, 163840]
    # With 0.32 s of overlap windows start every 9.92 s: 20.16 s is two full windows exactly, 20.2 s needs a third.
    assert segment_lengths(322560, 163840, 20480, OVERLAP) == [163840, 163840]
    assert segment_lengths(323200, 163840, 20480, OVERLAP) == [163840, 163840, 20480]
    assert overlap_samples(0.32) == OVERLAP and overlap_samples(0) == 0
    for bad in (0.01, -0.04, 6.0, float("nan")):
        with pytest.raises(ValueError, match="overlap"):
            overlap_samples(bad)


@pytest.fixture(scope="module")
def demo():
    backbone, quantizer = load_inference_codebook(str(DEMO_CKPT))
    return Models(backbone, MelFrontEnd(backbone.spec), quantizer)


def item(wav: torch.Tensor) -> dict:
    return {"index": 0, "relpath": "long.wav", "wav": wav, "error": None, "level": 1.0}


@pytest.fixture(scope="module")
def long_wav() -> torch.Tensor:
    t = torch.arange(192000) / 16000
    return 0.4 * torch.sin(2 * np.pi * 330 * t) * (1 + 0.5 * torch.sin(2 * np.pi * 0.7 * t))  # 12 s, two windows


def test_overlap_zero_is_the_butted_path_bit_for_bit(demo, long_wav, single_thread):
    """Overlap 0: each segment's output alone, concatenated and cut to the file's length, as the
    runner stitched files before windows could overlap; its codec file has no overlap field."""
    variant = VARIANTS["codebook_hard"]
    (result,) = VariantRunner(demo, [variant], VariantSettings(overlap=0)).predict_step(collate_files([item(long_wav)]), 0)
    entry = result.variants[0]
    with torch.no_grad():
        outputs = []
        for segment in split_file(long_wav, demo.backbone.spec):
            logmel, posterior = encode_windows(demo.frontend, demo.backbone, segment[None])
            x = VariantInput(segment[None], logmel, posterior.mean.float(), posterior.std.float(), ["k"])
            outputs.append(variant.run(x, demo, VariantSettings()).wav[0])
    assert np.array_equal(entry.wav, torch.cat(outputs).float()[: long_wav.numel()].numpy())
    assert "overlap" not in loads(entry.bitstream).header


def test_codec_file_records_the_overlap_and_decodes_to_the_runners_output(demo, long_wav, single_thread):
    (result,) = VariantRunner(demo, [VARIANTS["codebook_hard"]], VariantSettings(overlap=OVERLAP)).predict_step(collate_files([item(long_wav)]), 0)
    entry = result.variants[0]
    container = loads(entry.bitstream)
    assert container.get("overlap") == OVERLAP and codec.segments_of(container) == [163840, 40960]
    decoded = codec.decode_container(container, demo.backbone, demo.quantizer).numpy()
    scale = np.abs(entry.wav).max()
    # The tiny random backbone is quiet (peak ~3e-4): tolerances relative to its level.
    assert np.abs(decoded - entry.wav).max() <= 1e-3 * scale
    # The same codes read as butted segments give another signal: the overlap is what the file says.
    butted = codec.decode_segments([demo.quantizer.decode_residual(c[None])[0] for c in codec.codebook_codes(container, demo.backbone, demo.quantizer)],
                                   [163840, 40960], long_wav.numel(), demo.backbone)
    assert np.abs(butted.numpy() - decoded).max() > 0.1 * scale


def test_files_without_an_overlap_field_decode_as_butted_segments():
    header = {"codec": "codebook", "sample_rate": 16000, "num_samples": 192000, "layout": [163840, 20480], "level": 1.0,
              "model": {"codebook": "ab"}, "codes": 1024, "coding": "fixed", "stages": 1}
    old = loads(dumps(Container(header, b"")))
    assert old.get("overlap") == 0 and codec.segments_of(old) == [163840, 40960]
    assert loads(dumps(Container(dict(header, overlap=OVERLAP), b""))).get("overlap") == OVERLAP
    # An overlap beyond half a segment is refused before anything is sized by it.
    import recon.container as C

    raw = C._deflate(json.dumps(dict(header, overlap=163840)).encode())
    body = C._PREFIX.pack(C.MAGIC, C.VERSION, len(raw)) + raw + C._PAYLOAD_LENGTH.pack(0)
    with pytest.raises(ContainerError, match="overlap"):
        loads(body + zlib.crc32(body).to_bytes(4, "little"))
