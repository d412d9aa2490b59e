"""Human-readable reports of a variant run: a self-contained HTML page and a W&B table.

Both read the output folder that the variant runner writes::

    OUT/input/<rel>.wav          the reference as the model sees it (16 kHz mono)
    OUT/<variant>/<rel>.wav      one per variant, same relative path
    OUT/metrics.csv              one row per file x variant (file, variant, duration_s, seconds, metrics...)
    OUT/summary.json             {"variants": {name: {...}}, "run": {...}}
    OUT/errors.csv               file, variant (empty: the whole input), reason (optional)

``rel`` is the ``file`` column of ``metrics.csv`` with its suffix replaced by ``.wav``.

Spectrogram images
------------------
:func:`spectrogram_png` draws the AudioLDM2 log-mel of :class:`recon.audio.MelFrontEnd` (natural
log of the magnitude mel, 64 slaney bins 0-8 kHz, hop 10 ms), time left to right, low frequencies
at the bottom. The colour range is *fixed* so that images of different variants and files are
directly comparable: the darkest colour is the front-end's log floor ``ln(1e-5)`` (-100 dB re 1,
i.e. silence) and the brightest is ``ln(10)`` (+20 dB); values outside are clipped. A full-scale
(peak 0.5) tone peaks near ``ln(e^1.3)``, so loud material sits in the upper fifth of the range.
The colour map is a 256-entry LUT linearly interpolated from nine viridis anchor colours.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch import Tensor

from recon.audio import LOG_MEL_FLOOR, AudioLoadError, AudioSpec, MelFrontEnd, load_audio
from recon.files import write_text

# --------------------------------------------------------------------------------------------------
# constants

# Fixed colour range of the spectrogram images, in natural-log mel magnitude (see module docstring).
SPEC_VMIN = math.log(LOG_MEL_FLOOR)  # -11.51 = -100 dB
SPEC_VMAX = math.log(10.0)  # 2.30 = +20 dB
SPEC_MAX_WIDTH = 640  # 10.24 s = 1024 frames -> 640 px (area-averaged)
SPEC_HEIGHT = 128  # 64 mel bins x 2

# Viridis at 0, 1/8, ..., 1.
_VIRIDIS_ANCHORS = (
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
)


def _build_lut(anchors: Sequence[tuple[int, int, int]] = _VIRIDIS_ANCHORS, n: int = 256) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float64)
    xp = np.linspace(0.0, 1.0, len(a))
    x = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(x, xp, a[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


COLOUR_LUT = _build_lut()  # [256, 3] uint8

# Key columns of metrics.csv; everything after them is a metric (or other per-row number).
KEY_COLUMNS = ("file", "variant")
INFO_COLUMNS = ("duration_s", "seconds", "notes")
# Preferred display order and direction of the metrics the runner writes.
METRIC_ORDER = (
    "log_mel_db",
    "mel_multiscale",
    "mr_stft",
    "lsd_db",
    "si_sdr_db",
    "snr_db",
    "hf_retention",
    "pesq_wb",
    "stoi",
    "latent_snr_db",
    "bitrate_bps",
)
HIGHER_IS_BETTER = {"si_sdr_db", "snr_db", "pesq_wb", "stoi", "latent_snr_db"}
LOWER_IS_BETTER = {"log_mel_db", "mel_multiscale", "mr_stft", "lsd_db"}
# hf_retention: 1 is ideal; bitrate_bps: information, not a score.

INPUT_NAME = "input"

_FRONTENDS: dict[AudioSpec, MelFrontEnd] = {}


# --------------------------------------------------------------------------------------------------
# reading the output folder


def _convert(value: str | None) -> Any:
    if value is None:
        return None
    s = value.strip()
    if s == "":
        return None
    try:
        return float(s)
    except ValueError:
        return value


def read_metrics(out_dir: str | Path) -> list[dict]:
    """Rows of ``OUT/metrics.csv``: ``file``/``variant`` as strings, numbers as float, empty as None.

    ``"nan"`` becomes ``float("nan")``; a non-numeric cell in another column stays a string.
    A missing file gives ``[]``.
    """
    path = Path(out_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = []
        for raw in csv.DictReader(fh):
            row = {}
            for key, value in raw.items():
                if key is None:  # extra cells without a header
                    continue
                row[key] = (value if value is not None else "") if key in KEY_COLUMNS else _convert(value)
            rows.append(row)
    return rows


def metric_columns(out_dir: str | Path) -> list[str]:
    """The metric columns of ``metrics.csv`` in file order (every column but file, variant, duration_s, seconds)."""
    path = Path(out_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return [c for c in header if c not in KEY_COLUMNS and c not in INFO_COLUMNS]


def read_summary(out_dir: str | Path) -> dict:
    """``OUT/summary.json``, with ``variants`` and ``run`` always present (empty if missing)."""
    path = Path(out_dir) / "summary.json"
    data: dict = {}
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    data.setdefault("variants", {})
    data.setdefault("run", {})
    return data


def read_errors(out_dir: str | Path) -> list[dict]:
    """Rows of ``OUT/errors.csv`` (``file``, ``variant``, ``reason``) as strings; ``[]`` if absent or header-only."""
    path = Path(out_dir) / "errors.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v or "") for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]


def _ordered_unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _variants(summary: dict, rows: list[dict]) -> list[str]:
    """Variant names: summary.json order first, then any only seen in metrics.csv."""
    return [v for v in _ordered_unique([*summary.get("variants", {}), *(r["variant"] for r in rows)]) if v != INPUT_NAME]


def _files(out_dir: Path, rows: list[dict]) -> list[str]:
    """File names in metrics.csv order; falls back to the wavs under OUT/input if there are no rows."""
    files = _ordered_unique(r["file"] for r in rows if r.get("file"))
    if not files and (out_dir / INPUT_NAME).is_dir():
        files = sorted(p.relative_to(out_dir / INPUT_NAME).as_posix() for p in (out_dir / INPUT_NAME).rglob("*.wav"))
    return files


def wav_path(out_dir: str | Path, variant: str, file: str) -> Path:
    """``OUT/<variant>/<file with suffix .wav>``."""
    return Path(out_dir) / variant / Path(file).with_suffix(".wav")


def _sort_metrics(names: Iterable[str]) -> list[str]:
    names = list(names)
    known = [m for m in METRIC_ORDER if m in names]
    return known + [m for m in names if m not in known]


# --------------------------------------------------------------------------------------------------
# media


def _as_mono_numpy(wav: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(wav, Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)  # [channels, samples]
    if wav.ndim != 1:
        raise ValueError(f"expected a waveform [samples] or [channels, samples], got shape {wav.shape}")
    return np.nan_to_num(wav, nan=0.0, posinf=0.0, neginf=0.0)


def _frontend(spec: AudioSpec) -> MelFrontEnd:
    if spec not in _FRONTENDS:
        _FRONTENDS[spec] = MelFrontEnd(spec)
    return _FRONTENDS[spec]


def spectrogram_png(
    wav: np.ndarray | Tensor,
    spec: AudioSpec = AudioSpec(),
    *,
    max_width: int = SPEC_MAX_WIDTH,
    height: int = SPEC_HEIGHT,
) -> bytes:
    """PNG of the AudioLDM2 log-mel of a 16 kHz waveform ``[samples]`` (or ``[channels, samples]``, averaged).

    Any length works: the waveform is zero-padded to at least ``n_fft`` samples and to a multiple
    of the hop, giving ``frames = ceil(samples / hop)`` columns. The image is ``height`` pixels high
    (mel bins repeated, low frequencies at the bottom) and ``min(frames, max_width)`` wide (longer
    clips are area-averaged in time). Colours use the fixed range ``[SPEC_VMIN, SPEC_VMAX]``.
    """
    x = _as_mono_numpy(wav)
    hop = spec.hop_length
    n = max(x.size, spec.n_fft)
    n = int(math.ceil(n / hop) * hop)
    padded = np.zeros(n, dtype=np.float32)
    padded[: x.size] = x
    with torch.no_grad():
        logmel = _frontend(spec)(torch.from_numpy(padded)[None])[0, 0]  # [frames, mels]
        frames = logmel.shape[0]
        width = max(1, min(frames, max_width))
        img = logmel.T[None, None]  # [1, 1, mels, frames]
        img = torch.nn.functional.interpolate(img, size=(height, width), mode="area" if width < frames else "nearest")
        img = img[0, 0].flip(0).numpy()  # row 0 = highest mel bin
    scaled = (img - SPEC_VMIN) / (SPEC_VMAX - SPEC_VMIN)
    idx = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
    rgb = COLOUR_LUT[idx]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def wav_bytes(wav: np.ndarray | Tensor, sample_rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV file in memory (samples clipped to [-1, 1])."""
    x = np.clip(_as_mono_numpy(wav), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _load(path: Path, spec: AudioSpec) -> np.ndarray | None:
    """16 kHz mono float32 of a written wav, or None when it is missing or unreadable."""
    try:
        return load_audio(path, spec).numpy()
    except AudioLoadError:
        return None


# --------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin-top:0}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin:1.5em 0 .4em;font-family:monospace;font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top;font-size:13px}td.num{white-space:nowrap}
th{background:#eee}td.num{text-align:right;font-family:monospace}
.nr{background:#fff3cd}.badge{display:inline-block;background:#d9534f;color:#fff;border-radius:3px;padding:0 5px;font-size:11px;margin-left:4px}
.ref{background:#e8f4ff}.missing{color:#a00;font-style:italic}
.file td{vertical-align:middle}.file img{display:block;image-rendering:pixelated}
.note{color:#555;font-style:italic}.small{font-size:11px;color:#555}
audio{width:300px}.scroll{overflow-x:auto}.file .small{margin-top:4px;line-height:1.4;max-width:300px}.file b{font-weight:600;color:#000}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) < 10 else f"{v:.1f}"
    return str(value)


def _arrow(metric: str) -> str:
    if metric in HIGHER_IS_BETTER:
        return " &uarr;"
    if metric in LOWER_IS_BETTER:
        return " &darr;"
    return ""


def _summary_table(summary: dict, variants: list[str], metrics: list[str]) -> str:
    info = summary.get("variants", {})
    main = [m for m in metrics if m != "bitrate_bps"]
    head = ["variant", "description", "bitrate", "files"]
    out = ['<div class=scroll><table class="summary"><thead><tr>']
    out += [f"<th>{_e(h)}</th>" for h in head]
    out += [f"<th>{_e(m)}{_arrow(m)}<br><span class=small>mean / median</span></th>" for m in main]
    out += ["<th>s / clip</th><th>real-time factor</th></tr></thead><tbody>"]
    for v in variants:
        d = info.get(v, {})
        is_rec = d.get("is_reconstruction", True) is not False
        label = d.get("bitrate_label")
        if label is None:
            bps = d.get("bitrate_bps")
            label = f"{bps / 1000:.2f} kbps" if isinstance(bps, (int, float)) else "n/a"
        mean, median = d.get("mean", {}) or {}, d.get("median", {}) or {}
        name = _e(v) + ("" if is_rec else ' <span class="badge">not a reconstruction</span>')
        out.append(f'<tr{"" if is_rec else " class=nr"}><td>{name}</td><td>{_e(d.get("description", ""))}</td>')
        out.append(f"<td>{_e(label)}</td><td class=num>{_e(_fmt(d.get('files')))}</td>")
        for m in main:
            out.append(f"<td class=num>{_e(_fmt(mean.get(m)))} / {_e(_fmt(median.get(m)))}</td>")
        out.append(
            f"<td class=num>{_e(_fmt(d.get('seconds_per_clip')))}</td><td class=num>{_e(_fmt(d.get('real_time_factor')))}</td></tr>"
        )
    out.append("</tbody></table></div>")
    out.append(
        "<p class=small>&darr; lower is better, &uarr; higher is better; hf_retention is ideal at 1. "
        "Rows marked <span class=badge>not a reconstruction</span> do not try to reproduce the input "
        "(e.g. text-to-audio); their metrics are for reference only.</p>"
    )
    return "".join(out)


def _kv_table(data: dict) -> str:
    if not data:
        return "<p class=note>no run settings recorded</p>"
    rows = []
    for k, v in data.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        rows.append(f"<tr><th>{_e(k)}</th><td>{_e(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _row_metrics(row: dict | None, metrics: list[str]) -> str:
    if row is None:
        return ""
    parts = [f"{_e(m)}&nbsp;<b>{_e(_fmt(row.get(m)))}</b>" for m in metrics if row.get(m) is not None]
    if row.get("seconds") is not None:
        parts.append(f"time&nbsp;<b>{_e(_fmt(row['seconds']))}&nbsp;s</b>")
    if row.get("notes"):
        parts.append(f"<i>{_e(row['notes'])}</i>")
    return " &middot; ".join(parts)


def _file_section(out_dir: Path, file: str, variants: list[str], by_key: dict, metrics: list[str], summary: dict, spec: AudioSpec) -> str:
    info = summary.get("variants", {})
    out = [f"<h3>{_e(file)}</h3>", '<div class=scroll><table class="file"><tbody>']
    for v in [INPUT_NAME, *variants]:
        path = wav_path(out_dir, v, file)
        wav = _load(path, spec)
        is_rec = v == INPUT_NAME or info.get(v, {}).get("is_reconstruction", True) is not False
        cls = "ref" if v == INPUT_NAME else ("" if is_rec else "nr")
        label = _e(v) + ("" if is_rec else ' <span class="badge">not a reconstruction</span>')
        out.append(f'<tr class="{cls}"><td>{label}</td>')
        if wav is None:
            out.append(f'<td colspan=2 class="missing">missing or unreadable: {_e(path.relative_to(out_dir).as_posix())}</td></tr>')
            continue
        audio = _data_uri("audio/wav", wav_bytes(wav, spec.sample_rate))
        image = _data_uri("image/png", spectrogram_png(wav, spec))
        out.append(f'<td><audio controls preload="metadata" src="{audio}"></audio>')
        out.append(f"<div class=small>{_row_metrics(by_key.get((file, v)), metrics)}</div></td>")
        out.append(f'<td><img alt="log-mel spectrogram of {_e(v)}" src="{image}"></td></tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def _errors_table(errors: list[dict]) -> str:
    if not errors:
        return ""
    cols = _ordered_unique(k for row in errors for k in row)
    out = [f"<h2>Errors ({len(errors)})</h2><table><thead><tr>"]
    out += [f"<th>{_e(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for row in errors:
        out.append("<tr>" + "".join(f"<td>{_e(row.get(c, ''))}</td>" for c in cols) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def build_html(out_dir: str | Path, max_files: int = 12, spec: AudioSpec = AudioSpec()) -> str:
    """The report page as a string (see :func:`write_html_report`)."""
    out_dir = Path(out_dir)
    rows = read_metrics(out_dir)
    summary = read_summary(out_dir)
    errors = read_errors(out_dir)
    variants = _variants(summary, rows)
    files = _files(out_dir, rows)
    csv_metrics = metric_columns(out_dir)
    summary_metrics = _ordered_unique(m for d in summary["variants"].values() for m in (d.get("mean") or {}))
    metrics = _sort_metrics(_ordered_unique([*csv_metrics, *summary_metrics]))
    by_key = {(r["file"], r["variant"]): r for r in rows}
    shown = files[: max(0, max_files)]

    title = f"recon reconstruction report - {out_dir.name}"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{len(files)} file(s), {len(variants)} variant(s), {len(rows)} metric row(s), {len(errors)} error(s).</p>",
        "<h2>Run settings</h2>",
        _kv_table(summary.get("run") or {}),
        "<h2>Summary per variant</h2>",
        _summary_table(summary, variants, metrics) if variants else "<p class=note>no variants</p>",
        "<h2>Audio and spectrograms</h2>",
        "<p class=small>Log-mel spectrograms (AudioLDM2 front-end, 64 mel bins 0-8 kHz, low frequencies at the bottom), "
        "fixed colour range ln(1e-5) .. ln(10) (-100 .. +20 dB) for every image. Audio is embedded as 16-bit PCM WAV.</p>",
    ]
    if len(files) > len(shown):
        parts.append(
            f"<p class=note>Showing {len(shown)} of {len(files)} files; {len(files) - len(shown)} file(s) left out "
            f"of the audio section (max_files={max_files}). All rows are in metrics.csv.</p>"
        )
    for file in shown:
        parts.append(_file_section(out_dir, file, variants, by_key, metrics, summary, spec))
    parts.append(_errors_table(errors))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html_report(out_dir: str | Path, max_files: int = 12) -> Path:
    """Write ``OUT/report.html``: fully self-contained (inline CSS, media as base64 data URIs, no JS).

    Contents: run settings, a per-variant summary (non-reconstructions flagged), then for the first
    ``max_files`` files of ``metrics.csv`` an audio player, a spectrogram and the metrics of each
    variant (input first), and the errors table when ``errors.csv`` has rows. Written atomically.
    Size: each 10.24 s clip adds about 440 kB of base64 audio, so ``max_files x (variants + 1)``
    players dominate the file size.
    """
    out_dir = Path(out_dir)
    path = out_dir / "report.html"
    write_text(path, build_html(out_dir, max_files))
    return path


# --------------------------------------------------------------------------------------------------
# Weights & Biases


def log_to_wandb(
    out_dir: str | Path,
    mode: str = "offline",
    project: str = "recon",
    run_name: str | None = None,
    max_files: int = 12,
    config: dict | None = None,
) -> str | None:
    """Log the run's results to W&B; returns the run directory, or None for ``mode="off"``.

    One ``run.log`` call (step 0) with two tables: ``reconstructions`` (columns file, variant,
    every metric column of metrics.csv, ``input_audio``, ``output_audio``, ``spectrogram`` - media
    only for the first ``max_files`` files, None beyond) and ``summary`` (variant, description,
    is_reconstruction, bitrate_label, files, seconds_per_clip, real_time_factor, ``mean/<metric>``).
    The means also go to ``run.summary`` as ``<variant>/<metric>``. ``config`` defaults to the
    ``run`` settings of summary.json. The run is finished before returning.

    Offline runs write under ``out_dir/wandb/offline-run-*``; W&B stages table media under
    ``WANDB_DATA_DIR`` (default ``~/.local/share/wandb``), which must still exist at ``wandb sync``.
    """
    if mode not in ("off", "offline", "online"):
        raise ValueError(f"mode must be 'off', 'offline' or 'online', got {mode!r}")
    if mode == "off":
        return None
    import wandb  # imported lazily: the HTML report does not need it

    out_dir = Path(out_dir)
    spec = AudioSpec()
    rows = read_metrics(out_dir)
    summary = read_summary(out_dir)
    metrics = metric_columns(out_dir)
    files = _files(out_dir, rows)
    media_files = set(files[: max(0, max_files)])
    cfg = dict(summary.get("run") or {}) if config is None else dict(config)

    # create_new: never hand back (and then finish) a run the caller already has open, e.g. training's.
    run = wandb.init(project=project, mode=mode, dir=str(out_dir), name=run_name, config=cfg, reinit="create_new")
    try:
        run_dir = str(run.settings.sync_dir) if getattr(run.settings, "sync_dir", None) else str(Path(run.dir).parent)
        table = wandb.Table(columns=["file", "variant", *metrics, "input_audio", "output_audio", "spectrogram"])
        inputs: dict[str, Any] = {}
        for r in rows:
            file, variant = r["file"], r["variant"]
            in_audio = out_audio = image = None
            if file in media_files:
                if file not in inputs:
                    ref = _load(wav_path(out_dir, INPUT_NAME, file), spec)
                    inputs[file] = None if ref is None else wandb.Audio(ref, sample_rate=spec.sample_rate, caption=f"{file} input")
                in_audio = inputs[file]
                est = _load(wav_path(out_dir, variant, file), spec)
                if est is not None:
                    out_audio = wandb.Audio(est, sample_rate=spec.sample_rate, caption=f"{file} {variant}")
                    image = wandb.Image(Image.open(io.BytesIO(spectrogram_png(est, spec))), caption=f"{file} {variant}")
            values = [r.get(m) if not isinstance(r.get(m), str) else None for m in metrics]
            table.add_data(file, variant, *values, in_audio, out_audio, image)

        info = summary.get("variants", {})
        mean_metrics = _sort_metrics(_ordered_unique(m for d in info.values() for m in (d.get("mean") or {})))
        sum_cols = ["variant", "description", "is_reconstruction", "bitrate_label", "files", "seconds_per_clip", "real_time_factor"]
        sum_table = wandb.Table(columns=[*sum_cols, *(f"mean/{m}" for m in mean_metrics)])
        for v, d in info.items():
            mean = d.get("mean") or {}
            sum_table.add_data(
                v,
                d.get("description"),
                d.get("is_reconstruction"),
                d.get("bitrate_label"),
                d.get("files"),
                d.get("seconds_per_clip"),
                d.get("real_time_factor"),
                *(mean.get(m) for m in mean_metrics),
            )
            for m, value in mean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    run.summary[f"{v}/{m}"] = value
        run.log({"reconstructions": table, "summary": sum_table})
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return run_dir


__all__ = [
    "COLOUR_LUT",
    "SPEC_VMAX",
    "SPEC_VMIN",
    "build_html",
    "log_to_wandb",
    "metric_columns",
    "read_errors",
    "read_metrics",
    "read_summary",
    "spectrogram_png",
    "wav_bytes",
    "wav_path",
    "write_html_report",
]
