"""The codebook codec: one container format, ``recon encode`` / ``recon decode``, and infer.py's
``codebook_hard`` writing the same files. A file decodes from itself and the named model alone."""

from __future__ import annotations

import csv
import math
import re
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import infer
from recon import cli
from recon.audio import load_audio
from recon import codec
from recon.codec import decode_container, pack_indices, unpack_indices
from recon.container import Container, ContainerError, dumps, loads
from recon.lit import load_inference_codebook
from tests.conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"
HEADER = {"codec": "codebook", "sample_rate": 16000, "num_samples": 10, "layout": [163840, 20480], "level": 1.0, "model": {"codebook": "ab"},
          "codes": 1024, "coding": "fixed", "stages": 1}
INPUT_FORMAT = ("input_sample_rate", "input_channels")


def same_file_of_a_16k_mono_input(ours, theirs) -> bool:
    """``recon encode`` and infer.py write the same file, the input's own format included."""
    return ours == theirs and (ours.header["input_sample_rate"], ours.header["input_channels"]) == (16000, 1)


@pytest.mark.parametrize("bits", [1, 3, 8, 10, 12])
def test_indices_pack_at_their_width_and_unpack_exactly(bits):
    rng = np.random.default_rng(bits)
    for count in (0, 1, 7, 4097):
        values = rng.integers(0, 1 << bits, count)
        data = pack_indices(values, bits)
        assert len(data) == -(-count * bits // 8)
        np.testing.assert_array_equal(unpack_indices(data, bits, count), values)
    with pytest.raises(ValueError, match="must lie in"):
        pack_indices(np.array([1 << bits]), bits)


def test_container_round_trip_and_one_line_errors():
    data = dumps(Container(HEADER, b"\x01\x02\x03"))
    assert loads(data) == Container(HEADER, b"\x01\x02\x03")
    corrupt = bytearray(data)
    corrupt[-6] ^= 0xFF  # a payload byte
    cases = {
        b"RIFF....WAVEfmt ": "not a recon file",
        b"": "not a recon file",
        data[:3]: "not a recon file",
        data[:10]: "truncated",
        data[:-1]: "truncated",
        data[:-8]: "truncated",
        bytes(corrupt): "corrupt recon file (CRC mismatch)",
        data + b"\x00": "unexpected trailing bytes",
        data[:4] + b"\x09\x00" + data[6:]: "format version 9",
    }
    for bad, reason in cases.items():
        with pytest.raises(ContainerError, match=re.escape(reason)) as err:
            loads(bad)
        assert "\n" not in str(err.value)
    # A well-formed file whose header lacks what decoding needs (CRC recomputed).
    import recon.container as C

    raw = C._deflate(json.dumps({k: v for k, v in HEADER.items() if k != "level"}).encode())
    body = C._PREFIX.pack(C.MAGIC, C.VERSION, len(raw)) + raw + C._PAYLOAD_LENGTH.pack(0)
    with pytest.raises(ContainerError, match="lacks level"):
        loads(body + zlib.crc32(body).to_bytes(4, "little"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in")
    write_tone(root / "short.wav", 1.0, freq=220)
    write_tone(root / "nested" / "long.wav", 12.0, freq=440)  # a full segment and a 2.56 s tail
    return root


@pytest.fixture(scope="module")
def infer_run(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("infer") / "out"
    assert infer.main(["--ckpt", str(DEMO_CKPT), "--input", str(inputs), "--output", str(out), "--variants", "codebook_hard,vae_mode",
                       "--wandb", "off", "--no-perceptual", "--accelerator", "cpu"]) == 0
    return out


def read_rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_infer_writes_recn_files_with_their_measured_rate(infer_run):
    rows = {(r["file"], r["variant"]): r for r in read_rows(infer_run)}
    for rel, seconds in (("short.wav", 1.0), ("nested/long.wav", 12.0)):
        path = infer_run / "codebook_hard" / Path(rel).with_suffix(".recn")
        row = rows[(rel, "codebook_hard")]
        assert float(row["measured_bps"]) == pytest.approx(path.stat().st_size * 8 / seconds)
        assert float(row["bitrate_bps"]) == 4000 and rows[(rel, "vae_mode")]["measured_bps"] == ""
        # 10 bits per latent vector of the segments as cut (1.28 s for 1 s; 10.24 + 2.56 s for 12 s),
        # not of whole 10.24 s segments; the header and framing are what remains.
        vectors = 32 * 16 if seconds == 1.0 else (256 + 64) * 16
        payload = len(loads(path.read_bytes()).payload)
        assert payload == vectors * 10 // 8 and path.stat().st_size - payload <= 250
    summary = json.loads((infer_run / "summary.json").read_text())["variants"]
    assert summary["codebook_hard"]["measured_bps"] == pytest.approx(
        sum((infer_run / "codebook_hard" / p).stat().st_size for p in ("short.recn", "nested/long.recn")) * 8 / 13.0)
    assert summary["vae_mode"]["measured_bps"] is None
    # Where the time went: start-up, the predict loop, and each stage of it.
    timing = json.loads((infer_run / "summary.json").read_text())["timing"]
    assert timing["startup_s"] > 0 and timing["predict_s"] > 0
    assert set(timing["stage_s"]) == {"encode", "codebook_hard", "vae_mode", "metrics", "assemble", "write"}
    assert 0 < sum(timing["stage_s"].values()) <= timing["predict_s"] * 1.05


def test_decoding_infers_file_reproduces_its_output(infer_run):
    backbone, quantizer = load_inference_codebook(str(DEMO_CKPT))
    for rel in ("short", "nested/long"):
        container = loads((infer_run / "codebook_hard" / f"{rel}.recn").read_bytes())
        decoded = decode_container(container, backbone, quantizer).numpy()
        written, _ = sf.read(str(infer_run / "codebook_hard" / f"{rel}.wav"), dtype="float32")
        # The wav is 16-bit PCM: one quantisation step is 3e-5.
        assert decoded.shape == written.shape and np.abs(decoded - written).max() <= 1e-4


def test_encode_then_decode_on_the_command_line(infer_run, inputs, tmp_path, capsys):
    coded, decoded = tmp_path / "coded", tmp_path / "decoded"
    assert cli.main(["encode", str(inputs), "--ckpt", str(DEMO_CKPT), "--out", str(coded), "--device", "cpu", "--quiet"]) == 0
    for rel in ("short.recn", "nested/long.recn"):
        ours, theirs = loads((coded / rel).read_bytes()), loads((infer_run / "codebook_hard" / rel).read_bytes())
        assert same_file_of_a_16k_mono_input(ours, theirs)
    assert cli.main(["decode", str(coded), "--ckpt", str(DEMO_CKPT), "--out", str(decoded), "--device", "cpu", "--quiet"]) == 0
    for rel in ("short", "nested/long"):
        wav, _ = sf.read(str(decoded / f"{rel}.wav"), dtype="float32")
        level = loads((coded / f"{rel}.recn").read_bytes()).header["level"]
        reference, _ = sf.read(str(infer_run / "codebook_hard" / f"{rel}.wav"), dtype="float32")
        # Decoded at the input's own loudness: infer.py's (peak-normalised) output times the level.
        np.testing.assert_allclose(wav, reference * level, atol=1e-4 * max(level, 1.0))
    raw = load_audio(inputs / "short.wav")
    assert loads((coded / "short.recn").read_bytes()).header["level"] == pytest.approx(float((raw - raw.mean()).abs().max()) / 0.5, rel=1e-4)
    capsys.readouterr()
    assert cli.main(["info", str(coded / "short.recn")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codec"] == "codebook" and info["measured_bps"] == pytest.approx((coded / "short.recn").stat().st_size * 8)


def test_bad_files_and_a_model_mismatch_cost_one_line_each(infer_run, inputs, tmp_path, capsys):
    files = tmp_path / "files"
    files.mkdir()
    good = (infer_run / "codebook_hard" / "short.recn").read_bytes()
    (files / "good.recn").write_bytes(good)
    (files / "truncated.recn").write_bytes(good[:-20])
    (files / "foreign.recn").write_bytes((inputs / "short.wav").read_bytes())
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0x10
    (files / "corrupt.recn").write_bytes(bytes(corrupt))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "good.wav").write_bytes(b"keep me")
    capsys.readouterr()
    code = cli.main(["decode", str(files), "--ckpt", str(DEMO_CKPT), "--out", str(out), "--device", "cpu", "--quiet"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and (out / "good.wav").read_bytes() == b"keep me"
    assert sorted(errors) == [
        "error: corrupt.recn: corrupt recon file (CRC mismatch)",
        "error: foreign.recn: not a recon file (no RECN magic)",
        f"error: good.recn: {out / 'good.wav'} exists; pass --overwrite to replace it",
        f"error: truncated.recn: truncated recon file ({len(good) - 20} of {len(good)} bytes)",
    ]
    # Another codebook (same backbone): refused, naming both fingerprints.
    other = torch.load(DEMO_CKPT, weights_only=False, map_location="cpu")
    other["state_dict"]["quantizer.codebook"] = other["state_dict"]["quantizer.codebook"] + 0.01
    torch.save(other, tmp_path / "other.ckpt")
    code = cli.main(["decode", str(files / "good.recn"), "--ckpt", str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "o2"), "--quiet"])
    (error,) = capsys.readouterr().err.strip().splitlines()
    recorded = loads(good).header["model"]["codebook"]
    assert code == 1 and error.startswith("error: good.recn: encoded with other weights (codebook " + recorded + " in the file vs ")
    assert not (tmp_path / "o2" / "good.wav").exists()
    # Usage errors: one line, exit 2.
    assert cli.main(["decode", str(tmp_path / "nothing"), "--ckpt", str(DEMO_CKPT), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such file or folder: {tmp_path / 'nothing'}"


@pytest.fixture(scope="module")
def ladder_ckpt(inputs, tmp_path_factory) -> Path:
    """A two-stage ladder of 64 codes, trained by CodebookTrainer for a few steps on the inputs."""
    import lightning as L

    from recon.codebook import CodebookConfig
    from recon.data import AudioDataModule
    from recon.lit import CodebookTrainer

    L.seed_everything(0)
    model = CodebookTrainer(backbone="random:tiny", codebook=CodebookConfig(num_codes=64, update="ema", stages=2), kmeans_init_batches=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                        default_root_dir=tmp_path_factory.mktemp("fit"))
    trainer.fit(model, datamodule=AudioDataModule(str(inputs), batch_size=2, val_fraction=0.0, seed=0))
    path = tmp_path_factory.mktemp("ckpt") / "ladder.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_residual_ladder_in_infer_and_on_the_command_line(inputs, ladder_ckpt, tmp_path):
    out = tmp_path / "out"
    assert infer.main(["--ckpt", str(ladder_ckpt), "--input", str(inputs), "--output", str(out), "--variants", "codebook_hard,codebook_rvq",
                       "--wandb", "off", "--no-perceptual", "--accelerator", "cpu"]) == 0
    rows = {(r["file"], r["variant"]): r for r in read_rows(out)}
    for rel in ("short", "nested/long"):
        one, two = rows[(f"{rel}.wav", "codebook_rvq@1")], rows[(f"{rel}.wav", "codebook_rvq@2")]
        # 64 codes: 6 bits per vector and stage.
        assert (float(one["bitrate_bps"]), float(two["bitrate_bps"])) == (2400, 4800)
        assert float(two["latent_snr_db"]) > float(one["latent_snr_db"]) + 0.5
        # One stage of the ladder is codebook_hard: the same samples and the same file.
        hard, _ = sf.read(str(out / "codebook_hard" / f"{rel}.wav"), dtype="float32")
        rvq1, _ = sf.read(str(out / "codebook_rvq@1" / f"{rel}.wav"), dtype="float32")
        np.testing.assert_array_equal(rvq1, hard)
        assert (out / "codebook_rvq@1" / f"{rel}.recn").read_bytes() == (out / "codebook_hard" / f"{rel}.recn").read_bytes()
    coded, decoded = tmp_path / "coded", tmp_path / "decoded"
    assert cli.main(["encode", str(inputs), "--codec", "rvq", "--ckpt", str(ladder_ckpt), "--out", str(coded), "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["decode", str(coded), "--ckpt", str(ladder_ckpt), "--out", str(decoded), "--device", "cpu", "--quiet", "--normalised"]) == 0
    for rel in ("short", "nested/long"):
        ours, theirs = loads((coded / f"{rel}.recn").read_bytes()), loads((out / "codebook_rvq@2" / f"{rel}.recn").read_bytes())
        assert same_file_of_a_16k_mono_input(ours, theirs) and ours.header["stages"] == 2 and ours.header["model"]["codebook"] != loads(
            (out / "codebook_hard" / f"{rel}.recn").read_bytes()).header["model"]["codebook"]
        wav, _ = sf.read(str(decoded / f"{rel}.wav"), dtype="float32")
        reference, _ = sf.read(str(out / "codebook_rvq@2" / f"{rel}.wav"), dtype="float32")
        assert np.abs(wav - reference).max() <= 1e-4
    # A two-stage file needs a codebook of at least two stages.
    code = cli.main(["decode", str(coded / "short.recn"), "--ckpt", str(DEMO_CKPT), "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 1 and not (tmp_path / "x" / "short.wav").exists()


def test_skewed_indices_are_range_coded_at_their_cross_entropy(tiny_backbone):
    """Indices drawn from a skewed distribution that the code frequencies describe cost their
    cross-entropy (plus at most two 32-bit words), far under log2 K, and decode exactly."""
    from recon.codebook import CodebookConfig, VectorQuantizer

    quantizer = VectorQuantizer(CodebookConfig(num_codes=64))
    probabilities = torch.softmax(torch.linspace(0, 12, 64), 0)
    quantizer.code_frequency.copy_(probabilities * 1e6)
    g = torch.Generator().manual_seed(0)
    segments = [163840, 40960]
    codes = [torch.multinomial(probabilities, 256 * 16, replacement=True, generator=g).reshape(256, 16),
             torch.multinomial(probabilities, 64 * 16, replacement=True, generator=g).reshape(64, 16)]
    container = codec.codebook_container(codes, segments, 163840 + 30000, quantizer, tiny_backbone)
    assert container.header["coding"] == "categorical" and "prior" in container.header["model"]
    prior = quantizer.code_probabilities(1)[0]
    ideal = sum(-float(torch.log2(prior[c.reshape(-1)]).sum()) for c in codes)
    assert ideal <= len(container.payload) * 8 <= ideal + 64 < 0.75 * 6 * sum(c.numel() for c in codes)
    decoded = codec.codebook_codes(loads(dumps(container)), tiny_backbone, quantizer)
    assert all(torch.equal(a[0], b) for a, b in zip(decoded, codes))
    assert codec.codebook_container(codes, segments, 163840 + 30000, quantizer, tiny_backbone, entropy=False).header["coding"] == "fixed"


def test_indices_are_range_coded_under_the_checkpoints_code_frequencies(inputs, ladder_ckpt, tmp_path):
    coded, fixed = tmp_path / "coded", tmp_path / "fixed"
    common = ["--codec", "rvq", "--ckpt", str(ladder_ckpt), "--device", "cpu", "--quiet"]
    assert cli.main(["encode", str(inputs), *common, "--out", str(coded)]) == 0
    assert cli.main(["encode", str(inputs), *common, "--out", str(fixed), "--fixed-rate"]) == 0
    backbone, quantizer = load_inference_codebook(str(ladder_ckpt))
    priors = quantizer.code_probabilities(2)
    for rel in ("short.recn", "nested/long.recn"):
        chosen, plain = loads((coded / rel).read_bytes()), loads((fixed / rel).read_bytes())
        assert plain.header["coding"] == "fixed" and "prior" not in plain.header["model"]
        codes = codec.codebook_codes(plain, backbone, quantizer)
        assert all(torch.equal(a, b) for a, b in zip(codec.codebook_codes(chosen, backbone, quantizer), codes))
        assert len(plain.payload) * 8 == sum(c.numel() for c in codes) * 6
        # The range coder spends the cross-entropy of the indices under the prior, plus at most two
        # words; the file keeps whichever payload is smaller.
        ideal = sum(-float(torch.log2(priors[s][c[s].reshape(-1)]).sum()) for c in codes for s in range(2))
        if ideal + 64 < len(plain.payload) * 8:
            assert chosen.header["coding"] == "categorical" and "prior" in chosen.header["model"]
            assert ideal <= len(chosen.payload) * 8 <= ideal + 64
        assert len(chosen.payload) <= len(plain.payload)
        torch.testing.assert_close(codec.decode_container(chosen, backbone, quantizer), codec.decode_container(plain, backbone, quantizer))
    # A checkpoint without code frequencies (the demo predates them) codes at log2 K bits.
    backbone, demo = load_inference_codebook(str(DEMO_CKPT))
    assert demo.code_probabilities() is None


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    from recon.diffusion import make_tiny_pipeline_folder

    return make_tiny_pipeline_folder(tmp_path_factory.mktemp("pipeline") / "tiny")


DDCM = ["--ddcm-steps", "6", "--ddcm-k", "64", "--seed", "3"]


@pytest.mark.usefixtures("single_thread")  # tiny tensors: a second thread only waits on the first
def test_ddcm_files_from_infer_and_the_command_line_decode_on_their_own(inputs, pipeline, tmp_path, capsys):
    out, coded, decoded = tmp_path / "out", tmp_path / "coded", tmp_path / "decoded"
    assert infer.main(["--backbone", "random:tiny", "--diffusion", str(pipeline), "--input", str(inputs), "--output", str(out),
                       "--variants", "ddcm_noise", *DDCM, "--batch-size", "1", "--wandb", "off", "--no-perceptual", "--accelerator", "cpu"]) == 0
    common = ["--diffusion", str(pipeline), "--device", "cpu", "--quiet"]
    assert cli.main(["encode", str(inputs), "--codec", "ddcm", *DDCM, *common, "--out", str(coded), "--batch-size", "1"]) == 0
    # Decoded from the files alone (the pipeline's own VAE and vocoder), every segment of a file in one batch.
    assert cli.main(["decode", str(out / "ddcm_noise"), *common, "--out", str(decoded), "--normalised", "--batch-size", "4"]) == 0
    rows = {r["file"]: r for r in read_rows(out)}
    for rel in ("short", "nested/long"):
        ours, theirs = loads((coded / f"{rel}.recn").read_bytes()), loads((out / "ddcm_noise" / f"{rel}.recn").read_bytes())
        assert same_file_of_a_16k_mono_input(ours, theirs) and ours.header["noise"] == "recon-counter-v1" and (ours.header["steps"], ours.header["K"]) == (6, 64)
        segments = codec.segments_of(ours)
        assert len(ours.payload) == -(-len(segments) * 5 * 6 // 8)
        assert float(rows[f"{rel}.wav"]["measured_bps"]) == pytest.approx((out / "ddcm_noise" / f"{rel}.recn").stat().st_size * 8
                                                                          / (1.0 if rel == "short" else 12.0))
        # Segments encoded one at a time, decoded as one batch: equal up to the UNet's batch rounding.
        wav, _ = sf.read(str(decoded / f"{rel}.wav"), dtype="float32")
        reference, _ = sf.read(str(out / "ddcm_noise" / f"{rel}.wav"), dtype="float32")
        assert wav.shape == reference.shape and np.abs(wav - reference).max() <= 1e-4
    # Another prompt is another conditioning: refused, naming both.
    files = tmp_path / "files"
    files.mkdir()
    header = dict(theirs.header, prompt="rain")
    (files / "other_prompt.recn").write_bytes(dumps(Container(header, theirs.payload)))
    capsys.readouterr()
    assert cli.main(["decode", str(files), *common, "--out", str(tmp_path / "o")]) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert error.startswith("error: other_prompt.recn: encoded with other weights (conditioning " + theirs.header["model"]["conditioning"])
    # A ddcm file needs the diffusion components; a codebook checkpoint alone does not decode it.
    assert cli.main(["decode", str(out / "ddcm_noise" / "short.recn"), "--ckpt", str(DEMO_CKPT), "--out", str(tmp_path / "p"), "--quiet"]) == 1
    assert "needs the AudioLDM2 diffusion components (--diffusion)" in capsys.readouterr().err


@pytest.mark.usefixtures("single_thread")  # tiny tensors: a second thread only waits on the first
def test_ddcm_decoding_in_a_batch_reproduces_encoding_one_segment_at_a_time(pipeline):
    """The per-step codebooks and x_T are shared and the argmax is per item, so a batch decodes each
    item as if alone; the UNet's batch rounding is what remains (stated tolerance: 1e-5 of the latent's
    peak, float32 rounding through the steps)."""
    from recon.ddcm import compress, decompress
    from recon.diffusion import load_diffusion_components

    components = load_diffusion_components(str(pipeline), local_files_only=True)
    denoiser = components.denoiser("", 7.5)
    x0 = torch.randn(3, 8, 32, 16, generator=torch.Generator().manual_seed(0))
    alone = [compress(denoiser, x0[i : i + 1], 8, 32, 5) for i in range(3)]
    indices = torch.cat([i for i, _ in alone])
    batched, reference = decompress(denoiser, indices, 8, 32, 5, x0.shape), torch.cat([r for _, r in alone])
    assert (batched - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert torch.equal(compress(denoiser, x0, 8, 32, 5)[0], indices)


def test_recon_prints_its_results_and_none_of_the_libraries_chatter(inputs, tmp_path):
    from tests.test_infer import LIBRARY_NOISE, ConsoleCapture

    with ConsoleCapture() as console:
        assert cli.main(["encode", str(inputs / "short.wav"), "--ckpt", str(DEMO_CKPT), "--out", str(tmp_path / "coded"), "--device", "cpu"]) == 0
        assert cli.main(["decode", str(tmp_path / "coded"), "--ckpt", str(DEMO_CKPT), "--out", str(tmp_path / "decoded"), "--device", "cpu"]) == 0
    assert "encoded 1 file(s)" in console.stdout.getvalue() and "decoded 1 file(s)" in console.stdout.getvalue()
    assert [noise for noise in LIBRARY_NOISE if noise in console.text] == [], console.text
    assert [str(w.message) for w in console.warnings] == []


def test_ddcm_prompt_is_embedded_where_the_text_encoders_are(pipeline):
    """``recon encode/decode --codec ddcm --device cuda`` moves only the UNet; the prompt's token ids
    must go to the text encoders (which stay on the CPU), not to the UNet's device. A UNet on
    ``meta`` stands in for the GPU: embedding on its device raises."""
    from recon.diffusion import load_diffusion_components

    components = load_diffusion_components(str(pipeline), local_files_only=True)
    components.pipe.unet.to("meta")
    denoiser = components.denoiser("rain", 7.5)
    assert next(components.pipe.text_encoder.parameters()).device.type == "cpu"
    assert {e.device.type for e in (denoiser.embeddings.prompt_embeds, denoiser.embeddings.generated_prompt_embeds)} == {"meta"}


# ---------------------------------------------------------------------- the range coder's prior
def _fraction_table(weights: list[float], precision: int = 24) -> list[int]:
    """The prior's definition in exact fractions: 1 + floor(c_i D / S), the rest to the largest remainders."""
    from fractions import Fraction

    c = [Fraction(w) for w in weights]
    free = (1 << precision) - len(c)
    shares = [x * free / sum(c) for x in c]
    table = [1 + math.floor(s) for s in shares]
    for i in sorted(range(len(c)), key=lambda i: (-(shares[i] - math.floor(shares[i])), i))[: (1 << precision) - sum(table)]:
        table[i] += 1
    return table


def test_the_range_coders_prior_is_an_exact_integer_table():
    """The prior is an integer table made from the stored counts without any float sum: it is the
    exact-fraction definition, sums to 2^24 with every code >= 1, does not move when the float
    probabilities move in the last bit (as sums on another CPU would) nor depend on the codes' order;
    constriction's model is that table at every boundary; the fingerprint covers the integers."""
    from recon.codebook import PRIOR_PRECISION, quantise_prior

    rng = np.random.default_rng(0)
    counts = torch.from_numpy(rng.gamma(0.3, 500.0, 256).astype(np.float32))
    table = quantise_prior(counts, smoothing=0.5).numpy()
    assert table.tolist() == _fraction_table([float(c) + 0.5 for c in counts.tolist()])
    assert table.sum() == 1 << PRIOR_PRECISION and table.min() >= 1
    probabilities = counts.double().numpy() + 0.5
    probabilities /= probabilities.sum()
    nudged = np.nextafter(probabilities, np.where(np.arange(256) % 2, 1.0, 0.0))  # every value one ulp off
    assert (nudged != probabilities).all()
    assert torch.equal(quantise_prior(torch.from_numpy(probabilities)), quantise_prior(torch.from_numpy(nudged)))
    order = torch.from_numpy(rng.permutation(256))
    assert torch.equal(quantise_prior(counts[order], smoothing=0.5), torch.from_numpy(table)[order])
    # constriction's decoder, probed at every boundary of the table's CDF: symbol i starts exactly at
    # sum(table[:i]) (the first decode reads a 64-bit point p and picks floor(p / (2^40 - 1))).
    import constriction

    model = codec._categorical(table)
    starts = np.concatenate([[0], np.cumsum(table)[:-1]])
    for i in range(1, 256):
        for point, symbol in ((int(starts[i]) * ((1 << 40) - 1), i), (int(starts[i]) * ((1 << 40) - 1) - 1, i - 1)):
            words = np.array([point >> 32, point & 0xFFFFFFFF, 0, 0], dtype=np.uint32)
            assert constriction.stream.queue.RangeDecoder(words).decode(model, 1)[0] == symbol
    moved = table.copy()
    moved[[0, 1]] += (1, -1) if table[1] > 1 else (-1, 1)
    assert codec.prior_fingerprint([moved]) != codec.prior_fingerprint([table])


def test_range_coded_indices_round_trip_and_claims_beyond_the_payload_are_refused():
    from recon.codebook import quantise_prior

    table = quantise_prior(torch.softmax(torch.linspace(6, 0, 64), 0)).numpy()
    rng = np.random.default_rng(1)
    blocks = [rng.choice(64, size, p=table / table.sum()) for size in (512, 300)]
    data = codec.range_encode([(b, table) for b in blocks])
    ideal = sum(codec._information_bits(b, table) for b in blocks)
    assert ideal <= len(data) * 8 <= ideal + 64
    assert all(np.array_equal(a, b) for a, b in zip(codec.range_decode(data, [(b.size, table) for b in blocks]), blocks))
    with pytest.raises(ValueError, match="cannot hold 100000 indices"):
        codec.range_decode(data, [(100_000, table)])
    with pytest.raises(ValueError, match="ends before its|cannot hold"):
        codec.range_decode(data[:8], [(b.size, table) for b in blocks])
    with pytest.raises(ValueError, match="data left after"):
        codec.range_decode(data + bytes(4) + data, [(b.size, table) for b in blocks])


# ---------------------------------------------------------------------- decoded output a user can keep
def test_decoded_files_keep_the_inputs_rate_in_the_format_asked(tmp_path, capsys):
    source = write_tone(tmp_path / "in" / "stereo.wav", 1.0, sr=44100, channels=2)
    coded, common = tmp_path / "coded", ["--ckpt", str(DEMO_CKPT), "--device", "cpu", "--quiet"]
    assert cli.main(["encode", str(source), "--out", str(coded), *common]) == 0
    new = loads((coded / "stereo.recn").read_bytes())
    assert (new.header["input_sample_rate"], new.header["input_channels"]) == (44100, 2)
    # infer.py's codec files record the input's format too: the same file as recon encode's.
    out = tmp_path / "infer"
    assert infer.main(["--ckpt", str(DEMO_CKPT), "--input", str(source), "--output", str(out), "--variants", "codebook_hard",
                       "--wandb", "off", "--no-perceptual", "--accelerator", "cpu"]) == 0
    assert loads((out / "codebook_hard" / "stereo.recn").read_bytes()) == new
    # A file written before recon recorded the input's format decodes at 16 kHz.
    legacy = {k: v for k, v in new.header.items() if k not in INPUT_FORMAT}
    (coded / "legacy.recn").write_bytes(dumps(Container(legacy, new.payload)))
    runs = {"default": [], "float": ["--format", "float"], "wav24": ["--format", "wav24"],
            "original": ["--format", "flac", "--sample-rate", "original"]}
    for name, options in runs.items():
        assert cli.main(["decode", str(coded), "--out", str(tmp_path / name), *common, *options]) == 0
    expected = {("default", "stereo.wav"): (16000, "PCM_16"), ("float", "stereo.wav"): (16000, "FLOAT"),
                ("wav24", "stereo.wav"): (16000, "PCM_24"),
                ("original", "stereo.flac"): (44100, "PCM_16"), ("original", "legacy.flac"): (16000, "PCM_16")}
    for (name, file), (rate, subtype) in expected.items():
        info = sf.info(str(tmp_path / name / file))
        assert (info.samplerate, info.subtype, info.channels, info.frames) == (rate, subtype, 1, rate)
    exact, _ = sf.read(str(tmp_path / "float" / "stereo.wav"), dtype="float32")
    pcm, _ = sf.read(str(tmp_path / "default" / "stereo.wav"), dtype="float32")
    assert np.abs(pcm - exact).max() <= 1 / 32768 and np.abs(exact).max() > 0
    pcm24, _ = sf.read(str(tmp_path / "wav24" / "stereo.wav"), dtype="float64")
    assert np.abs(pcm24 - exact).max() <= 1 / 2**23 < np.abs(pcm - exact).max()  # finer steps than 16-bit's
    # Back at 44.1 kHz by torchaudio's resampler: the 16 kHz decoding, resampled, to one 16-bit step.
    import torchaudio.functional as AF

    original, _ = sf.read(str(tmp_path / "original" / "stereo.flac"), dtype="float32")
    reference = AF.resample(torch.from_numpy(exact), orig_freq=16000, new_freq=44100).numpy()
    assert np.abs(original - reference).max() <= 1 / 32768
    capsys.readouterr()
    assert cli.main(["info", str(coded / "legacy.recn")]) == 0
    assert json.loads(capsys.readouterr().out)["input_sample_rate"] == 16000


def test_info_reads_headers_without_importing_torch(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "clip.recn"
    path.write_bytes(dumps(Container(HEADER, b"\x01\x02")))
    script = ("import sys; from recon import cli; code = cli.main(['info', sys.argv[1]]); "
              "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stderr.strip() == "no torch", run.stderr
    assert json.loads(run.stdout)["num_samples"] == 10
