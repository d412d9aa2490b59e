"""The front-end must be AudioLDM2's: pinned to the audioldm2 package's own outputs."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from recon.audio import AudioLoadError, AudioSpec, MelFrontEnd, load_audio, load_waveform, split_file, split_segments
from tests.conftest import FRONTEND_REFERENCE, write_tone

REFERENCES = ["chirp_16k_10s", "sine1k_22k_4s", "noise_and_tone_44k_stereo_3s", "clicks_8k_12s"]
LOG_1E4 = math.log(1e-4)
LOG_FLOOR = math.log(1e-5)


def reference(name: str) -> dict:
    return dict(np.load(FRONTEND_REFERENCE / f"{name}.wav.npz"))


def test_spec_defaults_are_audioldm2():
    spec = AudioSpec()
    assert (spec.sample_rate, spec.n_fft, spec.hop_length, spec.win_length, spec.n_mels) == (16000, 1024, 160, 1024, 64)
    assert (spec.fmin, spec.fmax, spec.num_samples, spec.num_frames) == (0.0, 8000.0, 163840, 1024)


@pytest.mark.parametrize("name", REFERENCES)
def test_logmel_matches_audioldm2(name):
    ref = reference(name)
    front = MelFrontEnd()
    for suffix in ("", "_downmix"):
        if f"waveform{suffix}" not in ref:
            continue
        logmel = front(torch.from_numpy(ref[f"waveform{suffix}"])[None])
        assert logmel.shape == (1, 1, 1024, 64)
        ours, theirs = logmel[0, 0].numpy(), ref[f"logmel{suffix}"]
        above = theirs > LOG_1E4
        assert above.mean() > 0.01, "reference has too few bins above log(1e-4) to be a meaningful check"
        assert np.abs(ours - theirs)[above].max() <= 1e-3
        assert np.abs(ours - theirs).max() <= 1e-2


@pytest.mark.parametrize("name", REFERENCES)
def test_loader_matches_audioldm2(name):
    ref = reference(name)
    # channel 0 is AudioLDM2's choice; the mean down-mix is recon's default.
    pairs = [("first", "waveform")] + ([("mean", "waveform_downmix")] if "waveform_downmix" in ref else [])
    for mixdown, key in pairs:
        wav = load_waveform(FRONTEND_REFERENCE / f"{name}.wav", mixdown=mixdown)
        assert wav.shape == (1, 163840)
        np.testing.assert_allclose(wav[0].numpy(), ref[key], atol=1e-4)


def test_logmel_matches_float64_computation():
    """An independent float64 path: numpy rfft of explicitly framed, reflect-padded audio."""
    wav = reference("noise_and_tone_44k_stereo_3s")["waveform"].astype(np.float64)
    n_fft, hop = 1024, 160
    padded = np.pad(wav, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:1024]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, axis=-1))
    basis = librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=64, fmin=0.0, fmax=8000.0).astype(np.float64)
    expected = np.log(np.maximum(magnitude @ basis.T, 1e-5))
    ours = MelFrontEnd()(torch.from_numpy(wav).float()[None])[0, 0].numpy()
    above = expected > LOG_1E4
    assert np.abs(ours - expected)[above].max() <= 1e-3
    assert np.abs(ours - expected).max() <= 1e-2


def test_sine_peaks_in_its_mel_bin():
    spec = AudioSpec()
    t = torch.arange(spec.num_samples) / spec.sample_rate
    logmel = MelFrontEnd(spec)(0.5 * torch.sin(2 * math.pi * 1000.0 * t)[None])[0, 0]
    mel_centres = librosa.mel_frequencies(n_mels=spec.n_mels + 2, fmin=spec.fmin, fmax=spec.fmax)[1:-1]
    expected_bin = int(np.argmin(np.abs(mel_centres - 1000.0)))
    peak_bins = logmel[10:-10].argmax(dim=-1)
    assert torch.all((peak_bins - expected_bin).abs() <= 1)


def test_silence_gives_log_floor_not_nan(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(16000 * 2, dtype=np.float32), 16000)
    wav = load_waveform(path)
    assert torch.isfinite(wav).all() and wav.abs().max() == 0
    logmel = MelFrontEnd()(wav)
    assert torch.allclose(logmel, torch.full_like(logmel, LOG_FLOOR))


def test_frontend_is_batched_and_device_agnostic():
    front = MelFrontEnd()
    wav = torch.randn(3, 163840) * 0.1
    batched = front(wav)
    single = torch.cat([front(w[None]) for w in wav])
    assert batched.shape == (3, 1, 1024, 64)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert front(wav).dtype == torch.float32
    assert {name for name, _ in front.named_buffers()} == {"mel_basis", "window"}


def test_short_file_is_padded_and_long_file_cropped(tmp_path):
    short = load_waveform(write_tone(tmp_path / "short.wav", 1.0, sr=22050))
    assert short.shape == (1, 163840)
    assert short[0, 17000:].abs().max() == 0 and short.abs().max() == pytest.approx(0.5, abs=1e-6)
    long = load_waveform(write_tone(tmp_path / "long.flac", 25.0))
    assert long.shape == (1, 163840)
    assert long.abs().max() == pytest.approx(0.5, abs=1e-6)


def test_offset_and_uncropped_loading(tmp_path):
    path = write_tone(tmp_path / "long.wav", 25.0, channels=2)
    raw = load_audio(path)
    assert raw.shape == (25 * 16000,)
    segments = split_segments(raw)
    assert segments.shape == (3, 163840) and segments[-1, 25 * 16000 - 2 * 163840 :].abs().max() == 0
    second = load_audio(path, offset=10.24, duration=10.24)
    torch.testing.assert_close(second, raw[163840 : 2 * 163840])


@pytest.mark.parametrize(
    "samples, lengths",
    [(1, [20480]), (16000, [20480]), (20480, [20480]), (20481, [40960]), (163840, [163840]), (192000, [163840, 40960]), (0, [20480])],
)
def test_split_file_pads_the_last_segment_to_a_multiple_of_128_frames(samples, lengths):
    wav = torch.randn(samples)
    segments = split_file(wav)
    assert [s.shape[-1] for s in segments] == lengths
    joined = torch.cat(segments)
    assert torch.equal(joined[:samples], wav) and joined[samples:].abs().sum() == 0
    assert [s.shape[-1] for s in split_file(wav, tail_frames=None)] == [163840] * len(lengths)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not audio at all" * 100, "not a readable audio file"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioLoadError, match=reason) as info:
        load_waveform(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nan_samples_are_rejected(tmp_path):
    data = np.zeros(16000, dtype=np.float32)
    data[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="NaN"):
        load_waveform(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AudioLoadError, match="no such file"):
        load_waveform(tmp_path / "nope.wav")
