"""Codec files that are valid but hostile: a correct CRC only proves that some writer wrote the
bytes. Each crafted file below costs ``recon decode`` and ``recon info`` one line on stderr naming
it, the other files go on (exit status 1), and refusing it allocates little (the header's claims
are checked before anything is sized by them)."""

from __future__ import annotations

import json
import math
import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
import soundfile as sf
import torch

from recon import cli
from recon.codec import codebook_container, decode_container
from recon.container import dumps, loads
from recon.lit import load_inference_codebook

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo" / "codebook-tiny.ckpt"
SEGMENT = 163840
DELETE = object()


def craft(header, payload: bytes = b"", raw_json: bytes | None = None) -> bytes:
    """A recon container written by hand (no schema on the way), with a correct CRC."""
    text = raw_json if raw_json is not None else json.dumps(header).encode()  # NaN stays NaN, as a foreign writer may write it
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = deflater.compress(text) + deflater.flush()
    body = struct.pack("<4sHI", b"RECN", 1, len(packed)) + packed + struct.pack("<Q", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.fixture(scope="module")
def ranged_ckpt(tmp_path_factory) -> Path:
    """The demo codebook with skewed code frequencies, so that indices are range-coded under a prior."""
    checkpoint = torch.load(DEMO_CKPT, weights_only=False, map_location="cpu")
    checkpoint["state_dict"]["quantizer.code_frequency"] = 1e4 * torch.softmax(torch.linspace(8, 0, 1024), 0)
    path = tmp_path_factory.mktemp("ckpt") / "ranged.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def models(ranged_ckpt):
    return load_inference_codebook(str(ranged_ckpt))


@pytest.fixture(scope="module")
def good(models) -> dict[str, bytes]:
    """Two honest 1 s files (one segment of 1.28 s): fixed-rate and range-coded indices."""
    backbone, quantizer = models
    codes = torch.multinomial(quantizer.code_probabilities(1)[0], 32 * 16, replacement=True,
                              generator=torch.Generator().manual_seed(0)).reshape(32, 16)
    ranged = codebook_container([codes], [20480], 16000, quantizer, backbone)
    fixed = codebook_container([codes], [20480], 16000, quantizer, backbone, entropy=False)
    assert (ranged.header["coding"], fixed.header["coding"]) == ("categorical", "fixed")
    return {"fixed": dumps(fixed), "ranged": dumps(ranged)}


def _changed(data: bytes, changes: dict, payload: bytes | None = None) -> bytes:
    container = loads(data)
    header = {k: v for k, v in {**container.header, **changes}.items() if v is not DELETE}
    return craft(header, container.payload if payload is None else payload)


DDCM = {"codec": "ddcm", "sample_rate": 16000, "num_samples": 16000, "layout": [SEGMENT, 20480], "level": 1.0,
        "model": {"decoder": "0", "unet": "0", "conditioning": "0"}, "steps": 6, "K": 64, "seed": 3, "prompt": "",
        "guidance_scale": 7.5, "scaling_factor": 0.41, "noise": "recon-counter-v1"}
BIG = '{"codec":"codebook","pad":"' + "a" * 20_000_000 + '"}'

# name: (base file, header changes, payload (None: the base's), reason in the error line, refused by info too)
# Rows that only the model can judge (its layout, code count and stages, the payload its latent grid
# and prior need) are refused by decode; info reads no model and prints their header.
ROWS = {
    "layout_zero_quantum": ("fixed", {"layout": [SEGMENT, 0]}, None, "layout", True),
    "stages_missing": ("fixed", {"stages": DELETE}, None, "lacks stages", True),
    "num_samples_string": ("fixed", {"num_samples": "16000"}, None, "num_samples", True),
    "num_samples_zero": ("fixed", {"num_samples": 0}, None, "num_samples", True),
    "num_samples_negative": ("fixed", {"num_samples": -5}, None, "num_samples", True),
    "num_samples_bool": ("fixed", {"num_samples": True}, None, "num_samples", True),
    "num_samples_ten_days": ("fixed", {"num_samples": 16000 * 86400 * 10}, None, "num_samples", True),
    "categorical_500_segments": ("ranged", {"num_samples": 500 * SEGMENT}, bytes(8), "cannot hold 2048000 indices", False),
    "header_inflates_to_20_mb": (None, BIG, None, "inflates past 64 KiB", True),
    "header_nested_deep": (None, "[" * 20_000 + "]" * 20_000, None, "not JSON", True),
    "header_not_an_object": (None, "[1, 2]", None, "not a JSON object", True),
    "level_nan": ("fixed", {"level": math.nan}, None, "level", True),
    "level_infinite": ("fixed", {"level": math.inf}, None, "level", True),
    "sample_rate_absurd": ("fixed", {"sample_rate": 10**9}, None, "sample_rate", True),
    "codec_unknown": ("fixed", {"codec": "mp3"}, None, "codec", True),
    "coding_unknown": ("fixed", {"coding": "huffman"}, None, "coding", True),
    "model_not_a_dict": ("fixed", {"model": "abc"}, None, "model", True),
    "field_unknown": ("fixed", {"eta": 0.5}, None, "unknown field(s) eta", True),
    "stages_zero": ("fixed", {"stages": 0}, None, "stages", True),
    "stages_beyond_the_codebook": ("fixed", {"stages": 3}, None, "3 residual stages", False),
    "layout_huge": ("fixed", {"layout": [2000 * 20480, 20480]}, None, "segments", False),
    "codes_other_than_the_codebook": ("fixed", {"codes": 64}, None, "64 codes", False),
    "fixed_payload_short": ("fixed", {"num_samples": 500 * SEGMENT}, None, "payload of 640 bytes", False),
    "ddcm_payload_short": (None, DDCM, bytes(3), "ddcm payload of 3 bytes", True),
    "ddcm_k_not_a_power_of_two": (None, {**DDCM, "K": 100}, bytes(4), "K", True),
}


@pytest.fixture(scope="module")
def hostile(good, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, (base, changes, payload, _, _) in ROWS.items():
        if base is not None:
            data = _changed(good[base], changes, payload)
        elif isinstance(changes, str):
            data = craft(None, b"", raw_json=changes.encode())
        else:
            data = craft(changes, payload)
        (folder / f"{name}.recn").write_bytes(data)
    (folder / "good.recn").write_bytes(good["ranged"])
    return folder


def _error_lines(err: str) -> dict[str, str]:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    names = [re.match(r"error: ([^:]+)\.recn: ", line).group(1) for line in lines]
    assert len(names) == len(set(names)), "more than one line for a file"
    return dict(zip(names, lines))


def test_decode_refuses_each_hostile_file_in_one_line_and_decodes_the_rest(hostile, ranged_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["decode", str(hostile), "--ckpt", str(ranged_ckpt), "--out", str(out), "--device", "cpu", "--quiet"])
    errors = _error_lines(capsys.readouterr().err)
    assert code == 1 and set(errors) == set(ROWS)
    for name, (*_, reason, _) in ROWS.items():
        assert reason in errors[name], errors[name]
        assert not (out / f"{name}.wav").exists()
    wav, rate = sf.read(str(out / "good.wav"))
    assert rate == 16000 and wav.shape == (16000,)


def test_info_refuses_what_the_header_alone_shows(hostile, capsys):
    code = cli.main(["info", str(hostile)])
    captured = capsys.readouterr()
    errors = _error_lines(captured.err)
    printed = {json.loads(line)["file"].removesuffix(".recn") for line in captured.out.splitlines()}
    assert code == 1
    assert set(errors) == {name for name, row in ROWS.items() if row[-1]}
    assert printed == {name for name, row in ROWS.items() if not row[-1]} | {"good"}
    for name in errors:
        assert ROWS[name][3] in errors[name], errors[name]


def test_refusing_a_hostile_file_allocates_little(hostile, models):
    """Reading and checking each file (what decode does before decoding) peaks under 2 MB of Python
    and numpy memory: a 20 KB header does not inflate to 20 MB, 8 bytes do not decode to 2 million
    indices."""
    backbone, quantizer = models
    decode_container(loads((hostile / "good.recn").read_bytes()), backbone, quantizer)  # fingerprints are hashed once, outside
    for name in ROWS:
        data = (hostile / f"{name}.recn").read_bytes()
        tracemalloc.start()
        try:
            with pytest.raises(ValueError):
                decode_container(loads(data), backbone, quantizer)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak - len(data) < 2 << 20, f"{name}: {peak} bytes"


def test_an_unexpected_failure_costs_one_line_and_an_interrupt_still_stops(good, ranged_ckpt, tmp_path, monkeypatch, capsys):
    import recon.codec

    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.recn").write_bytes(good["fixed"])
    decode = recon.codec.decoded_windows

    def failing(container, *args, path="", **kwargs):
        if path == "a.recn":
            raise RuntimeError("out of memory\nwhile decoding")
        return decode(container, *args, path=path, **kwargs)

    monkeypatch.setattr(recon.codec, "decoded_windows", failing)
    common = ["--ckpt", str(ranged_ckpt), "--device", "cpu", "--quiet"]
    assert cli.main(["decode", str(folder), "--out", str(tmp_path / "out"), *common]) == 1
    assert _error_lines(capsys.readouterr().err) == {"a": "error: a.recn: RuntimeError: out of memory while decoding"}
    assert (tmp_path / "out" / "b.wav").exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recon.codec, "decoded_windows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["decode", str(folder), "--out", str(tmp_path / "again"), *common])
