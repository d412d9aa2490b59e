"""The codebook codec: one container format, ``recon encode`` / ``recon decode``, and infer.py's
``codebook_hard`` writing the same files. A file decodes from itself and the named model alone."""

from __future__ import annotations

import csv
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


def same_but_input_format(ours, theirs) -> bool:
    """``recon encode`` records the input's format; infer.py's files (same payload) do not."""
    strip = lambda c: Container({k: v for k, v in c.header.items() if k not in INPUT_FORMAT}, c.payload)  # noqa: E731
    return strip(ours) == theirs and (ours.header["input_sample_rate"], ours.header["input_channels"]) == (16000, 1)


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
        assert same_but_input_format(ours, theirs)
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
        assert same_but_input_format(ours, theirs) and ours.header["stages"] == 2 and ours.header["model"]["codebook"] != loads(
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
        assert same_but_input_format(ours, theirs) and ours.header["noise"] == "recon-counter-v1" and (ours.header["steps"], ours.header["K"]) == (6, 64)
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
