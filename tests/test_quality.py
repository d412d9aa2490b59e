"""Quality through the whole pipeline, on the small trained backbone and the held-out examples.

``checkpoints/backbone-small`` is a VAE + vocoder trained by ``python -m recon.backbone
train-small`` on the synthetic corpus of ``python -m recon.tools.corpus``; ``checkpoints/demo/
codebook-small.ckpt`` is the codebook ``configs/small.yaml`` trains on it, and
``codebook-small-kmeans.ckpt`` the same codebook right after its k-means initialisation, and
``codebook-small-rvq.ckpt`` the 4-stage residual ladder ``configs/small_rvq.yaml`` trains on it. None
of ``examples/audio`` was in that training, so these numbers are held-out ones.

Every bound below is set from the value measured with the committed weights (stated next to it),
with room for rounding across machines, so a change that breaks a variant fails.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import infer
from recon.metrics import log_mel_distance_db

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT / "checkpoints" / "backbone-small"
TRAINED = ROOT / "checkpoints" / "demo" / "codebook-small.ckpt"
KMEANS_ONLY = ROOT / "checkpoints" / "demo" / "codebook-small-kmeans.ckpt"
LADDER = ROOT / "checkpoints" / "demo" / "codebook-small-rvq.ckpt"
LADDER_STAGES = 4
EXAMPLES = ROOT / "examples" / "audio"
VARIANTS = "vae_mode,vae_highfreq,vae_clamped,vocoder_only,griffinlim,codebook_hard"


def run(ckpt: Path, out: Path, variants: str, perceptual: bool) -> dict[tuple[str, str], dict[str, float]]:
    args = ["--ckpt", str(ckpt), "--backbone", str(BACKBONE), "--input", str(EXAMPLES), "--output", str(out), "--variants", variants, "--wandb", "off"]
    # PESQ and STOI only: ViSQOL would add about 2.4 s per clip and variant, and no bound here uses it.
    assert infer.main(args + (["--no-visqol"] if perceptual else ["--no-perceptual"])) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {(r["file"], r["variant"]): {k: float(v) for k, v in r.items() if k not in ("file", "variant", "notes") and v not in ("", None)} for r in rows}


def mean_over_files(metrics: dict, variant: str, name: str, files: str = "") -> float:
    values = [m[name] for (file, v), m in metrics.items() if v == variant and file.startswith(files) and not np.isnan(m.get(name, np.nan))]
    assert values, f"no {name} for {variant}"
    return float(np.mean(values))


def random_codebook(trained: Path, out: Path) -> Path:
    """The trained checkpoint with its codes replaced by Gaussian vectors of the codes' own mean and spread."""
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    key = "quantizer.codebook"
    codes = ckpt["state_dict"][key]
    generator = torch.Generator().manual_seed(0)
    ckpt["state_dict"][key] = codes.mean(0) + codes.std(0) * torch.randn(codes.shape, generator=generator)
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    trained = run(TRAINED, root / "trained", VARIANTS, perceptual=True)
    kmeans = run(KMEANS_ONLY, root / "kmeans", "codebook_hard", perceptual=False)
    random = run(random_codebook(TRAINED, root / "random.ckpt"), root / "random", "codebook_hard", perceptual=False)
    return {"trained": trained, "kmeans": kmeans, "random": random, "root": root}


@pytest.fixture(scope="module")
def ladder(measured):
    """Every prefix of the residual ladder (``codebook_rvq@1..4``), with the unquantized reference
    (``vae_mode``'s outputs, from the run of the demo codebook: the same backbone)."""
    root = measured["root"]
    metrics = run(LADDER, root / "ladder", "codebook_rvq", perceptual=False)
    return {"metrics": metrics, "root": root / "ladder", "vae_mode": root / "trained" / "vae_mode"}


def ladder_means(ladder: dict, name: str) -> list[float]:
    """``name`` averaged over the files, for codebook_rvq@1..4 in order."""
    return [mean_over_files(ladder["metrics"], f"codebook_rvq@{n}", name) for n in range(1, LADDER_STAGES + 1)]


def measured_bps(ladder: dict) -> list[float]:
    """Bits per second of audio of the written ``.recn`` files of codebook_rvq@1..4 (headers
    included): total bits over all files / total input seconds."""
    seconds = sum(sf.info(str(path)).duration for path in sorted((ladder["root"] / "input").rglob("*.wav")))
    return [sum(path.stat().st_size for path in (ladder["root"] / f"codebook_rvq@{n}").rglob("*.recn")) * 8 / seconds
            for n in range(1, LADDER_STAGES + 1)]


def distance_to(reference_dir: Path, estimate_dir: Path) -> float:
    """Mean log-mel distance (dB) between the wavs of two output folders, file by file."""
    distances = []
    for reference in sorted(reference_dir.rglob("*.wav")):
        ref = torch.from_numpy(sf.read(str(reference), dtype="float32")[0])[None]
        est = torch.from_numpy(sf.read(str(estimate_dir / reference.relative_to(reference_dir)), dtype="float32")[0])[None]
        distances.append(float(log_mel_distance_db(ref, est)))
    return float(np.mean(distances))


def rms_db(path: Path) -> float:
    wav, _ = sf.read(str(path), dtype="float32")
    return float(10 * np.log10(np.mean(wav.astype(np.float64) ** 2) + 1e-20))


def test_trained_codebook_beats_its_kmeans_start_and_a_random_codebook(measured):
    # Against the input, random codes cost 1.23 dB of log-mel (7.19 against 5.96 dB); the k-means
    # start and the trained codebook both read 5.95 dB there, because the vocoder's own error
    # (vocoder_only: 5.81 dB) swamps theirs. Against the unquantized reconstruction (vae_mode's
    # output: same decoder, same vocoder, only the quantization differs) training shows: 0.660 dB
    # against 0.671 dB for the k-means start, and 0.14 dB more latent SNR (18.93 against 18.78 dB).
    # Asserted with half of each measured margin. (Re-measured with the 0.32 s window overlap that
    # infer.py now uses by default: the same values to the digits given.)
    trained = mean_over_files(measured["trained"], "codebook_hard", "log_mel_db")
    random = mean_over_files(measured["random"], "codebook_hard", "log_mel_db")
    assert random - trained >= 0.6, (trained, random)

    reference = measured["root"] / "trained" / "vae_mode"
    to_vae = {name: distance_to(reference, measured["root"] / name / "codebook_hard") for name in ("trained", "kmeans", "random")}
    assert to_vae["kmeans"] - to_vae["trained"] >= 0.0055, to_vae
    assert to_vae["random"] - to_vae["trained"] >= 1.3, to_vae

    snr = {name: mean_over_files(measured[name], "codebook_hard", "latent_snr_db") for name in ("trained", "kmeans", "random")}
    assert snr["trained"] - snr["kmeans"] >= 0.07, snr
    assert snr["trained"] - snr["random"] >= 5.0, snr  # measured 10.9 dB


def test_each_residual_stage_brings_the_latent_and_the_output_closer(ladder):
    # codebook_rvq@1..4 of the committed ladder, measured: latent SNR 18.85, 25.83, 31.36, 35.93 dB
    # (+6.98, +5.53, +4.56 per stage); log-mel distance to vae_mode's output (same decoder and
    # vocoder, only the quantization differs) 0.669, 0.233, 0.119, 0.070 dB (-0.436, -0.115,
    # -0.049). Each step asserted at half its measured margin.
    snr = ladder_means(ladder, "latent_snr_db")
    for n, margin in zip(range(1, LADDER_STAGES), (3.5, 2.75, 2.25)):
        assert snr[n] - snr[n - 1] >= margin, (n + 1, snr)

    to_vae = [distance_to(ladder["vae_mode"], ladder["root"] / f"codebook_rvq@{n}") for n in range(1, LADDER_STAGES + 1)]
    for n, margin in zip(range(1, LADDER_STAGES), (0.22, 0.057, 0.024)):
        assert to_vae[n - 1] - to_vae[n] >= margin, (n + 1, to_vae)


def test_residual_stages_bring_the_output_closer_to_the_input_until_the_vocoder_dominates(ladder):
    # Against the input the vocoder's own error (vocoder_only: 5.81 dB) swamps the stages' gains:
    # 5.958, 5.938, 5.929, 5.931 dB for codebook_rvq@1..4, so the fourth stage is not monotone
    # (+0.002 dB, within noise). Asserted: every ladder of two stages or more is closer to the input
    # than one stage, at half the smallest measured gain (0.020 dB, at two stages).
    to_input = ladder_means(ladder, "log_mel_db")
    for n in range(2, LADDER_STAGES + 1):
        assert to_input[0] - to_input[n - 1] >= 0.01, (n, to_input)


def test_the_ladders_bitrate_grows_by_one_stage_rate_per_stage(ladder):
    # Nominal: N x 4.0 kbps exactly (10 bits x 400 vectors/s per stage). Measured from the .recn
    # files (range-coded indices + headers): 4438, 8656, 12870, 17089 b/s, i.e. 4218, 4214, 4219 b/s
    # more per stage: within 0.1 % of each other, 5 % above the nominal stage rate (10.5 bits per
    # latent vector on these held-out clips under the range coder's code-frequency prior); the
    # headers add about 220 b/s once.
    nominal = ladder_means(ladder, "bitrate_bps")
    assert nominal == [4000.0 * n for n in range(1, LADDER_STAGES + 1)], nominal
    bps = measured_bps(ladder)
    steps = np.diff(bps)
    assert np.all(np.abs(steps - steps.mean()) <= 0.01 * steps.mean()), bps
    assert np.all(np.abs(steps - 4000.0) <= 0.1 * 4000.0), bps


def test_codebook_stays_close_to_the_unquantized_vae(measured):
    # 4.0 kbps of codes in place of the continuous latent adds 0.023 dB of log-mel to vae_mode's
    # 5.93 dB on these clips; a broken quantizer or decode path costs whole dB (random codes: 1.26).
    codebook = mean_over_files(measured["trained"], "codebook_hard", "log_mel_db")
    vae = mean_over_files(measured["trained"], "vae_mode", "log_mel_db")
    assert codebook - vae <= 0.1, (codebook, vae)


def test_vae_highfreq_retains_more_high_band_than_vae_mode(measured):
    # Energy above 4 kHz relative to the input, per file: vae_highfreq's loudness step (and its
    # shelf where it fires, on chords.flac) raise it over the plain mode on every clip, by 1.62x
    # at least (measured 1.62 to 9.0x).
    metrics = measured["trained"]
    for file in sorted({file for file, _ in metrics}):
        assert metrics[(file, "vae_highfreq")]["hf_retention"] >= 1.3 * metrics[(file, "vae_mode")]["hf_retention"], file


def test_vae_clamped_matches_the_inputs_loudness(measured):
    # vae_clamped applies an RMS gain toward the input's level (vae_mode's outputs sit 0.8 to 17 dB
    # below it). It lands within 0.01 dB, except where the gain would clip: then the peak guard
    # holds the peak at 1 and the output is still closer than vae_mode's (sweep_organ: -6.8 dB
    # against -17.2 dB).
    out = measured["root"] / "trained"
    for reference in sorted((out / "input").rglob("*.wav")):
        rel = reference.relative_to(out / "input")
        clamped = rms_db(out / "vae_clamped" / rel) - rms_db(reference)
        mode = rms_db(out / "vae_mode" / rel) - rms_db(reference)
        peak = float(np.abs(sf.read(str(out / "vae_clamped" / rel), dtype="float32")[0]).max())
        assert abs(clamped) <= 0.1 or (peak >= 0.999 and abs(clamped) < abs(mode)), (rel, clamped, mode, peak)


@pytest.mark.xfail(strict=True, reason="not met by the small stand-in vocoder (27 + 26 min of training, no discriminator): "
                   "on the held-out speech, vocoder_only scores PESQ 1.09 and STOI 0.72 against Griffin-Lim's 2.11 and 0.91")
def test_vocoder_only_beats_griffinlim_on_speech_quality(measured):
    # What the HiFi-GAN paper leads one to expect of a neural vocoder against Griffin-Lim from the
    # same mel: better perceived quality (PESQ) and intelligibility (STOI) on speech. Not the
    # spectral distances: Griffin-Lim iterates toward the given magnitude, so it wins log-mel
    # distance by construction. Strict: when a better vocoder passes, this marker must go.
    metrics = measured["trained"]
    for name in ("pesq_wb", "stoi"):
        vocoder = mean_over_files(metrics, "vocoder_only", name, files="speech/")
        griffinlim = mean_over_files(metrics, "griffinlim", name, files="speech/")
        assert vocoder > griffinlim, (name, vocoder, griffinlim)
