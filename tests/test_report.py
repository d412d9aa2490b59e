"""recon.report: self-contained HTML report, spectrogram PNGs, offline W&B logging."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from recon.report import (
    SPEC_HEIGHT,
    SPEC_MAX_WIDTH,
    log_to_wandb,
    read_errors,
    read_metrics,
    read_summary,
    spectrogram_png,
    write_html_report,
)

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


def test_html_report_self_contained_and_complete(out_dir):
    path = write_html_report(out_dir, max_files=12)
    assert path == out_dir / "report.html" and path.is_file()
    assert not list(out_dir.glob(".report.html.*"))  # no temp file left behind
    text = path.read_text(encoding="utf-8")
    tags = _parse(text)

    for tag, attrs in tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert not value.startswith(("http://", "https://", "//")), (tag, value[:80])
    assert "<script" not in text.lower().replace("&lt;script", "")  # no JS at all
    media = [(t, a) for t, a in tags if t in ("audio", "img", "source")]
    assert media and all(a.get("src", "").startswith("data:") for _, a in media)

    audios = [a for t, a in tags if t == "audio"]
    images = [a for t, a in tags if t == "img"]
    assert len(audios) == len(FILES) * (len(VARIANTS) + 1)
    assert len(images) == len(audios)
    assert "left out" not in text

    # escaping of strings from files
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;desc&lt;/b&gt;" in text
    # summary table and non-reconstruction flag, nested paths, run settings
    assert "not a reconstruction" in text
    assert "4.0 kbps" in text and "n/a (not a bitstream)" in text
    assert "sub/deeper/c.flac" in text and "runs/x.ckpt" in text

    # first audio is the input of the first file: decode and compare with the original
    src = audios[0]["src"]
    assert src.startswith("data:audio/wav;base64,")
    decoded, sr = sf.read(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), dtype="float32")
    original, _ = sf.read(str(out_dir / "input" / "a.wav"), dtype="float32")
    assert sr == SR and decoded.shape == original.shape
    assert np.max(np.abs(decoded - original)) <= 1.0 / 32768 + 1e-6
    assert sf.info(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).subtype == "PCM_16"

    png = base64.b64decode(images[0]["src"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_html_report_max_files_and_missing(out_dir):
    (out_dir / "vae" / "sub" / "b.wav").unlink()  # a variant output that was never written
    text = write_html_report(out_dir, max_files=2).read_text(encoding="utf-8")
    tags = _parse(text)
    assert sum(t == "audio" for t, _ in tags) == 2 * (len(VARIANTS) + 1) - 1
    assert "1 file(s) left out" in text
    assert "missing or unreadable: vae/sub/b.wav" in text
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


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not on PATH (apt-get install chromium to enable)")
def test_report_renders_in_headless_chromium(out_dir, tmp_path):
    report = write_html_report(out_dir, max_files=2)
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        report.resolve().as_uri(),
    ]  # fmt: skip
    home = tmp_path / "chromium-home"  # chromium writes crash reports and dconf under HOME / XDG dirs
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
    try:
        subprocess.run(cmd, capture_output=True, timeout=60, check=False, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish within 60 s")
    assert shot.is_file(), "chromium wrote no screenshot"
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape[:2] == (2000, 1200)
    assert img.std() > 10  # not a blank page
    # the viridis spectrograms are on the page: many strongly coloured (non-grey) pixels
    saturation = img.max(axis=2) - img.min(axis=2)
    assert (saturation > 80).mean() > 0.01
