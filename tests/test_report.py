"""recon.report: self-contained HTML report, spectrogram PNGs, offline W&B logging."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from recon.outputs import RESULT_NAMES
from recon.report import (
    MEDIA_DIR,
    SPEC_HEIGHT,
    SPEC_MAX_WIDTH,
    read_errors,
    read_metrics,
    read_summary,
    spectrogram_png,
    wav_bytes,
    write_html_report,
)
from recon.wandb_table import log_to_wandb

SR = 16000
FILES = ["a.wav", "sub/b.wav", "sub/deeper/c.flac"]  # metrics.csv "file" column (original names)
VARIANTS = ["vae", "codebook", "text2audio"]
METRICS = ["log_mel_db", "mel_multiscale", "mr_stft", "lsd_db", "si_sdr_db", "snr_db", "hf_retention",
           "pesq_wb", "stoi", "latent_snr_db", "bitrate_bps"]  # fmt: skip


def _signal(seconds: float, freq: float, seed: int, noise: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)).astype(np.float32)


def _write(path: Path, wav: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, SR, subtype="FLOAT")


def make_fake_out(root: Path, base_seconds: float = 0.6) -> Path:
    """A variant-runner output folder with FILES x VARIANTS short tones, metrics, summary, errors."""
    out = root / "OUT"
    rows = []
    for i, file in enumerate(FILES):
        rel = Path(file).with_suffix(".wav")
        ref = _signal(base_seconds + 0.2 * i, 300.0 + 200 * i, seed=i)
        _write(out / "input" / rel, ref)
        for j, variant in enumerate(VARIANTS):
            est = ref + 0.05 * (j + 1) * np.random.default_rng(10 * i + j).standard_normal(ref.size).astype(np.float32)
            _write(out / variant / rel, est)
            row = {"file": file, "variant": variant, "duration_s": f"{ref.size / SR:.3f}", "seconds": "0.5"}
            for k, m in enumerate(METRICS):
                row[m] = f"{0.1 * (k + 1) + j:.4f}"
            row["pesq_wb"] = "nan" if variant == "text2audio" else "3.1"
            row["latent_snr_db"] = "" if variant == "text2audio" else "12.5"
            row["bitrate_bps"] = "4000" if variant == "codebook" else ""
            rows.append(row)
    with open(out / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "variant", "duration_s", "seconds", *METRICS])
        w.writeheader()
        w.writerows(rows)
    summary = {
        "variants": {
            v: {
                "description": f"{v} <b>desc</b>",
                "is_reconstruction": v != "text2audio",
                "bitrate_bps": 4000.0 if v == "codebook" else None,
                "bitrate_label": "4.0 kbps" if v == "codebook" else "n/a (not a bitstream)",
                "files": len(FILES),
                "seconds_per_clip": 0.5,
                "real_time_factor": 0.6,
                "mean": {m: 1.0 + j for m in METRICS if m != "bitrate_bps"},
                "median": {m: 0.9 + j for m in METRICS if m != "bitrate_bps"},
            }
            for j, v in enumerate(VARIANTS)
        },
        "run": {"checkpoint": "runs/x.ckpt", "steps": 50, "nested": {"a": [1, 2]}},
    }
    (out / "summary.json").write_text(json.dumps(summary))
    with open(out / "errors.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "reason"])
        w.writerow(["bad.wav", "<script>alert(1)</script> unreadable"])
    return out


@pytest.fixture()
def out_dir(tmp_path) -> Path:
    return make_fake_out(tmp_path)


BIG_VARIANTS = [
    "vae_mode", "vae_sample", "vae_clamped", "vae_highfreq", "vae_mixed", "vocoder_only", "griffinlim",
    "codebook_hard", "codebook_soft", "codebook_rvq@1", "codebook_rvq@2", "codebook_rvq@3", "codebook_rvq@4",
    "codebook_sdedit@0.2", "codebook_sdedit@0.5", "ddcm_noise@T3-K16", "ddcm_noise@T5-K16", "ddcm_noise@T10-K64",
    "ddcm_noise@T20-K256", "text2audio",
]  # fmt: skip


def make_big_out(root: Path, n_files: int = 50, seconds: float = 0.5, weights: str = "random") -> Path:
    """A run of ``n_files`` x 20 variants as infer.py writes it, metrics made up but plausible: the
    neural variants near-silent (PESQ/STOI NaN), ambience files without an utterance, two errors."""
    out = root / "BIG"
    rng = np.random.default_rng(0)
    files = [f"{kind}/clip_{i:02d}.flac" for i in range(n_files) for kind in [("speech", "music", "ambience")[i % 3]]]
    rows = []
    for i, file in enumerate(files):
        rel = Path(file).with_suffix(".wav")
        ref = _signal(seconds, 200.0 + 10 * i, seed=i)
        _write(out / "input" / rel, ref)
        for j, variant in enumerate(BIG_VARIANTS):
            neural = variant != "griffinlim"
            est = (1e-3 if neural else 0.9) * ref + (1e-5 if neural else 0.01) * rng.standard_normal(ref.size).astype(np.float32)
            _write(out / variant / rel, est)
            silent, no_speech = neural, not file.startswith("speech")
            rows.append({
                "file": file, "variant": variant, "duration_s": seconds, "seconds": 0.01 * (j + 1),
                "log_mel_db": 60 + rng.normal(0, 5) if neural else 8.5, "mel_multiscale": 17 + rng.normal(), "mr_stft": 7.5 + rng.normal(),
                "lsd_db": 65 + rng.normal(0, 5), "si_sdr_db": -29 + rng.normal(), "snr_db": rng.normal(0, 1e-5) if neural else 12.0,
                "hf_retention": 2e-6 if neural else 0.8, "pesq_wb": "nan" if silent or no_speech else 2.1 + 0.01 * j,
                "stoi": "nan" if silent else 0.9, "latent_snr_db": 10.0 + j if variant.startswith("codebook") else "",
                "mel_db_mae": 30 + rng.normal(0, 3), "mel_db_mae_low": 25 + rng.normal(), "mel_db_mae_high": 33 + rng.normal(),
                "stft_mag_mse": abs(rng.normal(2, 1)), "spectral_centroid_l1": 900 + rng.normal(0, 50),
                "waveform_corr": rng.normal(0, 0.01), "envelope_rms_l1": 0.03 + abs(rng.normal(0, 0.01)),
                "bitrate_bps": 4000 * (j % 4 + 1) if variant.startswith(("codebook_hard", "codebook_rvq", "ddcm")) else "",
                "measured_bps": "", "notes": "clamped 3 values" if variant == "vae_clamped" else "",
            })  # fmt: skip
    columns = list(rows[0])
    with open(out / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    summary = {"variants": {}, "run": {"ckpt": "checkpoints/demo/codebook-tiny.ckpt", "backbone_source": "random:tiny",
                                       "backbone_weights": weights, "variants": "all", "report_max_files": 12}}  # fmt: skip
    for variant in BIG_VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        mean = {}
        for m in columns[4:-3]:
            values = [float(r[m]) for r in mine if r[m] != "" and r[m] != "nan"]
            if values:
                mean[m] = float(np.mean(values))
        summary["variants"][variant] = {
            "description": f"{variant}: what it does, in one line of text",
            "is_reconstruction": variant != "text2audio",
            "bitrate_bps": mine[0]["bitrate_bps"] or None,
            "bitrate_label": f"{mine[0]['bitrate_bps'] / 1000:.1f} kbps" if mine[0]["bitrate_bps"] else "n/a (not a bitstream)",
            "files": len(mine), "seconds_per_clip": 0.2, "real_time_factor": 2.5,
            "mean": mean, "median": mean,
        }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))
    with open(out / "errors.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "variant", "reason"])
        w.writerow(["broken.wav", "", "unreadable: not an audio file"])
        w.writerow([files[1], "codebook_sdedit@0.5", "RuntimeError: CUDA out of memory"])
    return out


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _parse(text: str) -> list[tuple[str, dict]]:
    p = _Collect()
    p.feed(text)
    p.close()
    return p.tags


class _Table(HTMLParser):
    """The rows of one table (by id, or the first) as lists of cells: {"text", "class", "title"}."""

    def __init__(self, table_id: str | None):
        super().__init__()
        self.table_id, self.depth, self.rows, self.cell, self.done = table_id, 0, [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and (self.depth or (not self.done and self.table_id in (None, attrs.get("id")))):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = {"text": "", "class": attrs.get("class") or "", "title": attrs.get("title") or ""}
            self.rows[-1].append(self.cell)
        elif self.cell is not None and tag == "br":
            self.cell["text"] += " "

    def handle_endtag(self, tag):
        if self.depth and tag == "table":
            self.depth -= 1
            self.done = self.depth == 0
        elif tag in ("td", "th"):
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


def _table(text: str, table_id: str | None = None) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """Header texts and ``{row name: {header: cell}}`` of the table with ``table_id`` (default: the first)."""
    parser = _Table(table_id)
    parser.feed(text)
    header, *body = parser.rows
    names = [" ".join(c["text"].split()) for c in header]
    return names, {row[0]["text"].split()[0]: dict(zip(names, row)) for row in body}


def _media_sources(text: str) -> tuple[list[str], list[str]]:
    tags = _parse(text)
    return [a["src"] for t, a in tags if t == "audio"], [a["src"] for t, a in tags if t == "img"]


def _set_run(out: Path, **run) -> None:
    summary = json.loads((out / "summary.json").read_text())
    summary["run"].update(run)
    (out / "summary.json").write_text(json.dumps(summary))


def test_read_helpers(out_dir):
    rows = read_metrics(out_dir)
    assert len(rows) == len(FILES) * len(VARIANTS)
    r = rows[0]
    assert r["file"] == "a.wav" and r["variant"] == "vae"
    assert isinstance(r["log_mel_db"], float) and r["bitrate_bps"] is None
    t2a = [r for r in rows if r["variant"] == "text2audio"][0]
    assert math.isnan(t2a["pesq_wb"]) and t2a["latent_snr_db"] is None
    assert read_summary(out_dir)["variants"]["text2audio"]["is_reconstruction"] is False
    assert read_errors(out_dir)[0]["file"] == "bad.wav"
    empty = out_dir.parent / "empty"
    empty.mkdir()
    assert read_metrics(empty) == [] and read_errors(empty) == []
    assert read_summary(empty) == {"variants": {}, "run": {}}


def test_html_report_links_the_wavs_and_writes_images_beside_it(out_dir):
    path = write_html_report(out_dir, max_files=12)
    assert path == out_dir / "report.html" and path.is_file()
    assert not list(out_dir.glob(".report.html.*"))  # no temp file left behind
    text = path.read_text(encoding="utf-8")
    for tag, attrs in _parse(text):
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert not value.startswith(("http://", "https://", "//", "data:")), (tag, value[:80])
    assert "<script" not in text.lower().replace("&lt;script", "")  # no JS at all

    audios, images = _media_sources(text)
    assert len(audios) == len(images) == len(FILES) * (len(VARIANTS) + 1)
    # Audio: the wavs the runner wrote, relative to OUT/, so the folder can move as a whole.
    assert audios[0] == "input/a.wav" and "sub/deeper/c.wav" in audios[-1]
    assert all((out_dir / urllib.parse.unquote(src)).is_file() for src in audios)
    # Images: one folder next to the page, PNGs of the spectrogram the page describes.
    assert all(src.startswith(f"{MEDIA_DIR}/") and (out_dir / urllib.parse.unquote(src)).is_file() for src in images)
    assert f"{MEDIA_DIR}/" in RESULT_NAMES  # the runner's --overwrite and manifest know the folder
    first = out_dir / urllib.parse.unquote(images[0])
    ref, _ = sf.read(str(out_dir / "input" / "a.wav"), dtype="float32")
    assert first.read_bytes() == spectrogram_png(ref)
    assert "left out" not in text

    # escaping of strings from files
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;desc&lt;/b&gt;" in text
    assert "not a reconstruction" in text and "sub/deeper/c.flac" in text and "runs/x.ckpt" in text


def test_html_report_embed_is_self_contained_flac(out_dir):
    write_html_report(out_dir, max_files=12)  # a linked report first: its images must not linger
    assert (out_dir / MEDIA_DIR).is_dir()
    text = write_html_report(out_dir, max_files=12, embed=True).read_text(encoding="utf-8")
    assert not (out_dir / MEDIA_DIR).exists()
    audios, images = _media_sources(text)
    assert len(audios) == len(images) == len(FILES) * (len(VARIANTS) + 1)
    assert all(src.startswith("data:audio/flac;base64,") for src in audios)
    assert all(src.startswith("data:image/png;base64,") for src in images)

    # first audio is the input of the first file: lossless 16-bit, so it decodes to the original
    payload = base64.b64decode(audios[0].split(",", 1)[1])
    assert sf.info(io.BytesIO(payload)).format == "FLAC" and sf.info(io.BytesIO(payload)).subtype == "PCM_16"
    decoded, sr = sf.read(io.BytesIO(payload), dtype="float32")
    original, _ = sf.read(str(out_dir / "input" / "a.wav"), dtype="float32")
    assert sr == SR and decoded.shape == original.shape
    assert np.max(np.abs(decoded - original)) <= 1.0 / 32768 + 1e-6
    assert len(payload) < len(wav_bytes(original))  # compressed
    assert Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1]))).format == "PNG"


def test_html_report_order_summary_first_then_errors_then_collapsed_settings(out_dir):
    text = write_html_report(out_dir).read_text(encoding="utf-8")
    positions = [text.index(marker) for marker in ('id="backbone"', 'id="summary"', 'id="errors"', "<details><summary><b>Run settings", "<details class=file>")]
    assert positions == sorted(positions)
    assert "runs/x.ckpt" in text.split("<details><summary><b>Run settings", 1)[1].split("</details>", 1)[0]
    # every file is a collapsed section, all of them with a metric grid
    assert text.count("<details class=file>") == len(FILES) and "<details class=file open" not in text
    assert text.count("<table class=grid>") == len(FILES)


@pytest.mark.parametrize(
    "weights, expected",
    [
        ("random", ["Random weights", "meaningless", "noise", "random:tiny"]),
        ("small", ["small stand-in for", "cvssp/audioldm2", "synthetic audio", "pipeline works"]),
        ("pretrained", ["cvssp/audioldm2", "pretrained"]),
        (None, ["not recorded"]),
    ],
)
def test_html_report_banner_names_the_backbone(out_dir, weights, expected):
    source = {"random": "random:tiny", "small": "checkpoints/small-backbone", "pretrained": "cvssp/audioldm2"}.get(weights)
    if weights is not None:
        _set_run(out_dir, backbone_source=source, backbone_weights=weights)
    text = write_html_report(out_dir).read_text(encoding="utf-8")
    banner = text.split('id="backbone">', 1)[1].split("</div>", 1)[0]
    assert f'class="banner {weights or "unknown"}"' in text
    for words in expected:
        assert words in banner, (words, banner)
    if weights != "random":
        assert "meaningless" not in banner


def test_summary_table_units_formats_and_best_marks(out_dir):
    summary = json.loads((out_dir / "summary.json").read_text())
    means = {v: summary["variants"][v]["mean"] for v in VARIANTS}
    means["vae"].update(log_mel_db=12.345, snr_db=-0.04, hf_retention=0.0004, si_sdr_db=3.0)
    means["codebook"].update(log_mel_db=9.87, snr_db=2.0, hf_retention=1.3, si_sdr_db=float("inf"))
    means["text2audio"].update(log_mel_db=1.0, snr_db=30.0, hf_retention=1.0)  # better, but not a reconstruction
    del means["codebook"]["latent_snr_db"]
    (out_dir / "summary.json").write_text(json.dumps(summary))
    header, rows = _table(write_html_report(out_dir).read_text(encoding="utf-8"), "summary")

    assert list(rows) == VARIANTS
    assert header[:3] == ["variant", "bitrate kbps", "log-mel dB ↓"] and "SNR dB ↑" in header and "PESQ MOS ↑" in header
    assert "HF kept × →1" in header and "bitrate_bps" not in " ".join(header)
    cell = lambda v, h: rows[v][h]  # noqa: E731
    # dB to one decimal, "-0.0" read as 0.0; tiny ratios as such; not applicable as a dash
    assert cell("vae", "log-mel dB ↓")["text"] == "12.3" and cell("vae", "SNR dB ↑")["text"] == "0.0"
    assert cell("vae", "HF kept × →1")["text"] == "<0.001"
    assert cell("codebook", "SI-SDR dB ↑")["text"] == "∞"
    assert cell("codebook", "latent SNR dB ↑")["text"] == "—"
    assert cell("codebook", "bitrate kbps")["text"] == "4.0" and cell("vae", "bitrate kbps")["text"] == "—"
    # the best of each column among the reconstructions only; text2audio is never marked
    best = lambda h: sorted(v for v in VARIANTS if "best" in rows[v][h]["class"])  # noqa: E731
    assert best("log-mel dB ↓") == ["codebook"]  # lower is better
    assert best("SNR dB ↑") == ["codebook"]  # higher is better
    assert best("HF kept × →1") == ["codebook"]  # 1.3 is nearer 1 than 0.0004
    assert "median" in cell("vae", "log-mel dB ↓")["title"]


def test_number_formats():
    from recon.report import COLUMNS, Column, _text

    db, ratio = COLUMNS["snr_db"], COLUMNS["hf_retention"]
    assert [_text(v, db) for v in (12.345, -0.04, -3.25, 0.0)] == ["12.3", "0.0", "-3.2", "0.0"]
    assert [_text(v, ratio) for v in (0.8, 2e-6, -2e-6, 0.004, 0.0)] == ["0.80", "<0.001", ">−0.001", "0.004", "0.00"]
    assert [_text(v, ratio) for v in (float("nan"), None, float("inf"), 123456.0)] == ["n/a", "—", "∞", "1.2e5"]
    assert _text("text", Column("x")) == "—"


def _near_silent_out(root: Path) -> Path:
    """make_fake_out, with vae's output of a.wav near-silent and its PESQ/STOI NaN as the runner writes them."""
    out = make_fake_out(root, base_seconds=1.0)
    ref, _ = sf.read(str(out / "input" / "a.wav"), dtype="float32")
    _write(out / "vae" / "a.wav", 1e-3 * ref)  # 60 dB down
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if row["file"] == "a.wav" and row["variant"] == "vae":
            row["pesq_wb"] = row["stoi"] = "nan"
    with open(out / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_undefined_pesq_stoi_read_na_with_the_reason(tmp_path):
    out = _near_silent_out(tmp_path)
    text = write_html_report(out).read_text(encoding="utf-8")
    _, rows = _table(text, "summary")
    # vae: PESQ/STOI defined for 2 of 3 files: the mean says so
    pesq = rows["vae"]["PESQ MOS ↑"]
    assert "2/3" in pesq["text"] and "near-silent" in pesq["title"] and "over 2 of 3 files" in pesq["title"]
    # the file's own grid: n/a, with the reason on hover
    _, grid = _table(text.split("<code>a.wav</code>", 1)[1])
    for name in ("PESQ MOS ↑", "STOI 0-1 ↑"):
        cell = grid["vae"][name]
        assert cell["text"] == "n/a" and "estimate is near-silent (60 dB below the reference" in cell["title"]
    assert grid["codebook"]["PESQ MOS ↑"]["text"] == "3.10" and not grid["codebook"]["PESQ MOS ↑"]["title"]
    assert "Why PESQ/STOI/ViSQOL are n/a (5 cells)" in text  # vae's 2, and the fixture's NaN PESQ of text2audio x 3 files


def test_html_report_max_files_and_missing(out_dir):
    (out_dir / "vae" / "sub" / "b.wav").unlink()  # a variant output that was never written
    text = write_html_report(out_dir, max_files=2).read_text(encoding="utf-8")
    tags = _parse(text)
    assert sum(t == "audio" for t, _ in tags) == 2 * (len(VARIANTS) + 1) - 1
    assert "1 file(s) left out of the players" in text
    assert "missing or unreadable: vae/sub/b.wav" in text
    # metrics for every file, players only for the first two
    assert text.count("<table class=grid>") == len(FILES)
    assert text.count("metrics only") == 1
    # a folder with nothing in it still gives a valid page
    empty = out_dir.parent / "empty"
    empty.mkdir()
    assert "no variants" in write_html_report(empty).read_text()


def test_spectrogram_png_size_and_orientation():
    png = spectrogram_png(_signal(1.0, 200.0, seed=0, noise=0.0))
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB"
    assert img.size == (100, SPEC_HEIGHT)  # 16000 samples / hop 160 frames

    # long clips are limited in width; odd lengths and very short clips work
    assert Image.open(io.BytesIO(spectrogram_png(np.zeros(SR * 12, np.float32)))).size == (SPEC_MAX_WIDTH, SPEC_HEIGHT)
    assert Image.open(io.BytesIO(spectrogram_png(np.zeros(1234, np.float32)))).size[0] == 8
    assert Image.open(io.BytesIO(spectrogram_png(np.zeros(10, np.float32)))).size[0] >= 1

    def brightness(wav):
        a = np.asarray(Image.open(io.BytesIO(spectrogram_png(wav))).convert("L"), dtype=np.float64)
        return a[: SPEC_HEIGHT // 4].mean(), a[-SPEC_HEIGHT // 4 :].mean()

    t = np.arange(SR) / SR
    high = sum(0.1 * np.sin(2 * np.pi * f * t) for f in range(5000, 8000, 250)).astype(np.float32)
    low = sum(0.1 * np.sin(2 * np.pi * f * t) for f in range(50, 400, 50)).astype(np.float32)
    high_top, high_bottom = brightness(high)
    low_top, low_bottom = brightness(low)
    silent_top, _ = brightness(np.zeros(SR, np.float32))
    assert high_top > low_top + 40  # energy at 5-8 kHz lights up the top rows
    assert low_bottom > high_bottom + 40  # low frequencies are at the bottom
    assert abs(low_top - silent_top) < 10  # a low tone leaves the top near the floor colour

    # the colour range is fixed: a quieter copy is darker, not rescaled
    loud = np.asarray(Image.open(io.BytesIO(spectrogram_png(_signal(1.0, 200.0, 0)))).convert("L"), float).mean()
    quiet = np.asarray(Image.open(io.BytesIO(spectrogram_png(0.01 * _signal(1.0, 200.0, 0)))).convert("L"), float).mean()
    assert loud > quiet + 5

    import torch  # tensors and [channels, samples] work too

    assert spectrogram_png(torch.from_numpy(_signal(0.5, 300.0, 1))[None]) == spectrogram_png(_signal(0.5, 300.0, 1))


@pytest.fixture()
def wandb_env(tmp_path, monkeypatch):
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_DATA_DIR", "wandb_data"), ("WANDB_CACHE_DIR", "wandb_cache"),
                     ("WANDB_CONFIG_DIR", "wandb_config"), ("WANDB_ARTIFACT_DIR", "wandb_artifacts")):  # fmt: skip
        d = tmp_path / sub
        d.mkdir()
        monkeypatch.setenv(var, str(d))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    return tmp_path


def test_log_to_wandb_offline(out_dir, wandb_env):
    run_dir = log_to_wandb(out_dir, mode="offline", run_name="test-run", max_files=2)
    assert run_dir is not None
    run_dir = Path(run_dir)
    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-")
    assert out_dir in run_dir.parents
    assert list(run_dir.glob("*.wandb")) and list(run_dir.glob("*.wandb"))[0].stat().st_size > 0

    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in run_dir.glob("files/media/table/*.table.json")}
    recon = tables["reconstructions"]
    cols = recon["columns"]
    assert cols[:2] == ["file", "variant"] and cols[-3:] == ["input_audio", "output_audio", "spectrogram"]
    assert cols[2:-3] == METRICS
    assert len(recon["data"]) == len(FILES) * len(VARIANTS)
    by_file = {}
    for row in recon["data"]:
        by_file.setdefault(row[0], []).append(row)
    # media for the first two files only
    assert all(r[-3:] == ["Audio", "Audio", "Image"] for f in FILES[:2] for r in by_file[f])
    assert all(r[-3:] == [None, None, None] for r in by_file[FILES[2]])
    assert len(tables["summary"]["data"]) == len(VARIANTS)
    # the one codec variant (4 kbps nominal) is a point, alone on the front of each distortion
    rate = tables["rate"]
    assert rate["columns"] == ["variant", "bps", "measured", "log_mel_db", "pareto/log_mel_db"]
    assert rate["data"] == [["codebook", 4000.0, False, 2.0, True]]


def test_log_to_wandb_leaves_an_open_run_alone(out_dir, wandb_env):
    import wandb

    outer = wandb.init(project="outer", mode="offline", dir=str(wandb_env / "outer"), reinit="create_new")
    try:
        run_dir = log_to_wandb(out_dir, mode="offline", max_files=0)
        assert Path(run_dir) != Path(outer.settings.sync_dir)
        outer.log({"still_alive": 1.0})  # the caller's run was neither returned nor finished
    finally:
        outer.finish()


def test_log_to_wandb_off_writes_nothing(out_dir, wandb_env):
    before = sorted(p for p in wandb_env.rglob("*"))
    assert log_to_wandb(out_dir, mode="off") is None
    assert sorted(p for p in wandb_env.rglob("*")) == before
    with pytest.raises(ValueError):
        log_to_wandb(out_dir, mode="disabled")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAPTOP = (1280, 900)

# Injected into a copy of the page (the report itself has no JS): measures the layout as Chromium
# lays it out and writes the numbers into the DOM, which --dump-dom prints.
MEASURE = """<script>(function () {
  var table = document.getElementById("summary"), banner = document.getElementById("backbone");
  var t = table.getBoundingClientRect(), b = banner.getBoundingClientRect(), style = getComputedStyle(banner);
  var out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({
    viewport_width: window.innerWidth, viewport_height: window.innerHeight,
    page_scroll_width: document.documentElement.scrollWidth,
    table_scroll_width: table.parentElement.scrollWidth, table_client_width: table.parentElement.clientWidth,
    table_right: t.right, table_top: t.top,
    banner_top: b.top, banner_height: b.height, banner_visible: style.display !== "none" && style.visibility !== "hidden",
  });
  document.body.appendChild(out);
})();</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={LAPTOP[0]},{LAPTOP[1]}", *args,
    ]  # fmt: skip
    home = tmp_path / "chromium-home"  # chromium writes crash reports and dconf under HOME / XDG dirs
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish within 90 s")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not on PATH (apt-get install chromium to enable)")
def test_report_reads_at_laptop_width_in_headless_chromium(tmp_path):
    """50 files x 20 variants of random weights at 1280 px: the banner and the summary table are in
    the first screen, the table needs no sideways scrolling, and the screenshot shows both."""
    out = make_big_out(tmp_path, n_files=50)
    report = write_html_report(out, max_files=2)
    assert report.stat().st_size < 1_000_000  # text only: media are linked

    measured_page = out / "measure.html"  # beside the report, so its relative links resolve alike
    measured_page.write_text(report.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", measured_page.resolve().as_uri()).stdout
    found = re.search(r'<pre id="measured">([^<]*)</pre>', dom)
    assert found, dom[-2000:]
    m = json.loads(html.unescape(found.group(1)))
    assert m["viewport_width"] == LAPTOP[0]
    assert m["table_scroll_width"] <= m["table_client_width"] and m["table_right"] <= LAPTOP[0], m  # no sideways scroll
    assert m["page_scroll_width"] <= LAPTOP[0], m
    assert m["banner_visible"] and m["banner_height"] > 20 and m["banner_top"] < m["viewport_height"] / 4, m
    assert m["table_top"] < m["viewport_height"] / 2, m  # the summary starts in the first screen

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", report.resolve().as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert img.shape[:2] == (LAPTOP[1], LAPTOP[0])
    assert img.std() > 10  # not a blank page
    # the random-weights banner's red background (#f8d7da) is on screen, near the top
    red = (np.abs(img - np.array([0xF8, 0xD7, 0xDA])).max(axis=2) <= 3).nonzero()[0]
    assert red.size > 5000 and red.min() < LAPTOP[1] / 4
    # the marked best cells (#d4edda) of the summary table are on screen too
    assert (np.abs(img - np.array([0xD4, 0xED, 0xDA])).max(axis=2) <= 3).sum() > 500


# --- the evaluation view: rate against distortion, hardest files and their tags ---------------------

from recon import evaluation as E  # noqa: E402


def _row(file: str, **metrics) -> dict:
    return {"file": file, "variant": "v", **metrics}


def test_failure_tag_rules_on_crafted_rows():
    base = dict(mel_db_mae=4.0, mel_db_mae_low=4.0, mel_db_mae_high=4.0, stft_mag_mse=1.0, envelope_rms_l1=0.01)
    assert E.failure_tags(_row("a", **base)) == ["broadband"]
    assert E.failure_tags(_row("a", **{**base, "envelope_rms_l1": 0.021})) == ["envelope drift", "broadband"]
    assert E.failure_tags(_row("a", **{**base, "envelope_rms_l1": 0.02})) == ["broadband"]  # strictly above 0.02
    assert E.failure_tags(_row("a", **{**base, "mel_db_mae_high": 5.01})) == ["high-band loss"]  # > 1.25 x 4
    assert E.failure_tags(_row("a", **{**base, "mel_db_mae_high": 5.0})) == ["broadband"]
    assert E.failure_tags(_row("a", **{**base, "mel_db_mae_low": 5.01})) == ["low-band loss"]
    assert E.failure_tags(_row("a", mel_db_mae_low=float("nan"), mel_db_mae_high=9.0)) == []  # a rule without its metrics is silent
    # mel vs STFT: ranks among the variant's files; e is worst by mel and best by STFT
    rows = [_row(f, **{**base, "mel_db_mae": m, "stft_mag_mse": st}) for f, m, st in
            [("a", 1.0, 2.0), ("b", 2.0, 3.0), ("c", 3.0, 4.0), ("d", 4.0, 5.0), ("e", 5.0, 1.0)]]  # fmt: skip
    assert "mel vs STFT" in E.failure_tags(rows[4], rows)
    assert all("mel vs STFT" not in E.failure_tags(r, rows) for r in rows[:4])  # each one rank apart: 0.25 < 0.5
    three = [_row(f, mel_db_mae=m, stft_mag_mse=st) for f, m, st in [("a", 1.0, 3.0), ("b", 2.0, 2.0), ("c", 3.0, 1.0)]]
    assert all(E.failure_tags(r, three) == [] for r in three)  # opposite orders, but 3 files are too few to rank
    metric, hardest = E.hardest_files(rows, "v", count=2)
    assert metric == "mel_db_mae" and [r["file"] for r, _ in hardest] == ["e", "d"]
    assert "mel vs STFT" in hardest[0][1]


def test_pareto_front_and_rate_points():
    P = E.RatePoint
    pts = [P("a", 1000, True, 5.0), P("b", 2000, True, 4.0), P("c", 2000, True, 4.5), P("d", 4000, True, 4.0), P("e", 500, False, 9.0)]
    assert E.pareto_front(pts) == {"a", "b", "e"}  # c: b is as cheap and better; d: b is cheaper and as good
    higher = [P("x", 1000, True, 3.0), P("y", 2000, True, 2.0), P("z", 3000, True, 4.0)]
    assert E.pareto_front(higher, better="higher") == {"x", "z"}
    summary = {"variants": {
        "vae_mode": {"is_reconstruction": True, "bitrate_bps": None, "mean": {"log_mel_db": 1.0}},
        "codebook_hard": {"is_reconstruction": True, "bitrate_bps": 4000.0, "measured_bps": 3890.0, "mean": {"log_mel_db": 2.0}},
        "ddcm_noise@T5-K16": {"is_reconstruction": True, "bitrate_bps": 1.5, "mean": {"log_mel_db": 9.0}},
        "text2audio": {"is_reconstruction": False, "bitrate_bps": None, "mean": {"log_mel_db": 30.0}},
    }}  # fmt: skip
    points, left_out = E.rate_points(summary, "log_mel_db")
    assert {p.variant: (p.bps, p.measured) for p in points} == {"codebook_hard": (3890.0, True), "ddcm_noise@T5-K16": (1.5, False)}
    assert left_out == {"vae_mode": "no bitrate (not a codec)", "text2audio": "not a reconstruction"}


def test_report_shows_rate_distortion_with_front_and_tagged_hardest_files(tmp_path):
    out = make_big_out(tmp_path, n_files=6)
    summary = json.loads((out / "summary.json").read_text())
    text = write_html_report(out, max_files=0).read_text(encoding="utf-8")
    # one plot per distortion present: log-mel and mel_db_mae; one dot per codec variant in each
    svgs = re.findall(r"<svg class=rd.*?</svg>", text, flags=re.S)
    codecs = [v for v, d in summary["variants"].items() if d["bitrate_bps"]]
    assert len(svgs) == 2 and all(svg.count("<circle") == len(codecs) for svg in svgs)
    _, table = _table(text, "rate-table")
    assert set(table) == set(codecs)
    for metric, header in (("log_mel_db", "log-mel dB ↓"), ("mel_db_mae", "mel dB MAE dB ↓")):
        points, _ = E.rate_points(summary, metric)
        front = E.pareto_front(points)
        assert front and {v for v, row in table.items() if "★" in row[header]["text"]} == front
    left = re.search(r"Not plotted, no bitrate \(not a codec\): ([^<]*)\.</p>", text).group(1).split(", ")
    assert "vae_mode" in left and "codebook_soft" in left and "codebook_hard" not in left
    assert "Not plotted, not a reconstruction: text2audio" in text
    # hardest files: every reconstruction, with tags; the rules are stated on the page
    _, hardest = _table(text, "hardest-table")
    assert "text2audio" not in hardest and "codebook_hard" in hardest
    assert "envelope drift" in hardest["codebook_hard"]["files"]["text"]  # every made-up row drifts (> 0.03)
    for tag, rule in E.TAG_RULES.items():
        assert html.escape(rule, quote=True) in text
