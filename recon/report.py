"""The human-readable report of a variant run: an HTML page (``OUT/report.html``).

It reads the output folder that the variant runner writes (as :mod:`recon.wandb_table` does for
the same results as a W&B table)::

    OUT/input/<rel>.wav          the reference as the model sees it (16 kHz mono)
    OUT/<variant>/<rel>.wav      one per variant, same relative path
    OUT/metrics.csv              one row per file x variant (file, variant, duration_s, seconds, metrics...)
    OUT/summary.json             {"variants": {name: {...}}, "run": {...}}
    OUT/errors.csv               file, variant (empty: the whole input), reason (optional)

``rel`` is the ``file`` column of ``metrics.csv`` with its suffix replaced by ``.wav``. The page
links those wavs and writes its images to ``OUT/report_files/`` (so it stays small as runs grow),
or with ``embed=True`` carries both inside itself (audio as FLAC) to work on its own.

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
import shutil
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch import Tensor

from recon.audio import LOG_MEL_FLOOR, AudioLoadError, AudioSpec, MelFrontEnd, load_audio
from recon import evaluation as E
from recon import metrics as M
from recon.files import write_bytes, write_text

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
    *M.VISQOL_METRICS,
    "latent_snr_db",
    *M.WORKFLOW_METRICS,
    "bitrate_bps",
)

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


def ordered_unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _variants(summary: dict, rows: list[dict]) -> list[str]:
    """Variant names: summary.json order first, then any only seen in metrics.csv."""
    return [v for v in ordered_unique([*summary.get("variants", {}), *(r["variant"] for r in rows)]) if v != INPUT_NAME]


def listed_files(out_dir: Path, rows: list[dict]) -> list[str]:
    """File names in metrics.csv order; falls back to the wavs under OUT/input if there are no rows."""
    files = ordered_unique(r["file"] for r in rows if r.get("file"))
    if not files and (out_dir / INPUT_NAME).is_dir():
        files = sorted(p.relative_to(out_dir / INPUT_NAME).as_posix() for p in (out_dir / INPUT_NAME).rglob("*.wav"))
    return files


def wav_path(out_dir: str | Path, variant: str, file: str) -> Path:
    """``OUT/<variant>/<file with suffix .wav>``."""
    return Path(out_dir) / variant / Path(file).with_suffix(".wav")


def sort_metrics(names: Iterable[str]) -> list[str]:
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


# Players and spectrograms show at most this much of a file: an hour-long output would make a page
# of hundreds of MB and an unreadable spectrogram. The card says when it is an excerpt.
EXCERPT_SECONDS = 30.0


def load_wav(path: Path, spec: AudioSpec, seconds: float | None = None) -> np.ndarray | None:
    """16 kHz mono float32 of a written wav (its first ``seconds`` if given), or None when it is
    missing or unreadable."""
    try:
        return load_audio(path, spec, duration=seconds).numpy()
    except AudioLoadError:
        return None


# --------------------------------------------------------------------------------------------------
# how values read

# Where the page's media go unless they are embedded: one folder next to report.html.
MEDIA_DIR = "report_files"


@dataclass(frozen=True)
class Column:
    """How one metric reads in the page: a short header, its unit, its precision and direction."""

    label: str
    unit: str = ""
    decimals: int = 3
    better: str | None = None  # "higher", "lower", "one" (ideal at 1) or None (information)
    title: str = ""
    table: str = "summary"  # the summary table it is shown in: "summary", or "workflow" for the second one


COLUMNS = {
    "log_mel_db": Column("log-mel", "dB", 1, "lower", "mean |difference| of the AudioLDM2 log-mel"),
    "mel_multiscale": Column("mel DAC", "", 2, "lower", "DAC's multi-scale mel distance"),
    "mr_stft": Column("MR-STFT", "", 2, "lower", "multi-resolution STFT distance (auraloss terms)"),
    "lsd_db": Column("LSD", "dB", 1, "lower", "log-spectral distance"),
    "si_sdr_db": Column("SI-SDR", "dB", 1, "higher", "scale-invariant signal-to-distortion ratio"),
    "snr_db": Column("SNR", "dB", 1, "higher", "signal-to-noise ratio"),
    "hf_retention": Column("HF kept", "×", 2, "one", "energy above 4 kHz relative to the input; 1 is ideal"),
    "pesq_wb": Column("PESQ", "MOS", 2, "higher", "wide-band PESQ, 1-4.6; speech only"),
    "stoi": Column("STOI", "0-1", 2, "higher", "short-time objective intelligibility; speech only"),
    "latent_snr_db": Column("latent SNR", "dB", 1, "higher", "SNR of the variant's latent against the VAE's"),
    "visqol_audio": Column("ViSQOL audio", "MOS", 2, "higher", "ViSQOL v3 MOS-LQO in audio mode (resampled to 48 kHz), 1-4.75; every file"),
    "visqol_speech": Column("ViSQOL speech", "MOS", 2, "higher", "ViSQOL v3 MOS-LQO in speech mode (16 kHz, lattice mapper), 1-4.55; speech only"),
    # The DDCM-on-AudioLDM2 workflow's evaluation (recon.metrics.WORKFLOW_METRICS): a table of their own.
    "mel_db_mae": Column("mel dB MAE", "dB", 2, "lower", "mean |difference| of 128 HTK mel bins in dB of power, 0-8 kHz, 80 dB range per signal", "workflow"),
    "mel_db_mae_low": Column("low band", "dB", 2, "lower", "mel_db_mae over mel bins 0-41 (centres up to 0.89 kHz)", "workflow"),
    "mel_db_mae_high": Column("high band", "dB", 2, "lower", "mel_db_mae over mel bins 42-127", "workflow"),
    "stft_mag_mse": Column("STFT MSE", "", 3, "lower", "mean squared difference of STFT magnitudes, n_fft 1024, hop 256", "workflow"),
    "spectral_centroid_l1": Column("centroid", "Hz", 0, "lower", "mean |difference| of the frame spectral centroids", "workflow"),
    "waveform_corr": Column("corr", "-1..1", 3, "higher", "Pearson correlation of the waveforms (needs the phase)", "workflow"),
    "envelope_rms_l1": Column("envelope", "", 4, "lower", "mean |difference| of frame RMS envelopes (1024 / 256)", "workflow"),
}
# Rates are shown in the bitrate column, not as metrics.
RATE_COLUMNS = ("bitrate_bps", "measured_bps")
PERCEPTUAL = M.PERCEPTUAL_METRICS
NOT_APPLICABLE = "—"
UNDEFINED = "n/a"


def _column(metric: str) -> Column:
    return COLUMNS.get(metric, Column(metric))


def _number(value: float, column: Column) -> str:
    """Finite numbers: dB to the column's decimals (one, unless it says otherwise); other values to
    the column's decimals, tiny ones as ``<0.001``."""
    if column.unit == "dB":
        text = f"{value:.{column.decimals}f}"
        return "0.0" if text == "-0.0" else text
    size = abs(value)
    if value == 0:
        return f"{0:.{column.decimals}f}"
    if size < 0.001:
        return "<0.001" if value > 0 else ">−0.001"
    if size >= 1e4:
        return f"{value:.2g}".replace("e+0", "e").replace("e+", "e")
    decimals = 3 if size < 10**-column.decimals else column.decimals  # 0.004 stays 0.004, not 0.00
    return f"{value:.{decimals}f}"


def _text(value: Any, column: Column) -> str:
    """What a cell shows (plain text): a number, ``n/a`` for NaN (undefined), ``—`` for no value (not applicable)."""
    if value is None or isinstance(value, str):
        return NOT_APPLICABLE
    v = float(value)
    if math.isnan(v):
        return UNDEFINED
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return _number(v, column)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _best_texts(values: Iterable[Any], column: Column) -> set[str]:
    """The shown text of the best value (all ties at the shown precision); empty with fewer than two
    values or when all read the same (a mark on every row says nothing)."""
    values = [float(v) for v in values if _finite(v)]
    if column.better == "one":
        values = [v for v in values if v > 0]
    if len(values) < 2 or column.better is None or len({_number(v, column) for v in values}) == 1:
        return set()
    if column.better == "higher":
        best = max(values)
    elif column.better == "lower":
        best = min(values)
    else:
        best = min(values, key=lambda v: abs(math.log(v)))
    return {_number(best, column)}


def _header(metric: str, explain: bool = True) -> str:
    """A metric's column header: short label, unit and direction; ``explain`` adds a hover text."""
    column = _column(metric)
    arrow = {"higher": " &uarr;", "lower": " &darr;", "one": " &rarr;1"}.get(column.better or "", "")
    unit = f"<br><span class=unit>{_e(column.unit)}{arrow}</span>" if column.unit or arrow else ""
    title = f" title={_q(f'{metric}: {column.title}')}" if explain else ""
    return f"<th{title}>{_e(column.label)}{unit}</th>"


def _cell(text: str, *, best: bool = False, title: str = "", extra: str = "") -> str:
    cls = "num best" if best else "num"
    if text in (UNDEFINED, NOT_APPLICABLE):
        cls += " na"
    return f'<td class="{cls}"{f" title={_q(title)}" if title else ""}>{_e(text)}{extra}</td>'


# --------------------------------------------------------------------------------------------------
# why a PESQ or STOI cell is NaN


def _short_reason(reason: str) -> str:
    """A reason without its numbers, to group cells: 'estimate is near-silent (68 dB ...)' -> 'estimate is near-silent'."""
    return reason.split(" (")[0]


def _undefined_reasons(out_dir: Path, rows: list[dict], spec: AudioSpec) -> dict[tuple[str, str, str], str]:
    """``(file, variant, metric) -> reason`` for every NaN perceptual cell (PESQ, STOI, ViSQOL) of metrics.csv.

    metrics.csv holds only the NaN, so the reason is found again from the written audio: first the
    cheap checks of the pair (length, level); failing those, the library on the reference against
    itself, once per file (no utterance, too few active frames: reasons of the reference alone).
    """
    reasons = {}
    references: dict[str, np.ndarray | None] = {}
    of_reference: dict[tuple[str, str], str | None] = {}
    for row in rows:
        file, variant = row["file"], row["variant"]
        names = [m for m in PERCEPTUAL if isinstance(row.get(m), float) and math.isnan(row[m])]
        if not names:
            continue
        if file not in references:
            references[file] = load_wav(wav_path(out_dir, INPUT_NAME, file), spec, M.PERCEPTUAL_WHOLE_SECONDS)
        ref, est = references[file], load_wav(wav_path(out_dir, variant, file), spec, M.PERCEPTUAL_WHOLE_SECONDS)
        for name in names:
            reason = None
            if ref is not None and est is not None and ref.size == est.size:
                reason = M.undefined_reason(name, ref, est)
            if reason is None and ref is not None:
                if (file, name) not in of_reference:
                    of_reference[(file, name)] = M.perceptual_details(ref, ref, [name])[name][1]
                reason = of_reference[(file, name)]
            reasons[(file, variant, name)] = reason or "undefined when the run scored it (see its log)"
    return reasons


# --------------------------------------------------------------------------------------------------
# the page's media: files next to it, or embedded


class _Media:
    """Audio and spectrogram URLs: data URIs with ``embed``, else files relative to ``OUT/``.

    Linked audio is the variant's own wav (already in OUT); linked images go to ``OUT/report_files``.
    Embedded audio is 16-bit FLAC: lossless, so what one hears is what was scored, at about half
    the size of a WAV.
    """

    def __init__(self, out_dir: Path, embed: bool, spec: AudioSpec):
        self.out_dir, self.embed, self.spec = out_dir, embed, spec

    def audio(self, path: Path, wav: np.ndarray) -> str:
        if self.embed:
            return _data_uri("audio/flac", flac_bytes(wav, self.spec.sample_rate))
        return _relative_url(path.relative_to(self.out_dir))

    def image(self, variant: str, file: str, wav: np.ndarray) -> str:
        png = spectrogram_png(wav, self.spec)
        if self.embed:
            return _data_uri("image/png", png)
        rel = Path(MEDIA_DIR) / variant / Path(file).with_suffix(".png")
        write_bytes(self.out_dir / rel, png)
        return _relative_url(rel)


def _relative_url(rel: Path) -> str:
    return urllib.parse.quote(rel.as_posix())


def flac_bytes(wav: np.ndarray | Tensor, sample_rate: int = 16000) -> bytes:
    """A mono 16-bit FLAC file in memory (samples clipped to [-1, 1])."""
    x = np.clip(_as_mono_numpy(wav), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1em 1.5em;color:#222;background:#fafafa;font-size:14px}
h1{margin:0 0 .3em;font-size:1.5em}h2{border-bottom:2px solid #ccc;padding-bottom:.15em;margin:1.4em 0 .5em;font-size:1.2em}
code{font-size:.95em}
.banner{border-radius:4px;padding:.6em .9em;margin:.6em 0;border:1px solid}
.banner.random{background:#f8d7da;border-color:#d9534f;color:#58151c}.banner.small{background:#fff3cd;border-color:#e0a800;color:#533f03}
.banner.pretrained{background:#e8f4ff;border-color:#8ab6e0}.banner.unknown{background:#eee;border-color:#bbb}
table{border-collapse:collapse;margin:.4em 0;background:#fff}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top;font-size:13px}
th{background:#eee;font-weight:600;vertical-align:bottom}.unit{font-weight:normal;color:#555;font-size:11px;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.na{color:#888}
td.best{background:#d4edda;font-weight:700}td.name{font-family:monospace;white-space:nowrap}
tr.nr td{background:#fff8e1}tr.nr td.best{background:#fff8e1;font-weight:normal}
.badge{display:inline-block;background:#d9534f;color:#fff;border-radius:3px;padding:0 4px;font-size:10px;font-family:system-ui,sans-serif}
sup.part{color:#a05a00;font-weight:normal;font-size:9px;line-height:0;margin-left:1px}
.errors{max-height:18em;overflow-y:auto;display:inline-block}.errors td{font-size:12px}
details{margin:.3em 0}summary{cursor:pointer}
details.file{background:#fff;border:1px solid #ddd;border-radius:4px;padding:.25em .6em;margin:.25em 0}
details.file[open]{padding-bottom:.6em}details.file>summary{font-size:13px}
.small{font-size:12px;color:#555}.note{color:#555;font-style:italic}.missing{color:#a00;font-style:italic;font-size:12px}
.scroll{overflow-x:auto;max-width:100%}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:8px;margin-top:.5em}
.card{border:1px solid #ddd;border-radius:4px;padding:4px;background:#fff}.card.ref{background:#e8f4ff}.card.nr{background:#fff8e1}
.card .name{font-family:monospace;font-size:12px;margin-bottom:2px}
.card audio{width:100%;height:32px}.card img{display:block;width:100%;height:96px}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots figure{margin:0}svg.rd text{font-size:10px;fill:#333}
.fname{font-family:monospace}.tag{display:inline-block;background:#e2e3f3;color:#272a5c;border-radius:3px;padding:0 4px;margin-left:3px;font-size:11px}
dl.variants{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:12px}dl.variants dt{font-family:monospace}dl.variants dd{margin:0}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _q(value: Any) -> str:
    """A quoted, escaped attribute value."""
    return f'"{_e(value)}"'


def _is_reconstruction(summary: dict, variant: str) -> bool:
    return variant == INPUT_NAME or summary.get("variants", {}).get(variant, {}).get("is_reconstruction", True) is not False


def _variant_name(summary: dict, variant: str, explain: bool = True) -> str:
    description = summary.get("variants", {}).get(variant, {}).get("description", "") if explain else ""
    badge = "" if _is_reconstruction(summary, variant) else ' <span class="badge">not a reconstruction</span>'
    return f'<td class="name"{f" title={_q(description)}" if description else ""}>{_e(variant)}{badge}</td>'


# Banner text per kind of backbone weights (recon.backbone.describe_weights).
_BANNERS = {
    "random": (
        "<b>&#9888; Random weights.</b> The backbone <code>{source}</code> is untrained: the output of "
        "every variant that runs its VAE or vocoder is meaningless (near-silence or noise), and the "
        "quality numbers of those variants are noise. Use this run to check the pipeline only."
    ),
    "small": (
        "<b>Small stand-in backbone</b> <code>{source}</code>: a small stand-in for "
        "<code>cvssp/audioldm2</code> trained on minutes of synthetic audio. The numbers show that the "
        "pipeline works, not AudioLDM2's quality."
    ),
    "pretrained": "<b>Backbone:</b> <code>{source}</code> (pretrained weights).",
}


def _banner(run: dict) -> str:
    source, weights = run.get("backbone_source"), run.get("backbone_weights")
    if weights in _BANNERS and source:
        text = _BANNERS[weights].format(source=_e(source))
    else:
        weights = "unknown"
        text = f"<b>Backbone:</b> {f'<code>{_e(source)}</code>, weights not recorded' if source else 'not recorded in summary.json'}."
    if run.get("ckpt"):
        text += f" Codebook checkpoint: <code>{_e(run['ckpt'])}</code>."
    return f'<div class="banner {weights}" id="backbone">{text}</div>'


def _rate_cell(d: dict) -> str:
    label = d.get("bitrate_label")
    bps = d.get("bitrate_bps")
    if label is None:
        label = f"{bps / 1000:.1f} kbps" if _finite(bps) else "n/a"
    title = label
    if _finite(d.get("measured_bps")):
        title += f"; measured {d['measured_bps'] / 1000:.2f} kbps (written files, headers included)"
    text = f"{bps / 1000:.1f}" if _finite(bps) else NOT_APPLICABLE
    return _cell(text, title=title)


def _stat_cell(metric: str, mean: Any, median: Any, values: list, reasons: list[str], best: set[str]) -> str:
    """One summary cell: the mean, with how many files it covers when PESQ/STOI were undefined for some."""
    column = _column(metric)
    undefined = [v for v in values if isinstance(v, float) and math.isnan(v)]
    why = "; ".join(f"{r} ({n}x)" for r, n in _counts(_short_reason(r) for r in reasons).items())
    if not _finite(mean):
        if undefined:
            return _cell(UNDEFINED, title=f"undefined for every file: {why}")
        return _cell(_text(mean, column))
    text = _text(mean, column)
    title = f"mean; median {_text(median, column)}" if _finite(median) else "mean"
    extra = ""
    if undefined:
        defined = len(values) - len(undefined)
        title += f"; over {defined} of {len(values)} files, n/a for the others: {why}"
        extra = f'<sup class="part">{defined}/{len(values)}</sup>'
    return _cell(text, best=text in best, title=title, extra=extra)


def _counts(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _summary_table(summary: dict, variants: list[str], metrics: list[str], rows: list[dict], reasons: dict,
                   table_id: str = "summary", timing_columns: bool = True) -> str:  # fmt: skip
    info = summary.get("variants", {})
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    # The best of each column among the reconstructions: a generated clip does not compete.
    scored = [v for v in variants if _is_reconstruction(summary, v)]
    best = {m: _best_texts(((info.get(v, {}).get("mean") or {}).get(m) for v in scored), _column(m)) for m in metrics}
    timing = {"seconds_per_clip": Column("s / clip", "s", 2, "lower"), "real_time_factor": Column("speed", "× real time", 1, "higher")}
    best_timing = {k: _best_texts((info.get(v, {}).get(k) for v in variants), c) for k, c in timing.items()}

    if not timing_columns:
        timing = best_timing = {}
    out = [f'<div class=scroll><table class="summary" id="{table_id}"><thead><tr><th>variant</th>',
           '<th title="nominal bitrate of the variant\'s bitstream">bitrate<br><span class=unit>kbps</span></th>']  # fmt: skip
    out += [_header(m) for m in metrics]
    if timing_columns:
        out += ['<th title="compute seconds per clip">time<br><span class=unit>s / clip</span></th>',
                '<th title="seconds of audio per second of compute">speed<br><span class=unit>&times; real time</span></th>']  # fmt: skip
    out += ["<th>files</th></tr></thead><tbody>"]
    for v in variants:
        d = info.get(v, {})
        mean, median = d.get("mean") or {}, d.get("median") or {}
        mine = by_variant.get(v, [])
        out.append(f'<tr{"" if _is_reconstruction(summary, v) else " class=nr"}>{_variant_name(summary, v)}{_rate_cell(d)}')
        for m in metrics:
            cell_reasons = [reasons[(r["file"], v, m)] for r in mine if (r["file"], v, m) in reasons]
            out.append(_stat_cell(m, mean.get(m), median.get(m), [r.get(m) for r in mine], cell_reasons, best[m]))
        for key, column in timing.items():
            text = _text(d.get(key), column)
            out.append(_cell(text, best=text in best_timing[key]))
        out.append(_cell(_text(d.get("files", len(mine) or None), Column("files", decimals=0))) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


# What the streamed waveform metrics are (recon.metric_stream states each one's tolerance).
STREAMED_METRICS = ("each equal to its whole-file value up to float32 rounding, but energy above 4 kHz (hf_retention), "
                    "taken from a 1 Hz STFT instead of one whole-file DFT: within about 2 % where the output keeps a high band")


def _streaming_note(summary: dict, rows: list[dict]) -> str | None:
    """How the metrics of streamed files (longer than the run's ``--stream-above``) were computed, if any was."""
    limit = summary.get("run", {}).get("stream_above")
    durations = {r["file"]: r.get("duration_s") for r in rows}
    streamed = [f for f, d in durations.items() if _finite(d) and _finite(limit) and d > limit]
    if not streamed:
        return None
    return (f"{len(streamed)} file(s) longer than {limit:g} s were streamed window by window: their waveform metrics were "
            f"accumulated over the windows ({STREAMED_METRICS}); PESQ, STOI and ViSQOL of a file longer than "
            f"{M.PERCEPTUAL_WHOLE_SECONDS:g} s are the mean over {M.PERCEPTUAL_EXCERPTS} excerpts of {M.PERCEPTUAL_EXCERPT_SECONDS:g} s, "
            "not the whole-file value (they have no streamed form; the row's notes say so).")


def _summary_notes(summary: dict, variants: list[str], reasons: dict, rows: list[dict] = ()) -> str:
    notes = [
        "Means over files (hover a cell for the median). &darr; lower is better, &uarr; higher is better, "
        "&rarr;1 best at 1; the best value of each column is <span style='background:#d4edda;font-weight:700'>marked</span> "
        f"among the reconstructions. {NOT_APPLICABLE} not applicable to the variant; {UNDEFINED} undefined."
    ]
    if any(not _is_reconstruction(summary, v) for v in variants):
        notes.append(
            "Rows marked <span class=badge>not a reconstruction</span> do not try to reproduce the input "
            "(e.g. text-to-audio); their metrics are for reference only."
        )
    notes.append(
        "PESQ, STOI and ViSQOL speech are speech measures, ViSQOL audio is for every file: n/a where they are undefined (reference too short or with "
        f"no utterance, an output that is silent or more than {M.NEAR_SILENT_DB:g} dB below the input); "
        "<sup class=part>k/n</sup>: the mean covers k of n files."
    )
    streamed = _streaming_note(summary, rows)
    if streamed:
        notes.append(streamed)
    out = "".join(f"<p class=small>{n}</p>" for n in notes)
    if reasons:
        items = "".join(f"<li>{_e(r)}: {n} cell(s)</li>" for r, n in _counts(_short_reason(r) for r in reasons.values()).items())
        out += f"<details><summary class=small>Why PESQ/STOI/ViSQOL are n/a ({len(reasons)} cells)</summary><ul class=small>{items}</ul></details>"
    descriptions = [(v, summary.get("variants", {}).get(v, {}).get("description")) for v in variants]
    if any(d for _, d in descriptions):
        items = "".join(f"<dt>{_e(v)}</dt><dd>{_e(d or '')}</dd>" for v, d in descriptions)
        out += f"<details><summary class=small>What each variant does</summary><dl class=variants>{items}</dl></details>"
    return out


# --------------------------------------------------------------------------------------------------
# the evaluation view: rate against distortion, the hardest files

PLOT_W, PLOT_H = 520, 250
PLOT_MARGIN = (58, 14, 14, 40)  # left, right, top, bottom


def _bps_text(bps: float) -> str:
    return f"{bps / 1000:g}k" if bps >= 1000 else f"{bps:g}"


def rate_distortion_svg(points: Sequence[E.RatePoint], front: set[str], metric: str, better: str) -> str:
    """An inline SVG: x = bits per second (log scale), y = ``metric`` (worse upwards), one dot per
    point (hollow where the rate is nominal, not measured), the Pareto front filled red and joined
    by its staircase, each dot labelled with its variant."""
    left, right, top, bottom = PLOT_MARGIN
    xs = [math.log10(p.bps) for p in points]
    ys = [p.value for p in points]
    x0, x1 = min(xs) - 0.15, max(xs) + 0.15
    pad = (max(ys) - min(ys)) * 0.1 or abs(ys[0]) * 0.1 or 1.0
    y0, y1 = min(ys) - pad, max(ys) + pad
    worse_up = better == "lower"

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (PLOT_W - left - right)

    def py(y: float) -> float:
        frac = (y - y0) / (y1 - y0)
        return top + (1 - frac if worse_up else frac) * (PLOT_H - top - bottom)

    out = [f'<svg class=rd width="{PLOT_W}" height="{PLOT_H}" viewBox="0 0 {PLOT_W} {PLOT_H}" role="img" '
           f'aria-label="{_e(metric)} against bits per second">',
           f'<rect x="{left}" y="{top}" width="{PLOT_W - left - right}" height="{PLOT_H - top - bottom}" fill="#fff" stroke="#bbb"/>']  # fmt: skip
    for k in range(math.floor(x0), math.ceil(x1) + 1):
        for m in (1, 2, 5):
            x = k + math.log10(m)
            if x0 <= x <= x1:
                out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{PLOT_H - bottom}" stroke="#eee"/>'
                           f'<text x="{px(x):.1f}" y="{PLOT_H - bottom + 13}" text-anchor="middle">{_bps_text(m * 10**k)}</text>')  # fmt: skip
    for i in range(5):
        y = y0 + (y1 - y0) * (i + 0.5) / 5
        out.append(f'<text x="{left - 4}" y="{py(y) + 3:.1f}" text-anchor="end">{y:.3g}</text>')
    column = _column(metric)
    out.append(f'<text x="{(left + PLOT_W - right) / 2}" y="{PLOT_H - 6}" text-anchor="middle">bits per second (log scale)</text>')
    out.append(f'<text x="12" y="{top + 4}" transform="rotate(-90 12 {top + 4})" text-anchor="end">'
               f'{_e(column.label)} {_e(column.unit)} ({"lower" if worse_up else "higher"} is better)</text>')  # fmt: skip
    on_front = sorted((p for p in points if p.variant in front), key=lambda p: p.bps)
    steps = []
    for a, b in zip(on_front, on_front[1:]):
        steps += [(px(math.log10(a.bps)), py(a.value)), (px(math.log10(b.bps)), py(a.value))]
    if on_front:
        steps.append((px(math.log10(on_front[-1].bps)), py(on_front[-1].value)))
        out.append('<polyline fill="none" stroke="#d9534f" stroke-width="1.5" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in steps) + '"/>')  # fmt: skip
    for p in points:
        x, y = px(math.log10(p.bps)), py(p.value)
        colour = "#d9534f" if p.variant in front else "#3b6ea8"
        fill = colour if p.measured else "#fff"
        title = f"{p.variant}: {_bps_text(p.bps)} bps ({'measured' if p.measured else 'nominal'}), {metric} {p.value:.4g}"
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{colour}" stroke-width="1.5"><title>{_e(title)}</title></circle>'
                   f'<text x="{x + 6:.1f}" y="{y - 5:.1f}">{_e(p.variant)}</text>')  # fmt: skip
    out.append("</svg>")
    return "".join(out)


def _rate_distortion(summary: dict) -> str:
    """The rate-distortion plots (one per distortion the run has) and their table."""
    rd = E.rate_distortion(summary)
    if not rd.metrics:
        return ""
    out = ['<h2 id="rate-distortion">Rate against distortion</h2>']
    if not rd.points:
        out.append("<p class=note>No variant of this run has a bitrate: nothing to plot.</p>")
    else:
        plots = []
        for metric, better in rd.metrics:
            points = [by[metric] for by in rd.points.values() if metric in by]
            if points:
                plots.append(f"<figure>{rate_distortion_svg(points, rd.fronts[metric], metric, better)}</figure>")
        out.append("<div class=plots>" + "".join(plots) + "</div>")
        out.append("<div class=scroll><table id=rate-table><thead><tr><th>variant</th><th>rate<br><span class=unit>kbps</span></th>"
                   + "".join(_header(m) for m, _ in rd.metrics) + "</tr></thead><tbody>")  # fmt: skip
        for variant, by_metric in sorted(rd.points.items(), key=lambda kv: next(iter(kv[1].values())).bps):
            first = next(iter(by_metric.values()))
            rate = f"{first.bps / 1000:.2f}" + ("" if first.measured else " (nominal)")
            out.append(f"<tr><td class=name>{_e(variant)}</td><td class=num>{rate}</td>")
            for metric, _ in rd.metrics:
                p = by_metric.get(metric)
                on_front = bool(p and variant in rd.fronts[metric])
                out.append(_cell(_text(p.value if p else None, _column(metric)) + (" ★" if on_front else ""), best=on_front))
            out.append("</tr>")
        out.append("</tbody></table></div>")
    notes = ("x: bits per second measured from the files each variant wrote (headers included), or its nominal rate "
             "where it wrote none (hollow dots, \"nominal\"); y: the mean over files. ★ and red: on the Pareto front "
             "(no other variant has at most its rate and a distortion at least as good).")  # fmt: skip
    out.append(f"<p class=small>{notes}</p>")
    reasons: dict[str, list[str]] = {}
    for variant, why in rd.left_out.items():
        reasons.setdefault(why, []).append(variant)
    out += [f"<p class=small>Not plotted, {_e(why)}: {_e(', '.join(names))}.</p>" for why, names in reasons.items()]
    return "".join(out)


def _workflow_table(summary: dict, variants: list[str], metrics: list[str], rows: list[dict], reasons: dict) -> str:
    if not variants or not metrics:
        return ""
    return ('<h2 id="workflow">Spectral errors (the DDCM-on-AudioLDM2 evaluation)</h2>'
            + _summary_table(summary, variants, metrics, rows, reasons, table_id="workflow-table", timing_columns=False)
            + "<p class=small>128 HTK mel bins in dB of power (0-8 kHz, 80 dB range per signal), split at bin 42 "
            "(0.9 kHz) into low and high bands; STFT magnitudes with n_fft 1024, hop 256; spectral centroid in Hz; "
            "Pearson correlation of the waveforms; frame-RMS envelope (1024 / 256). Formulas: recon/metrics.py.</p>")  # fmt: skip


def _hardest(summary: dict, variants: list[str], rows: list[dict], count: int = 3) -> str:
    """Per reconstruction, its ``count`` hardest files with their failure tags (recon.evaluation)."""
    body = []
    for v in variants:
        if not _is_reconstruction(summary, v):
            continue
        metric, hardest = E.hardest_files(rows, v, count)
        if not hardest:
            continue
        items = []
        for row, tags in hardest:
            badges = "".join(f"<span class=tag>{_e(t)}</span>" for t in tags)
            items.append(f"<span class=fname>{_e(row['file'])}</span> {_text(row[metric], _column(metric))} dB {badges}")
        body.append(f"<tr><td class=name>{_e(v)}</td><td>{_e(metric)}</td><td>{'<br>'.join(items)}</td></tr>")
    if not body:
        return ""
    rules = "".join(f"<li><span class=tag>{_e(t)}</span> {_e(rule)}</li>" for t, rule in E.TAG_RULES.items())
    return ('<h2 id="hardest">Hardest files per variant</h2>'
            f"<p class=small>The {count} files with the largest error per variant, worst first, tagged by what goes wrong. Rules:</p>"
            f"<ul class=small>{rules}</ul>"
            f"<details><summary class=small>Hardest files of {len(body)} variant(s)</summary>"
            "<div class=scroll><table id=hardest-table><thead><tr><th>variant</th><th>by</th><th>files</th></tr></thead><tbody>"
            + "".join(body) + "</tbody></table></div></details>")  # fmt: skip


def _kv_table(data: dict) -> str:
    rows = []
    for k, v in data.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        rows.append(f"<tr><th>{_e(k)}</th><td>{_e(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _settings(summary: dict) -> str:
    run, timing = summary.get("run") or {}, summary.get("timing")
    body = _kv_table(run) if run else "<p class=note>no run settings recorded</p>"
    if timing:
        body += "<p class=small>Timing</p>" + _kv_table(timing)
    return f"<details><summary><b>Run settings</b> ({len(run)})</summary>{body}</details>"


def _errors(errors: list[dict]) -> str:
    if not errors:
        return ""
    cols = ordered_unique(k for row in errors for k in row)
    out = [f'<h2 id="errors">Errors ({len(errors)})</h2><p class=small>From errors.csv; an empty variant means the whole input failed.</p>']
    out.append("<div class=errors><table><thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>")
    for row in errors:
        out.append("<tr>" + "".join(f"<td>{_e(row.get(c, ''))}</td>" for c in cols) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _file_grid(file: str, variants: list[str], by_key: dict, metrics: list[str], summary: dict, reasons: dict) -> str:
    """The metrics of one file: variants as rows, like the summary table."""
    scored = [v for v in variants if _is_reconstruction(summary, v)]
    best = {m: _best_texts((by_key.get((file, v), {}).get(m) for v in scored), _column(m)) for m in metrics}
    out = ["<div class=scroll><table class=grid><thead><tr><th>variant</th>", *(_header(m, explain=False) for m in metrics)]
    notes = any(by_key.get((file, v), {}).get("notes") for v in variants)
    out.append(f'<th>time<br><span class=unit>s</span></th>{"<th>notes</th>" if notes else ""}</tr></thead><tbody>')
    for v in variants:
        row = by_key.get((file, v))
        out.append(f'<tr{"" if _is_reconstruction(summary, v) else " class=nr"}>{_variant_name(summary, v, explain=False)}')
        if row is None:
            out.append(f'<td colspan={len(metrics) + 1 + notes} class=missing>no metrics (see errors)</td></tr>')
            continue
        for m in metrics:
            text = _text(row.get(m), _column(m))
            out.append(_cell(text, best=text in best[m], title=reasons.get((file, v, m), "")))
        out.append(_cell(_text(row.get("seconds"), Column("s", decimals=2))))
        out.append((f"<td class=small>{_e(row.get('notes') or '')}</td>" if notes else "") + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _media_cards(out_dir: Path, file: str, variants: list[str], summary: dict, media: _Media, spec: AudioSpec) -> str:
    out = ["<div class=cards>"]
    for v in [INPUT_NAME, *variants]:
        path = wav_path(out_dir, v, file)
        cls = "ref" if v == INPUT_NAME else ("" if _is_reconstruction(summary, v) else "nr")
        out.append(f'<div class="card {cls}"><div class=name>{_e(v)}</div>')
        wav = load_wav(path, spec, EXCERPT_SECONDS)
        if wav is None:
            out.append(f'<div class="missing">missing or unreadable: {_e(path.relative_to(out_dir).as_posix())}</div></div>')
            continue
        total = sf.info(str(path)).duration
        if total > EXCERPT_SECONDS:  # a linked player plays the whole file; what the page holds is the excerpt
            shown = "audio and spectrogram" if media.embed else "spectrogram"
            out.append(f'<div class=small>{shown}: first {EXCERPT_SECONDS:g} s of {total:.0f} s</div>')
        out.append(f'<audio controls preload="metadata" src="{_e(media.audio(path, wav))}"></audio>')
        out.append(f'<img loading="lazy" alt="log-mel spectrogram of {_e(v)}" src="{_e(media.image(v, file, wav))}"></div>')
    out.append("</div>")
    return "".join(out)


def _file_section(out_dir: Path, file: str, variants: list[str], by_key: dict, metrics: list[str], summary: dict,
                  reasons: dict, errors: list[dict], media: _Media | None, spec: AudioSpec) -> str:  # fmt: skip
    """One file, collapsed: its name, length and problems on one line; metrics, players, spectrograms inside."""
    mine = [by_key[(file, v)] for v in variants if (file, v) in by_key]
    facts = []
    duration = next((r["duration_s"] for r in mine if _finite(r.get("duration_s"))), None)
    if duration is not None:
        facts.append(f"{duration:.1f} s")
    failed = sum(e.get("file") == file for e in errors)
    if failed:
        facts.append(f'<span class=missing>{failed} error(s)</span>')
    undefined = sum(k[0] == file for k in reasons)
    if undefined:
        facts.append(f"{undefined} PESQ/STOI n/a")
    facts.append("audio + spectrograms" if media is not None else "metrics only")
    out = [f'<details class=file><summary><code>{_e(file)}</code> <span class=small>&middot; {" &middot; ".join(facts)}</span></summary>']
    out.append(_file_grid(file, variants, by_key, metrics, summary, reasons))
    if media is not None:
        out.append(_media_cards(out_dir, file, variants, summary, media, spec))
    out.append("</details>")
    return "".join(out)


def build_html(out_dir: str | Path, max_files: int = 12, spec: AudioSpec = AudioSpec(), embed: bool = False) -> str:
    """The report page as a string (see :func:`write_html_report`); unless ``embed``, it writes the
    spectrogram images under ``OUT/report_files``."""
    out_dir = Path(out_dir)
    rows = read_metrics(out_dir)
    summary = read_summary(out_dir)
    errors = read_errors(out_dir)
    variants = _variants(summary, rows)
    files = listed_files(out_dir, rows)
    csv_metrics = metric_columns(out_dir)
    summary_metrics = ordered_unique(m for d in summary["variants"].values() for m in (d.get("mean") or {}))
    all_metrics = [m for m in sort_metrics(ordered_unique([*csv_metrics, *summary_metrics])) if m not in RATE_COLUMNS]
    # The workflow's spectral errors get a table of their own, so the summary fits a laptop screen.
    metrics = [m for m in all_metrics if _column(m).table != "workflow"]
    workflow_metrics = [m for m in all_metrics if _column(m).table == "workflow"]
    by_key = {(r["file"], r["variant"]): r for r in rows}
    reasons = _undefined_reasons(out_dir, rows, spec)
    media = _Media(out_dir, embed, spec)
    with_media = set(files[: max(0, max_files)])

    title = f"recon reconstruction report - {out_dir.name}"
    error_link = f'<a href="#errors">{len(errors)} error(s)</a>' if errors else "no errors"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _banner(summary.get("run") or {}),
        f"<p class=small>{len(files)} file(s) &times; {len(variants)} variant(s), {len(rows)} metric row(s), {error_link}.</p>",
        "<h2>Summary per variant</h2>",
        _summary_table(summary, variants, metrics, rows, reasons) + _summary_notes(summary, variants, reasons, rows)
        if variants
        else "<p class=note>no variants</p>",
        _errors(errors),
        _workflow_table(summary, variants, workflow_metrics, rows, reasons),
        _rate_distortion(summary),
        _hardest(summary, variants, rows),
        "<h2>Run</h2>",
        _settings(summary),
        f"<h2>Files ({len(files)})</h2>",
        "<p class=small>Click a file for its metrics per variant"
        + (f", players and log-mel spectrograms (the first {len(with_media)} of {len(files)} files; --report-max-files)" if files else "")
        + ". Spectrograms: AudioLDM2 front-end, 64 mel bins 0-8 kHz, low frequencies at the bottom, one fixed colour "
        "range ln(1e-5) .. ln(10) (-100 .. +20 dB) for every image. "
        + ("Audio is embedded as 16-bit FLAC." if embed else "Audio links the wavs in this folder; keep the page next to them.")
        + "</p>",
    ]
    if len(files) > len(with_media):
        parts.append(f"<p class=note>{len(files) - len(with_media)} file(s) left out of the players (max_files={max_files}); their metrics are below and in metrics.csv.</p>")
    for file in files:
        parts.append(_file_section(out_dir, file, variants, by_key, metrics, summary, reasons, errors, media if file in with_media else None, spec))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html_report(out_dir: str | Path, max_files: int = 12, embed: bool = False) -> Path:
    """Write ``OUT/report.html`` (atomically) and, unless ``embed``, its images under ``OUT/report_files/``.

    Order: a banner naming the backbone (a warning for random weights), the summary table (variants
    as rows, best value per column marked), errors.csv, the workflow's spectral errors
    (:data:`recon.metrics.WORKFLOW_METRICS`), the rate-distortion plots with their Pareto front and
    the hardest files per variant with failure tags (:mod:`recon.evaluation`), the run settings
    (collapsed), then one
    collapsed section per file with its metrics, and for the first ``max_files`` files an audio
    player and a spectrogram per variant (input first). No JavaScript, no external resources; the
    plots are inline SVG.

    Size: linked (default), the page holds text only (about 2 kB per file x variant) and the images
    ~10-30 kB each sit in ``report_files``; embedded, each 10.24 s clip adds its FLAC (~0.1-0.4 MB
    as base64, less for quiet outputs) and its image, so ``max_files x (variants + 1)`` sets the size.
    """
    out_dir = Path(out_dir)
    # Images of an earlier report (other files, other variants) must not linger beside this one.
    if (out_dir / MEDIA_DIR).is_dir():
        shutil.rmtree(out_dir / MEDIA_DIR)
    path = out_dir / "report.html"
    write_text(path, build_html(out_dir, max_files, embed=embed))
    return path


__all__ = [
    "COLOUR_LUT",
    "SPEC_VMAX",
    "SPEC_VMIN",
    "build_html",
    "metric_columns",
    "read_errors",
    "read_metrics",
    "read_summary",
    "spectrogram_png",
    "wav_bytes",
    "wav_path",
    "write_html_report",
]
