"""recon.metrics: hand-computed values, agreement with torchmetrics, NaN handling, shapes."""

from __future__ import annotations

import logging
import math

from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import torchaudio
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio, signal_noise_ratio

from recon import metrics as M
from recon.audio import AudioSpec, MelFrontEnd

SR = 16000
ROOT = Path(__file__).resolve().parents[1]
DB_HALF = 20 * math.log10(2.0)  # 6.0206 dB: the size of a gain of 0.5


def noise(seconds: float, batch: int = 2, seed: int = 0, std: float = 0.3) -> torch.Tensor:
    """Loud white noise [B, samples]: every spectral bin is far above every floor."""
    g = torch.Generator().manual_seed(seed)
    return std * torch.randn(batch, int(seconds * SR), generator=g)


def tones(freqs, seconds: float = 1.0, amps=None) -> torch.Tensor:
    """Sum of sines with whole numbers of cycles in the signal (no spectral leakage) [samples]."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    amps = amps or [1.0] * len(freqs)
    return sum(a * torch.sin(2 * math.pi * f * t) for f, a in zip(freqs, amps)).float()


def speechlike(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Voiced harmonic source (f0 around 140 Hz with intonation) plus breath noise, in 3 Hz syllables with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 40) if k * 160 < 7500)
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5
    x = voiced * env + 0.05 * rng.standard_normal(t.size) * env
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def frontend() -> MelFrontEnd:
    return MelFrontEnd(AudioSpec())


DISTANCES = {
    "log_mel_db": lambda r, e: M.log_mel_distance_db(r, e, MelFrontEnd()),
    "mel_multiscale": M.multiscale_mel_distance,
    "mr_stft": M.multi_resolution_stft_distance,
    "lsd_db": M.log_spectral_distance,
}


# --- shapes and validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        M.multiscale_mel_distance,
        M.multi_resolution_stft_distance,
        M.log_spectral_distance,
        M.si_sdr,
        M.snr,
        M.high_frequency_retention,
        M.pesq_wb,
        M.stoi,
        lambda r, e: M.log_mel_distance_db(r, e, MelFrontEnd()),
    ],
)
def test_mismatched_shapes_raise(fn):
    ref = noise(1.0)
    with pytest.raises(ValueError, match="shape"):
        fn(ref, ref[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        fn(ref, ref[:1])
    with pytest.raises(ValueError):
        fn(ref[0], ref[0])  # [samples] is not [batch, samples]


def test_one_reference_row_scores_every_estimate_as_its_copies_do():
    """The runner scores all variants of a file against one ``[1, samples]`` reference (its spectra
    computed once); every metric must equal the one of the reference repeated per row."""
    ref = noise(1.2, batch=1)
    estimates = torch.cat([0.5 * ref, ref + 0.05 * noise(1.2, batch=1, seed=1), noise(1.2, batch=1, seed=2)])
    one = M.compute_all(ref, estimates)
    copies = M.compute_all(ref.expand_as(estimates).contiguous(), estimates)
    assert set(one) == set(copies)
    for name in one:
        assert one[name].shape == (3,), name
        torch.testing.assert_close(one[name], copies[name], rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)
    # Rows differ, so a reference scored against the first row only would not pass the above.
    assert len({round(v, 3) for v in one["log_mel_db"].tolist()}) == 3


def test_latent_snr_shape_mismatch_raises():
    z = torch.randn(2, 8, 16, 4)
    with pytest.raises(ValueError):
        M.latent_snr(z, z[:, :, :-1])


def test_compute_all_gives_one_value_per_item_and_zero_distance_for_identical(frontend):
    ref = noise(1.0, batch=2)
    est = ref.clone()
    out = M.compute_all(ref, est, frontend, include_perceptual=False)
    assert set(out) == set(M.WAVEFORM_METRICS)
    for name, value in out.items():
        assert value.shape == (2,), name
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value).all(), name
    for name in ("log_mel_db", "mel_multiscale", "mr_stft", "lsd_db"):
        assert torch.allclose(out[name], torch.zeros(2), atol=1e-6), name
    assert torch.allclose(out["hf_retention"], torch.ones(2))
    assert (out["snr_db"] > 60).all() and (out["si_sdr_db"] > 60).all()


def test_compute_all_includes_perceptual(frontend):
    # 1.5 s: long enough for every perceptual measure (ViSQOL needs 1 s), short for ViSQOL's seconds.
    x = torch.from_numpy(np.stack([speechlike(1.5, 0), speechlike(1.5, 1)]))
    out = M.compute_all(x, 0.5 * x + 0.01 * noise(1.5, seed=3), frontend)
    assert set(out) == set(M.WAVEFORM_METRICS) | set(M.PERCEPTUAL_METRICS)
    assert out["pesq_wb"].shape == (2,) and out["stoi"].shape == (2,)
    assert torch.isfinite(out["pesq_wb"]).all() and torch.isfinite(out["stoi"]).all()
    assert torch.isfinite(out["visqol_audio"]).all() and torch.isfinite(out["visqol_speech"]).all()


# --- distances: 0 for identical, exact values for a pure gain ------------------------------------


@pytest.mark.parametrize("name", list(DISTANCES))
def test_distances_zero_for_identical_and_positive_otherwise(name):
    ref = noise(1.0)
    fn = DISTANCES[name]
    assert torch.allclose(fn(ref, ref.clone()), torch.zeros(2), atol=1e-6)
    other = fn(ref, ref + 0.1 * noise(1.0, seed=7))
    assert (other > 0.01).all()


def test_log_mel_distance_of_a_gain_is_its_size_in_db(frontend):
    ref = noise(2.0)
    assert (frontend(ref) > math.log(1e-5) + 5).all()  # no bin anywhere near the floor
    for g in (0.5, 2.0, 0.1):
        d = M.log_mel_distance_db(ref, g * ref, frontend)
        assert torch.allclose(d, torch.full((2,), abs(20 * math.log10(g))), atol=1e-3), (g, d)


def test_log_mel_distance_default_frontend_matches():
    ref = noise(1.0)
    assert torch.allclose(M.log_mel_distance_db(ref, 0.5 * ref), torch.full((2,), DB_HALF), atol=1e-3)


def test_log_spectral_distance_of_a_gain_is_its_size_in_db():
    ref = noise(2.0)
    for g in (0.5, 3.0):
        d = M.log_spectral_distance(ref, g * ref)
        assert torch.allclose(d, torch.full((2,), abs(20 * math.log10(g))), atol=1e-3), (g, d)


def test_log_spectral_distance_is_rms_over_freqs_then_mean_over_frames():
    # A gain of 2 on the first half only: about half of the frames differ by 6.02 dB in every bin
    # and half by 0 dB. Mean over frames of the per-frame RMS gives ~3.01 dB; an RMS over all
    # frames and bins at once would give ~4.26 dB.
    ref = noise(2.0, batch=1)
    est = ref.clone()
    est[:, : ref.shape[1] // 2] *= 2.0
    d = M.log_spectral_distance(ref, est).item()
    assert abs(d - DB_HALF / 2) < 0.15, d


def test_multiscale_mel_distance_of_a_gain():
    ref = noise(1.0)
    g = 0.5
    d = M.multiscale_mel_distance(ref, g * ref)  # DAC setting: pow 1, log10, 7 scales, summed
    assert torch.allclose(d, torch.full((2,), 7 * abs(math.log10(g))), rtol=1e-3), d
    d2 = M.multiscale_mel_distance(ref, g * ref, pow=2.0)  # log10(m^2) doubles every term
    assert torch.allclose(d2, 2 * d, rtol=1e-4)
    # the magnitude term: mean |M(g x) - M(x)| = (1 - g) mean M(x) for one scale
    one = M.multiscale_mel_distance(ref, g * ref, window_lengths=[512], n_mels=[80], log_weight=0.0, mag_weight=1.0)
    fb = torch.from_numpy(librosa.filters.mel(sr=SR, n_fft=512, n_mels=80)).float()
    mel = fb @ torch.stft(ref, 512, 128, window=torch.hann_window(512), return_complex=True).abs()
    assert torch.allclose(one, (1 - g) * mel.mean(dim=(1, 2)), rtol=1e-4)


def test_multiscale_mel_distance_penalises_lost_high_band_more_at_fine_scales_too():
    ref = noise(1.0)
    spec = torch.fft.rfft(ref)
    spec[:, torch.fft.rfftfreq(ref.shape[1], 1 / SR) > 4000] = 0
    lowpassed = torch.fft.irfft(spec, n=ref.shape[1])
    d_lp = M.multiscale_mel_distance(ref, lowpassed)
    d_gain = M.multiscale_mel_distance(ref, 0.9 * ref)
    assert (d_lp > 10 * d_gain).all()


def test_multi_resolution_stft_distance_of_a_gain():
    ref = noise(1.0)
    for g in (0.5, 2.0):
        d = M.multi_resolution_stft_distance(ref, g * ref)
        expected = abs(1 - g) + abs(math.log(g))  # spectral convergence + natural-log magnitude L1
        assert torch.allclose(d, torch.full((2,), expected), atol=1e-4), (g, d)


# --- SNR family ---------------------------------------------------------------------------------


def test_snr_of_half_gain_is_6_02_db():
    ref = noise(1.0)
    assert torch.allclose(M.snr(ref, 0.5 * ref), torch.full((2,), DB_HALF), atol=1e-4)


def test_snr_with_independent_noise_of_known_power():
    ref = tones([440.0, 1000.0], 2.0, amps=[1.0, 1.0]).expand(2, -1)  # power 0.5 + 0.5 = 1
    n = noise(2.0, seed=5, std=0.05)  # power 0.0025
    d = M.snr(ref, ref + n)
    assert torch.allclose(d, torch.full((2,), 10 * math.log10(1 / 0.0025)), atol=0.1), d  # 26.02 dB


def test_snr_and_si_sdr_agree_with_torchmetrics():
    ref = noise(1.0, seed=1) + 0.2  # a DC offset, so zero-mean handling matters
    est = 0.7 * ref + 0.3 * noise(1.0, seed=2) - 0.1
    assert torch.allclose(M.snr(ref, est), signal_noise_ratio(est, ref, zero_mean=False), atol=1e-4)
    tm = scale_invariant_signal_distortion_ratio(est, ref, zero_mean=True)
    assert torch.allclose(M.si_sdr(ref, est), tm, atol=1e-4)
    assert not torch.allclose(M.si_sdr(ref, est), scale_invariant_signal_distortion_ratio(est, ref), atol=1e-2)


def test_si_sdr_known_value_and_scale_invariance():
    ref = noise(1.0, seed=1)
    ref = ref - ref.mean(dim=1, keepdim=True)
    n = noise(1.0, seed=2, std=0.1)
    n = n - n.mean(dim=1, keepdim=True)
    n = n - (n * ref).sum(1, keepdim=True) / (ref * ref).sum(1, keepdim=True) * ref  # orthogonal to ref
    a = 0.6
    expected = 10 * torch.log10(a**2 * (ref**2).sum(1) / (n**2).sum(1))
    d = M.si_sdr(ref, a * ref + n)
    assert torch.allclose(d, expected, atol=1e-3)
    assert torch.allclose(M.si_sdr(ref, 5.0 * (a * ref + n)), d, atol=1e-3)  # scale-invariant
    assert torch.allclose(M.si_sdr(ref, a * ref + n + 0.3), d, atol=1e-3)  # offset-invariant
    big = M.si_sdr(ref, 0.5 * ref)  # perfect up to scale: guarded, large and finite
    assert torch.isfinite(big).all() and (big > 80).all()


def test_latent_snr():
    z = torch.randn(2, 8, 64, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(M.latent_snr(z, 0.5 * z), torch.full((2,), DB_HALF), atol=1e-4)
    z_hat = z.clone()
    z_hat[1] = 0.9 * z[1]  # item 1 off by 10 %: 20 dB; item 0 exact: guarded, large
    d = M.latent_snr(z, z_hat)
    assert d.shape == (2,)
    assert abs(d[1].item() - 20.0) < 1e-3 and d[0].item() > 80


# --- high-frequency retention ------------------------------------------------------------------


def test_high_frequency_retention():
    low = tones([300.0, 1000.0, 2500.0])
    high = tones([5000.0, 7000.0])
    ref = torch.stack([low + high, low + 0.5 * high])
    assert torch.allclose(M.high_frequency_retention(ref, ref.clone()), torch.ones(2))
    lost = M.high_frequency_retention(ref, low.expand(2, -1))
    assert (lost < 1e-6).all(), lost
    halved = M.high_frequency_retention(ref, torch.stack([low + 0.5 * high, low + 0.25 * high]))
    assert torch.allclose(halved, torch.full((2,), 0.25), atol=1e-4)  # energy ratio: 0.5^2
    # the band is strictly above the cutoff: with a 6 kHz cutoff only the 7 kHz tone counts
    only7 = M.high_frequency_retention(ref, (low + tones([7000.0])).expand(2, -1), cutoff_hz=6000.0)
    assert torch.allclose(only7, torch.tensor([1.0, 4.0]), atol=1e-4)


def test_high_frequency_retention_rejects_cutoff_beyond_nyquist():
    ref = noise(0.5)
    with pytest.raises(ValueError, match="8000"):
        M.high_frequency_retention(ref, ref, cutoff_hz=8000.0)


# --- perceptual ---------------------------------------------------------------------------------


def test_pesq_and_stoi_high_for_identical_low_for_noise():
    x = torch.from_numpy(np.stack([speechlike(3.0, 0), speechlike(3.0, 1)]))
    n = noise(3.0, seed=9, std=0.1)
    p_same, p_noise = M.pesq_wb(x, x.clone()), M.pesq_wb(x, n)
    s_same, s_noise = M.stoi(x, x.clone()), M.stoi(x, n)
    assert p_same.shape == s_same.shape == (2,)
    assert (p_same >= 4.0).all(), p_same
    assert (p_noise < 1.5).all() and (p_same - p_noise > 2.5).all(), p_noise
    assert (s_same >= 0.99).all(), s_same
    assert (s_noise < 0.5).all(), s_noise


def test_silent_input_gives_nan_and_a_logged_warning(caplog):
    x = torch.from_numpy(np.stack([speechlike(2.0, 0), speechlike(2.0, 1)]))
    ref = x.clone()
    ref[1] = 0.0  # item 1: silent reference
    with caplog.at_level(logging.WARNING, logger="recon.metrics"):
        p = M.pesq_wb(ref, x)
        s = M.stoi(ref, x)
    assert math.isfinite(p[0].item()) and math.isnan(p[1].item())
    assert math.isfinite(s[0].item()) and math.isnan(s[1].item())
    messages = [r.getMessage() for r in caplog.records if r.name == "recon.metrics" and r.levelno == logging.WARNING]
    assert any("pesq_wb" in m and "item 1" in m and "silent" in m for m in messages), messages
    assert any("stoi" in m and "item 1" in m and "silent" in m for m in messages), messages
    assert not any("item 0" in m for m in messages)


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each test sees every perceptual warning: recon.metrics remembers those about the latest reference."""
    M._reference_warnings.clear()
    yield
    M._reference_warnings.clear()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "recon.metrics" and r.levelno == logging.WARNING]


def _db(x: np.ndarray, gain_db: float) -> np.ndarray:
    return (x * 10 ** (gain_db / 20)).astype(np.float32)


SPEECH = speechlike(2.0, 0)
PESQ_STOI = ("pesq_wb", "stoi")  # the tests of PESQ's and STOI's own cases leave ViSQOL's seconds out
UNDEFINED_CASES = {
    # name: (reference, estimate, substring of the reason given for both measures)
    "silent estimate": (SPEECH, np.zeros_like(SPEECH), "estimate is silent"),
    # The regression: a -68 dB copy scored PESQ 4.6 and STOI 1.0 because both normalise level.
    "near-silent estimate": (SPEECH, _db(SPEECH, -68.0), "near-silent (68 dB below"),
    "just past the near-silence limit": (SPEECH, _db(SPEECH, -(M.NEAR_SILENT_DB + 1)), "near-silent"),
    "shorter than both need": (SPEECH[:3200], SPEECH[:3200], "reference is 0.20 s, shorter than the"),
    "non-finite estimate": (SPEECH, np.where(np.arange(SPEECH.size) == 5, np.nan, SPEECH).astype(np.float32), "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(UNDEFINED_CASES))
def test_perceptual_undefined_cases_are_nan_with_the_reason(case):
    ref, est, reason = UNDEFINED_CASES[case]
    details = M.perceptual_details(ref, est)
    for name in M.PERCEPTUAL_METRICS:
        value, why = details[name]
        assert math.isnan(value), (name, value)
        assert reason in why, (name, why)


def test_perceptual_defined_within_the_near_silence_limit():
    # The level check only removes outputs that are effectively silence: a quiet but real
    # reconstruction keeps its scores, which ignore level (identical shape: near-perfect).
    details = M.perceptual_details(SPEECH, _db(SPEECH, -(M.NEAR_SILENT_DB - 1)))
    assert details["pesq_wb"][0] > 4.0 and details["pesq_wb"][1] is None
    assert details["stoi"][0] > 0.99 and details["stoi"][1] is None
    # ViSQOL scales the estimate to the reference's level: the quiet copy scores as the copy would.
    assert details["visqol_audio"][0] > 4.7 and details["visqol_audio"][1] is None
    assert details["visqol_speech"][0] > 4.0 and details["visqol_speech"][1] is None


def test_stoi_undefined_where_too_little_of_the_reference_is_active():
    # 0.3 s is shorter than STOI's 30 frames; PESQ still scores it.
    short = M.perceptual_details(SPEECH[:4800], SPEECH[:4800])
    assert math.isnan(short["stoi"][0]) and "shorter than the 0.41 s" in short["stoi"][1]
    # 2 s long, but only 0.2 s of it within pystoi's 40 dB of the loudest frame: the rest is
    # removed as silence and pystoi would return its 1e-5 placeholder.
    ref = _db(SPEECH, -60.0)
    ref[:3200] = SPEECH[:3200] / np.abs(SPEECH[:3200]).max() * 0.3
    value, why = M.perceptual_details(ref, ref.copy(), ["stoi"])["stoi"]
    assert math.isnan(value) and "fewer than 30 frames" in why


def test_pesq_without_utterance_is_undefined_for_the_whole_reference(monkeypatch, caplog):
    import pesq

    def no_utterance(*args, **kwargs):
        raise pesq.NoUtterancesError(b"No utterances detected")

    monkeypatch.setattr(pesq, "pesq", no_utterance)
    with caplog.at_level(logging.WARNING, logger="recon.metrics"):
        for variant in ("vae", "codebook", "griffinlim"):  # every output of one reference
            scores = M.perceptual_scores(SPEECH, SPEECH + 0.01, f"rain.flac [{variant}]", PESQ_STOI)
            assert math.isnan(scores["pesq_wb"]) and scores["stoi"] > 0.9
    messages = _warnings(caplog)
    # The reason lies in the reference: one warning for the file, naming the first output.
    assert messages == ["pesq_wb of rain.flac [vae] is NaN: PESQ found no utterance in the reference (not speech?) "
                        "(so for every output of this file; said once)"]  # fmt: skip


def test_perceptual_warnings_name_file_and_variant(caplog):
    quiet = _db(SPEECH, -60.0)
    with caplog.at_level(logging.WARNING, logger="recon.metrics"):
        M.perceptual_scores(SPEECH, quiet, "speech/a.flac [vae_mode]", PESQ_STOI)
        M.perceptual_scores(SPEECH, quiet, "speech/a.flac [codebook_hard]", PESQ_STOI)
        M.perceptual_scores(SPEECH, SPEECH.copy(), "speech/a.flac [griffinlim]", PESQ_STOI)  # defined: no warning
        M.perceptual_scores(SPEECH[:3200], SPEECH[:3200], "speech/b.flac [vae_mode]", PESQ_STOI)
        M.perceptual_scores(SPEECH[:3200], SPEECH[:3200] * 0.5, "speech/b.flac [codebook_hard]", PESQ_STOI)
    messages = _warnings(caplog)
    near_silent = "is NaN: estimate is near-silent (60 dB below the reference; limit 30 dB)"
    assert messages[:4] == [
        f"pesq_wb of speech/a.flac [vae_mode] {near_silent}",
        f"stoi of speech/a.flac [vae_mode] {near_silent}",
        f"pesq_wb of speech/a.flac [codebook_hard] {near_silent}",
        f"stoi of speech/a.flac [codebook_hard] {near_silent}",
    ]
    # b.flac is too short for either measure: said once per measure, not once per variant.
    assert len(messages) == 6 and all("speech/b.flac [vae_mode]" in m and "0.20 s" in m for m in messages[4:]), messages


def test_perceptual_details_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="recon.metrics"):
        M.perceptual_details(SPEECH, np.zeros_like(SPEECH))
    assert _warnings(caplog) == []


# --- ViSQOL -------------------------------------------------------------------------------------

VOICE = ROOT / "examples" / "audio" / "speech" / "voice_3.flac"


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    """2 s of real speech (the lattice mapper of speech mode is trained on speech), peak 0.5."""
    import soundfile as sf

    wav, rate = sf.read(str(VOICE), dtype="float64")
    assert rate == SR
    wav = wav[SR // 2 : 5 * SR // 2]
    return 0.5 * wav / np.abs(wav).max()


def test_visqol_tops_for_a_copy_drops_for_noise_and_a_lowpass_and_equals_the_library(voice):
    from visqol import VisqolApi

    rng = np.random.default_rng(0)
    hiss = rng.standard_normal(voice.size)
    noisy = voice + hiss * math.sqrt(np.mean(voice**2) / np.mean(hiss**2) / 10.0)  # 10 dB SNR
    lowpass = torchaudio.functional.lowpass_biquad(torch.from_numpy(voice), SR, 3500.0).numpy()
    same = M.perceptual_details(voice, voice.copy(), M.VISQOL_METRICS)
    degraded = M.perceptual_details(voice, noisy, M.VISQOL_METRICS)
    # The top of each scale: 4.73 is the audio SVR's ceiling; the speech lattice gives a copy 4.2-4.55
    # depending on the speech (measured 4.73 and 4.24 here).
    assert same["visqol_audio"][0] > 4.7 and same["visqol_speech"][0] > 4.0, same
    # Clearly lower: measured 3.28 and 1.39 for the noise.
    assert degraded["visqol_audio"][0] < same["visqol_audio"][0] - 1.0, degraded
    assert degraded["visqol_speech"][0] < same["visqol_speech"][0] - 1.0, degraded
    # Audio mode hears the lost 3.5-8 kHz band (measured 3.31; speech mode does not: 4.25).
    assert M.perceptual_details(voice, lowpass, ["visqol_audio"])["visqol_audio"][0] < same["visqol_audio"][0] - 0.5
    # The same number as the library on the same arrays: audio mode at 48 kHz, speech mode at 16 kHz.
    audio, speech = VisqolApi(), VisqolApi()
    audio.create(mode="audio")
    speech.create(mode="speech", use_lattice_model=True)
    up = lambda x: torchaudio.functional.resample(torch.from_numpy(x), SR, 48000).numpy()  # noqa: E731
    assert degraded["visqol_audio"][0] == pytest.approx(audio.measure_from_arrays(up(voice), up(noisy), 48000).moslqo, rel=1e-9)
    assert degraded["visqol_speech"][0] == pytest.approx(speech.measure_from_arrays(voice, noisy, SR).moslqo, rel=1e-9)


def test_visqol_undefined_below_one_second_and_where_the_library_gives_up(monkeypatch, voice):
    short = M.perceptual_details(voice[: int(0.9 * SR)], voice[: int(0.9 * SR)], M.VISQOL_METRICS)
    for name in M.VISQOL_METRICS:
        assert math.isnan(short[name][0]) and "0.90 s, shorter than the 1 s it needs" in short[name][1], short

    class NoPatches:
        def measure_from_arrays(self, *args):
            raise IndexError("list index out of range")  # what speech mode raises with no voice-active patch

    monkeypatch.setattr(M, "_visqol_api", lambda mode: NoPatches())
    value, why = M.perceptual_details(voice, voice, ["visqol_speech"])["visqol_speech"]
    assert math.isnan(value) and why == "ViSQOL speech mode failed (IndexError: list index out of range)"
    with pytest.raises(ValueError, match="unknown perceptual metrics"):
        M.perceptual_scores(voice, voice, "a.wav [vae_mode]", ["visqol"])


# --- bitrate ------------------------------------------------------------------------------------


def test_bitrate_constants():
    assert M.LATENT_VECTORS_PER_SECOND == 400.0  # [8, 256, 16] latent per 10.24 s
    assert M.bitrate_bps(math.log2(1024), 400) == 4000.0
    assert M.CODEBOOK_HARD_BPS == 4000.0
    assert M.bitrate_bps(8, 400) == 3200.0


# --- the DDCM-on-AudioLDM2 workflow's metrics, each pinned to a computation written here ----------


def _workflow_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two items that differ in content and level: loud noise, and a tone with a silent gap and a
    quiet tail (its 80 dB floor is its own, far below item 0's). Estimates: a filtered, noisier,
    time-shifted version of each."""
    ref = torch.stack([noise(1.0, batch=1, seed=1)[0], tones([440.0, 2500.0], 1.0, [0.3, 0.05])])
    ref[1, 4000:6000] = 0.0
    ref[1, 12000:] *= 1e-3
    est = torch.roll(ref, 37, dims=1) * torch.tensor([[0.7], [1.3]]) + 0.01 * noise(1.0, seed=2)
    est[0] = torch.from_numpy(np.convolve(est[0].numpy(), np.ones(4) / 4, mode="same")).float()
    return ref, est


def _np_stft_mag(x: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """|STFT| [freqs, frames] by hand: reflect-pad n_fft/2, periodic Hann, rfft per frame (float64)."""
    x = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i : i + n_fft] * window for i in range(0, x.size - n_fft + 1, hop)], axis=1)
    return np.abs(np.fft.rfft(frames, axis=0))


def _librosa_mel_db(x: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=SR, n_fft=1024, hop_length=256, window="hann", center=True, pad_mode="reflect",
        power=2.0, n_mels=128, fmin=0.0, fmax=8000.0, htk=True, norm=None,
    )  # fmt: skip
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)


def test_mel_db_mae_and_bands_match_librosa_and_torchaudio_per_item():
    import torchaudio.transforms as T

    ref, est = _workflow_pair()
    mae, low, high = M.mel_db_mae(ref, est), *M.mel_db_mae_bands(ref, est)
    # the workflow's own code, torchaudio, one signal at a time
    mel = T.MelSpectrogram(sample_rate=SR, n_fft=1024, hop_length=256, win_length=1024, n_mels=128, f_min=0.0,
                           f_max=8000.0, power=2.0, center=True, norm=None, mel_scale="htk")  # fmt: skip
    to_db = T.AmplitudeToDB(stype="power", top_db=80.0)
    for i in range(2):
        expected = np.abs(_librosa_mel_db(ref[i].numpy()) - _librosa_mel_db(est[i].numpy()))
        assert mae[i].item() == pytest.approx(expected.mean(), rel=2e-3)
        assert low[i].item() == pytest.approx(expected[:42].mean(), rel=2e-3)
        assert high[i].item() == pytest.approx(expected[42:].mean(), rel=2e-3)
        theirs = (to_db(mel(ref[i])) - to_db(mel(est[i]))).abs()
        assert mae[i].item() == pytest.approx(theirs.mean().item(), rel=1e-4)
    # the 80 dB range is each item's own: item 1 (silent gap) sits at its floor 80 dB below its own
    # peak, and the peaks differ, so one range for the batch would floor it elsewhere
    db = M.mel_power_db(ref)
    peaks, floors = db.amax(dim=(1, 2)), db.amin(dim=(1, 2))
    assert floors[1].item() == pytest.approx(peaks[1].item() - 80.0, abs=1e-3) and abs(peaks[0] - peaks[1]) > 3.0


def test_mel_db_mae_of_a_gain_is_its_size_in_db_and_a_lost_band_shows_in_its_band():
    ref = noise(1.0)
    for g in (0.5, 0.1):
        assert torch.allclose(M.mel_db_mae(ref, g * ref), torch.full((2,), abs(20 * math.log10(g))), atol=1e-3)
    spectrum = torch.fft.rfft(ref)
    spectrum[:, torch.fft.rfftfreq(ref.shape[-1], 1 / SR) > 2000.0] = 0  # nothing above 2 kHz
    low, high = M.mel_db_mae_bands(ref, torch.fft.irfft(spectrum, n=ref.shape[-1]))
    assert (high > 10.0).all() and (low < 1.0).all()


def test_stft_mag_mse_matches_a_hand_stft():
    ref, est = _workflow_pair()
    got = M.stft_mag_mse(ref, est)
    for i in range(2):
        expected = np.mean((_np_stft_mag(ref[i].numpy()) - _np_stft_mag(est[i].numpy())) ** 2)
        assert got[i].item() == pytest.approx(expected, rel=1e-3)


def test_spectral_centroid_l1_matches_a_hand_centroid_and_a_tone_sits_at_its_frequency():
    ref, est = _workflow_pair()
    got = M.spectral_centroid_l1(ref, est)
    freqs = np.arange(513) * SR / 1024

    def centroid(x):
        mag = _np_stft_mag(x)
        return (freqs[:, None] * mag).sum(axis=0) / np.maximum(mag.sum(axis=0), 1e-9)

    for i in range(2):
        expected = np.abs(centroid(ref[i].numpy()) - centroid(est[i].numpy())).mean()
        assert got[i].item() == pytest.approx(expected, rel=1e-3)
    tone = tones([1000.0], 1.0)[None]
    assert M.spectral_centroid_hz(tone)[0, 4:-4].mean().item() == pytest.approx(1000.0, rel=0.01)
    assert M.spectral_centroid_l1(tone, tones([2000.0], 1.0)[None]).item() == pytest.approx(1000.0, rel=0.02)


def test_waveform_correlation_matches_numpy_and_ignores_gain_and_offset():
    ref, est = _workflow_pair()
    got = M.waveform_correlation(ref, est)
    for i in range(2):
        assert got[i].item() == pytest.approx(np.corrcoef(ref[i].numpy(), est[i].numpy())[0, 1], abs=1e-5)
    assert torch.allclose(M.waveform_correlation(ref, 3.0 * ref + 0.2), torch.ones(2), atol=1e-5)
    assert torch.allclose(M.waveform_correlation(ref, -ref), -torch.ones(2), atol=1e-5)


def test_envelope_rms_l1_matches_a_hand_envelope():
    ref, est = _workflow_pair()
    got = M.envelope_rms_l1(ref, est)

    def rms(x):
        n = 1 + (x.size - 1024) // 256
        return np.array([np.sqrt(np.mean(x[i * 256 : i * 256 + 1024].astype(np.float64) ** 2) + 1e-12) for i in range(n)])

    for i in range(2):
        assert got[i].item() == pytest.approx(np.abs(rms(ref[i].numpy()) - rms(est[i].numpy())).mean(), rel=1e-4)
    short = noise(0.03)  # 480 samples: one zero-padded frame
    assert M.envelope_rms_l1(short, 0.5 * short).shape == (2,)


def test_workflow_metrics_in_compute_all_batched_equal_alone(frontend):
    ref, est = _workflow_pair()
    together = M.compute_all(ref, est, frontend, include_perceptual=False)
    assert set(M.WORKFLOW_METRICS) <= set(together)
    for i in range(2):
        alone = M.workflow_metrics(ref[i : i + 1], est[i : i + 1])
        for name in M.WORKFLOW_METRICS:
            assert together[name][i].item() == pytest.approx(alone[name][0].item(), rel=1e-4, abs=1e-6), name
