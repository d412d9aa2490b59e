"""Blinded listening tests of an ``infer.py`` output folder: one HTML page, no server.

    recon listen OUT --out session.html [--seed S] [--variants a,b,...] [--trials N] [--mushra]
    recon listen score ANSWERS.json... [--key session.key.json] [--json results.json]

The page
--------
``recon listen OUT`` reads ``OUT/input/<file>.wav`` (the reference) and ``OUT/<variant>/<file>.wav``
and writes one self-contained page holding every stimulus as a WAV data URI, with

* **A/B trials**: the reference, then A and B, two variants of the same file in random order. The
  listener answers "Which of A and B is closer to the reference in timbre and musical noise?",
  with a confidence from 1 (a guess) to 5 (certain) and optional notes.
* **MUSHRA trials** (``--mushra``, after ITU-R BS.1534-3): per file, the open reference and, in
  random order under the labels 1..n, every variant, the **hidden reference** and the **low
  anchor** (the reference low-passed at 3.5 kHz: 8th-order Butterworth run forwards and backwards,
  zero phase), each rated 0-100 on the continuous quality scale (bad / poor / fair / good /
  excellent in steps of 20).

Stimuli are excerpts: the first ``--excerpt`` seconds (default 8; BS.1534 asks for about 10 s at
most) of each file, all of one file cut at the same samples. **Loudness** is matched to the
reference excerpt by ITU-R BS.1770-4 integrated loudness (``torchaudio.functional.loudness``:
K-weighting, 400 ms blocks, gated); an excerpt shorter than one 400 ms block, or gated silent, is
matched by RMS instead. Gains are limited to +-20 dB (a near-silent output stays quiet rather than
becoming loud noise), and all stimuli of a file then share one attenuation that keeps every peak
below 0.99. Each stimulus is quantised to 16 bit with its own seeded TPDF dither, so stimuli of
equal length are WAV files of equal size and no two are byte-identical: the hidden reference cannot
be found by comparing the page's bytes.

The order of files, trials, the A/B sides and the MUSHRA labels come from ``--seed``. The page
holds none of the variant or file names: the key (trial -> variant per label, gains, excerpt) is
written next to it as ``<page>.key.json``. Give listeners the page only.

The answers
-----------
"Save answers" downloads ``answers-<listener>-<session>.json``::

    {"format": "recon-listen-answers/1", "session": ID, "page": URL, "listener": NAME, "saved_at": ISO-8601,
     "answers": [{"trial": "t01", "type": "ab", "preferred": "A" | "B" | null, "confidence": 1-5 | null, "notes": ""},
                 {"trial": "t09", "type": "mushra", "ratings": {"1": 0-100 | null, ...}, "notes": ""}]}

``recon listen score`` unblinds any number of answer files (one key per session: ``--key``, or
``<page>.key.json`` found beside the page the answers name, or beside the answers) and reports,
across listeners:

* per pair of variants, how often each was preferred, the mean confidence and the two-sided
  binomial test of "no preference" (``scipy.stats.binomtest``, p = 0.5); unanswered trials count
  for neither;
* per condition of the MUSHRA trials (each variant, ``reference`` = the hidden reference,
  ``anchor35``), the mean rating with its 95 % confidence interval ``mean +- t_{0.975, n-1} s / sqrt(n)``
  over all ratings. Listeners who rated the hidden reference below 90 in more than 15 % of their
  MUSHRA trials are left out of these means (BS.1534-3 post-screening) and named.

The JSON result also holds the unblinded ratings as rows in webMUSHRA's CSV columns
(``trial_id, rating_stimulus, rating_score, rating_comment``; ``choice_answer`` for A/B).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import itertools
import json
import math
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from . import files
from .audio import AudioSpec
from .report import INPUT_NAME, listed_files, load_wav, read_metrics, read_summary, wav_path

ANSWERS_FORMAT = "recon-listen-answers/1"
KEY_FORMAT = "recon-listen-key/1"
QUESTION = "Which of A and B is closer to the reference in timbre and musical noise?"
HIDDEN_REFERENCE = "reference"
LOW_ANCHOR = "anchor35"
ANCHOR_CUTOFF_HZ = 3500.0  # BS.1534-3's mandatory low anchor
ANCHOR_ORDER = 8
MAX_GAIN_DB = 20.0
PEAK_LIMIT = 0.99
BS1770_MIN_SECONDS = 0.4  # one gating block
LOUDNESS_PEAK = 0.1  # level at which loudness is measured (see loudness_db)
SCREEN_REFERENCE_BELOW = 90.0  # BS.1534-3 post-screening: the hidden reference rated below 90 ...
SCREEN_FRACTION = 0.15  # ... in more than 15 % of the trials
DEFAULT_EXCERPT_S = 8.0
DEFAULT_TRIALS = 20


class ListenError(ValueError):
    """A one-line problem with the folder, the answers or the key."""


# --------------------------------------------------------------------------------------------------
# stimuli


def loudness_db(x: np.ndarray, sample_rate: int) -> tuple[float, str]:
    """``(level, method)``: BS.1770-4 integrated loudness in LUFS, or RMS in dBFS where that is
    undefined (shorter than one 400 ms block, or gated silent); ``-inf`` for digital silence."""
    if not np.any(x):
        return -math.inf, "silent"
    if x.size >= BS1770_MIN_SECONDS * sample_rate:
        import torch
        import torchaudio.functional as AF

        # torchaudio's K-weighting filters clamp their output to [-1, 1]: measure at a peak of 0.1,
        # where nothing clips, and add the gain back (the loudness of g x is that of x plus 20 log10 g)
        scale = LOUDNESS_PEAK / float(np.abs(x).max())
        lufs = float(AF.loudness(torch.from_numpy((x * scale).astype(np.float32))[None], sample_rate)) - 20 * math.log10(scale)
        if math.isfinite(lufs):
            return lufs, "BS.1770"
    return _rms_db(x), "RMS"


def low_anchor(reference: np.ndarray, sample_rate: int) -> np.ndarray:
    """The reference low-passed at 3.5 kHz (8th-order Butterworth, forwards and backwards)."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(ANCHOR_ORDER, ANCHOR_CUTOFF_HZ, btype="lowpass", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, reference.astype(np.float64)).astype(np.float32)


def match_loudness(reference: np.ndarray, others: dict[str, np.ndarray], sample_rate: int) -> tuple[dict[str, np.ndarray], dict]:
    """Scale every signal of ``others`` to the reference's loudness (gain within +-20 dB), then all of
    them and the reference by one factor that keeps each peak below 0.99. Returns the signals
    (reference under ``INPUT_NAME``) and a record of the levels and gains for the key."""
    target, method = loudness_db(reference, sample_rate)
    out, gains = {INPUT_NAME: reference.astype(np.float64)}, {}
    for name, x in others.items():
        level, how = loudness_db(x, sample_rate)
        if "silent" in (method, how):
            gain_db = 0.0  # nothing to match
        elif how == method:
            gain_db = target - level
        else:  # one of the two has no BS.1770 loudness: compare RMS with RMS
            gain_db = _rms_db(reference) - _rms_db(x)
        gain_db = float(np.clip(gain_db, -MAX_GAIN_DB, MAX_GAIN_DB))
        gains[name] = gain_db
        out[name] = x.astype(np.float64) * 10 ** (gain_db / 20)
    peak = max(float(np.abs(x).max(initial=0.0)) for x in out.values())
    common_db = 20 * math.log10(PEAK_LIMIT / peak) if peak > PEAK_LIMIT else 0.0
    out = {k: (v * 10 ** (common_db / 20)).astype(np.float32) for k, v in out.items()}
    return out, {"method": method, "reference_level": target if math.isfinite(target) else None, "gains_db": gains, "common_gain_db": common_db}


def _rms_db(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def pcm16_wav(x: np.ndarray, sample_rate: int, dither_seed: int) -> bytes:
    """16-bit mono WAV bytes of ``x`` with TPDF dither (+-1 LSB) drawn from ``dither_seed``."""
    rng = np.random.default_rng(dither_seed)
    dither = rng.random(x.size) - rng.random(x.size)
    q = np.clip(np.round(x.astype(np.float64) * 32767.0 + dither), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, q, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# the session


@dataclass
class SessionSpec:
    out_dir: Path
    page: Path
    seed: int = 0
    variants: list[str] | None = None
    trials: int = DEFAULT_TRIALS
    mushra: bool = False
    excerpt_s: float = DEFAULT_EXCERPT_S
    max_files: int = 6


def key_path(page: Path) -> Path:
    """Where the key of ``page`` lives: ``session.html`` -> ``session.key.json`` beside it."""
    return page.with_name(page.stem + ".key.json")


def _choose_variants(out_dir: Path, requested: list[str] | None) -> list[str]:
    summary, rows = read_summary(out_dir), read_metrics(out_dir)
    known = [v for v in dict.fromkeys([*summary["variants"], *(r["variant"] for r in rows)]) if v != INPUT_NAME]
    if requested:
        unknown = [v for v in requested if v not in known]
        if unknown:
            raise ListenError(f"{out_dir} has no variant(s) {', '.join(unknown)}; it has {', '.join(known) or 'none'}")
        return list(dict.fromkeys(requested))
    # by default the reconstructions: a generated clip is not a candidate for "closer to the reference"
    return [v for v in known if summary["variants"].get(v, {}).get("is_reconstruction", True) is not False]


def build_session(spec: SessionSpec) -> tuple[dict, dict]:
    """``(page_data, key)`` of a session: the page's trials and stimuli, and the key that unblinds them."""
    out_dir, audio = Path(spec.out_dir), AudioSpec()
    if not (out_dir / INPUT_NAME).is_dir():
        raise ListenError(f"{out_dir} is not an infer.py output folder (no {INPUT_NAME}/ inside)")
    variants = _choose_variants(out_dir, spec.variants)
    if len(variants) < (1 if spec.mushra else 2):
        raise ListenError(f"A/B trials need two variants, {out_dir} offers {len(variants)}: {', '.join(variants) or 'none'}")
    rng = np.random.default_rng(spec.seed)
    excerpt = int(round(spec.excerpt_s * audio.sample_rate))
    if excerpt < audio.sample_rate // 10:
        raise ListenError(f"--excerpt {spec.excerpt_s:g} s is too short to hear anything (at least 0.1 s)")

    usable, skipped = [], []
    for file in listed_files(out_dir, read_metrics(out_dir)):
        waves = {v: load_wav(wav_path(out_dir, v, file), audio, spec.excerpt_s) for v in [INPUT_NAME, *variants]}
        missing = [v for v, w in waves.items() if w is None]
        if missing:
            skipped.append(f"{file} (missing {', '.join(missing)})")
            continue
        n = min(excerpt, *(w.size for w in waves.values()))
        usable.append((file, {v: w[:n] for v, w in waves.items()}))
    if not usable:
        raise ListenError(f"no file in {out_dir} has the reference and every variant ({', '.join(variants)})")
    order = rng.permutation(len(usable))[: spec.max_files]
    usable = [usable[i] for i in sorted(order)]

    stimuli: dict[str, str] = {}
    ids: dict[tuple[str, str], str] = {}
    levels = {}

    def add(file: str, condition: str, x: np.ndarray) -> str:
        sid = f"s{int(rng.integers(1 << 40)):010x}"
        dither_seed = int(rng.integers(1 << 62))
        stimuli[sid] = "data:audio/wav;base64," + base64.b64encode(pcm16_wav(x, audio.sample_rate, dither_seed)).decode("ascii")
        ids[(file, condition)] = sid
        return sid

    for file, waves in usable:
        others = {v: waves[v] for v in variants}
        if spec.mushra:
            others[HIDDEN_REFERENCE] = waves[INPUT_NAME].copy()
            others[LOW_ANCHOR] = low_anchor(waves[INPUT_NAME], audio.sample_rate)
        matched, levels[file] = match_loudness(waves[INPUT_NAME], others, audio.sample_rate)
        # stimuli enter the page in a random order: their position says nothing either
        for name in rng.permutation(list(matched)):
            add(file, str(name), matched[str(name)])

    page_trials, key_trials = [], {}
    combos = [(file, a, b) for file, _ in usable for a, b in itertools.combinations(variants, 2)]
    chosen = [combos[i] for i in rng.permutation(len(combos))[: max(0, spec.trials)]]
    blocks = [("ab", chosen)]
    if spec.mushra:
        blocks.append(("mushra", [usable[i][0] for i in rng.permutation(len(usable))]))
    for kind, items in blocks:
        for item in items:
            trial = f"t{len(page_trials) + 1:02d}"
            if kind == "ab":
                file, a, b = item
                if rng.random() < 0.5:
                    a, b = b, a
                page_trials.append({"id": trial, "type": "ab", "reference": ids[(file, INPUT_NAME)], "A": ids[(file, a)], "B": ids[(file, b)]})
                key_trials[trial] = {"type": "ab", "file": file, "A": a, "B": b}
            else:
                file = item
                conditions = [*variants, HIDDEN_REFERENCE, LOW_ANCHOR]
                shuffled = [conditions[i] for i in rng.permutation(len(conditions))]
                slots = {str(i + 1): c for i, c in enumerate(shuffled)}
                page_trials.append({"id": trial, "type": "mushra", "reference": ids[(file, INPUT_NAME)],
                                    "slots": [{"label": label, "stimulus": ids[(file, c)]} for label, c in slots.items()]})  # fmt: skip
                key_trials[trial] = {"type": "mushra", "file": file, "slots": slots}
    if not page_trials:
        raise ListenError("the session has no trials: pass --trials > 0 or --mushra")
    session = hashlib.sha256(json.dumps([str(out_dir.resolve()), spec.seed, key_trials], sort_keys=True).encode()).hexdigest()[:12]
    page = {"format": "recon-listen-session/1", "session": session, "question": QUESTION, "stimuli": stimuli, "trials": page_trials}
    key = {
        "format": KEY_FORMAT, "session": session, "page": spec.page.name, "source": str(out_dir), "seed": spec.seed,
        "variants": variants, "excerpt_s": spec.excerpt_s, "sample_rate": audio.sample_rate,
        "loudness": levels, "skipped_files": skipped, "trials": key_trials,
    }  # fmt: skip
    return page, key


def write_session(spec: SessionSpec) -> tuple[Path, Path, dict]:
    """Write the page and its key; returns their paths and the key."""
    page_path, key_file = Path(spec.page), key_path(Path(spec.page))
    page, key = build_session(spec)
    files.write_text(page_path, render_page(page))
    files.write_text(key_file, json.dumps(key, indent=2) + "\n")
    return page_path, key_file, key


# --------------------------------------------------------------------------------------------------
# the page (plain HTML + JS; the session data is JSON inside it)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1em auto;max-width:60em;padding:0 1em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:.2em 0}.small{font-size:12px;color:#555}
.box{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:.6em 0}
.row{display:flex;align-items:center;gap:.8em;margin:.35em 0;flex-wrap:wrap}.row .label{min-width:6.5em;font-weight:600}
audio{height:32px;width:22em;max-width:100%}
.choice label{margin-right:1em}textarea{width:100%;height:3.5em}
.scale{display:flex;justify-content:space-between;width:22em;font-size:11px;color:#666}
input[type=range]{width:22em}.value{min-width:2.5em;text-align:right;font-variant-numeric:tabular-nums}
button{font-size:14px;padding:.3em .9em}#status{margin-left:1em;color:#355}
"""

_JS = r"""
(function () {
  "use strict";
  var S = JSON.parse(document.getElementById("session-data").textContent);
  var answers = S.trials.map(function (t) {
    if (t.type === "ab") return {trial: t.id, type: "ab", preferred: null, confidence: null, notes: ""};
    var r = {}; t.slots.forEach(function (s) { r[s.label] = null; });
    return {trial: t.id, type: "mushra", ratings: r, notes: ""};
  });
  var current = 0;
  var $ = function (id) { return document.getElementById(id); };

  function player(sid) {
    var a = document.createElement("audio");
    a.controls = true; a.preload = "none"; a.src = S.stimuli[sid];
    return a;
  }
  function row(label, child) {
    var d = document.createElement("div"); d.className = "row";
    var l = document.createElement("span"); l.className = "label"; l.textContent = label;
    d.appendChild(l); if (child) d.appendChild(child); return d;
  }
  function radios(name, values, checked, onchange) {
    var span = document.createElement("span"); span.className = "choice";
    values.forEach(function (v) {
      var lab = document.createElement("label"), inp = document.createElement("input");
      inp.type = "radio"; inp.name = name; inp.value = String(v); inp.id = name + "-" + v;
      inp.checked = checked !== null && String(checked) === String(v);
      inp.addEventListener("change", function () { onchange(v); });
      lab.appendChild(inp); lab.appendChild(document.createTextNode(" " + v)); span.appendChild(lab);
    });
    return span;
  }
  function render() {
    var t = S.trials[current], a = answers[current], box = $("trial");
    box.innerHTML = "";
    $("progress").textContent = "Trial " + (current + 1) + " of " + S.trials.length;
    var h = document.createElement("h2"); h.id = "trial-title";
    h.textContent = (t.type === "ab" ? "A/B " : "MUSHRA ") + "trial " + (current + 1);
    box.appendChild(h);
    box.appendChild(row("Reference", player(t.reference)));
    if (t.type === "ab") {
      box.appendChild(row("A", player(t.A)));
      box.appendChild(row("B", player(t.B)));
      var q = document.createElement("p"); q.textContent = S.question; box.appendChild(q);
      box.appendChild(row("Closer", radios("preferred", ["A", "B"], a.preferred, function (v) { a.preferred = v; saveLocal(); })));
      box.appendChild(row("Confidence", radios("confidence", [1, 2, 3, 4, 5], a.confidence, function (v) { a.confidence = v; saveLocal(); })));
      var hint = document.createElement("p"); hint.className = "small";
      hint.textContent = "Confidence: 1 = a guess, 5 = certain."; box.appendChild(hint);
    } else {
      var p = document.createElement("p");
      p.textContent = "Rate each sample against the reference, 0 (bad) to 100 (excellent). One of them is the reference itself; one is a low-passed version of it.";
      box.appendChild(p);
      t.slots.forEach(function (s) {
        var r = row("Sample " + s.label, player(s.stimulus));
        var wrap = document.createElement("span");
        var scale = document.createElement("div"); scale.className = "scale";
        ["bad", "poor", "fair", "good", "excellent"].forEach(function (w) { var x = document.createElement("span"); x.textContent = w; scale.appendChild(x); });
        var slider = document.createElement("input"); slider.type = "range"; slider.min = 0; slider.max = 100; slider.step = 1;
        slider.id = "rate-" + s.label; slider.value = a.ratings[s.label] === null ? 50 : a.ratings[s.label];
        var val = document.createElement("span"); val.className = "value"; val.id = "value-" + s.label;
        val.textContent = a.ratings[s.label] === null ? "–" : a.ratings[s.label];
        slider.addEventListener("input", function () { a.ratings[s.label] = Number(slider.value); val.textContent = slider.value; saveLocal(); });
        wrap.appendChild(scale); wrap.appendChild(slider); r.appendChild(wrap); r.appendChild(val);
        box.appendChild(r);
      });
    }
    var n = document.createElement("textarea"); n.id = "notes"; n.placeholder = "Notes (optional)"; n.value = a.notes;
    n.addEventListener("input", function () { a.notes = n.value; saveLocal(); });
    box.appendChild(n);
    $("prev").disabled = current === 0;
    $("next").disabled = current === S.trials.length - 1;
  }
  function unanswered() {
    return answers.filter(function (a) {
      if (a.type === "ab") return a.preferred === null || a.confidence === null;
      return Object.keys(a.ratings).some(function (k) { return a.ratings[k] === null; });
    }).length;
  }
  function saveLocal() {
    try { localStorage.setItem("recon-listen-" + S.session, JSON.stringify({listener: $("listener").value, answers: answers})); } catch (e) { /* storage off: answers live in the page until saved */ }
  }
  function restoreLocal() {
    var raw = null;
    try { raw = localStorage.getItem("recon-listen-" + S.session); } catch (e) { return; }
    if (!raw) return;
    var saved = JSON.parse(raw);
    if (saved.answers && saved.answers.length === answers.length) answers = saved.answers;
    $("listener").value = saved.listener || "";
  }
  function result() {
    return {format: "recon-listen-answers/1", session: S.session, page: location.href,
            listener: $("listener").value.trim(), saved_at: new Date().toISOString(), answers: answers};
  }
  function save() {
    var listener = $("listener").value.trim();
    if (!listener) { $("status").textContent = "Enter your name first."; $("listener").focus(); return; }
    var blob = new Blob([JSON.stringify(result(), null, 1)], {type: "application/json"});
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "answers-" + listener.replace(/[^A-Za-z0-9_-]+/g, "_") + "-" + S.session + ".json";
    document.body.appendChild(link); link.click(); link.remove();
    var open = unanswered();
    $("status").textContent = "Saved " + link.download + (open ? " (" + open + " trial(s) not fully answered)" : "") + ".";
  }
  $("prev").addEventListener("click", function () { if (current > 0) { current--; render(); } });
  $("next").addEventListener("click", function () { if (current < S.trials.length - 1) { current++; render(); } });
  $("save").addEventListener("click", save);
  $("listener").addEventListener("input", saveLocal);
  restoreLocal();
  render();
})();
"""


def render_page(page: dict) -> str:
    """The session page: instructions, the listener's name, one trial at a time, Save answers."""
    data = json.dumps(page, separators=(",", ":")).replace("</", "<\\/")
    counts = {kind: sum(t["type"] == kind for t in page["trials"]) for kind in ("ab", "mushra")}
    parts = [f"{counts['ab']} A/B trial(s)"] + ([f"{counts['mushra']} MUSHRA trial(s)"] if counts["mushra"] else [])
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Listening session {html.escape(page['session'])}</title><style>{_CSS}</style></head><body>"
        f"<h1>Listening session</h1><p class=small>{', '.join(parts)}. Use headphones in a quiet room; set a comfortable "
        "level on the first trial and keep it. Play each sample as often as you like. Levels are matched. "
        "Answers stay in this browser until you press <b>Save answers</b>, which downloads a file: send that file back.</p>"
        '<div class="box row"><label for=listener class=label>Your name</label><input id=listener autocomplete=name>'
        "<button id=save type=button>Save answers</button><span id=status></span></div>"
        '<div class=box id=trial></div>'
        '<div class=row><button id=prev type=button>&larr; Previous</button><button id=next type=button>Next &rarr;</button>'
        "<span id=progress class=small></span></div>"
        f'<script type="application/json" id="session-data">{data}</script><script>{_JS}</script></body></html>\n'
    )


# --------------------------------------------------------------------------------------------------
# scoring


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ListenError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ListenError(f"{path}: not a readable {what} ({' '.join(str(err).split())})") from None


def _key_for(answers_path: Path, answers: dict, keys: dict[str, dict]) -> dict:
    session = answers.get("session")
    if session in keys:
        return keys[session]
    candidates = []
    page = answers.get("page") or ""
    if page.startswith("file:"):
        candidates.append(key_path(Path(urllib.request.url2pathname(urllib.parse.urlparse(page).path))))
    candidates += sorted(answers_path.parent.glob("*.key.json"))
    for path in candidates:
        if path.is_file():
            key = _read_json(path, "key file")
            if key.get("format") == KEY_FORMAT:
                keys.setdefault(key["session"], key)
    if session not in keys:
        raise ListenError(f"{answers_path}: no key for session {session}; pass --key <page>.key.json")
    return keys[session]


def unblind(answer_files: list[Path], key_files: list[Path] = ()) -> tuple[list[dict], list[dict]]:
    """``(ab, mushra)`` unblinded records across answer files: ``ab`` rows ``{listener, trial, file,
    preferred, other, confidence, notes}`` (``preferred`` None when unanswered), ``mushra`` rows
    ``{listener, trial, file, condition, rating, notes}``."""
    keys: dict[str, dict] = {}
    for path in key_files:
        key = _read_json(path, "key file")
        if key.get("format") != KEY_FORMAT:
            raise ListenError(f"{path}: not a recon listen key file")
        keys[key["session"]] = key
    ab, mushra, seen = [], [], set()
    for path in map(Path, answer_files):
        answers = _read_json(path, "answers file")
        if answers.get("format") != ANSWERS_FORMAT:
            raise ListenError(f"{path}: not a recon listen answers file (format {answers.get('format')!r})")
        key = _key_for(path, answers, keys)
        listener = (answers.get("listener") or "").strip() or path.stem
        if (listener, key["session"]) in seen:
            raise ListenError(f"{path}: a second answers file of listener {listener!r} for session {key['session']}")
        seen.add((listener, key["session"]))
        for a in answers.get("answers", []):
            trial = key["trials"].get(a.get("trial"))
            if trial is None or trial["type"] != a.get("type"):
                raise ListenError(f"{path}: trial {a.get('trial')!r} is not in session {key['session']}")
            if trial["type"] == "ab":
                choice = a.get("preferred")
                if choice not in ("A", "B", None):
                    raise ListenError(f"{path}: trial {a['trial']}: preferred must be A or B, got {choice!r}")
                conf = a.get("confidence")
                ab.append({"listener": listener, "trial": a["trial"], "file": trial["file"], "choice": choice,
                           "preferred": trial[choice] if choice else None, "other": trial["B" if choice == "A" else "A"] if choice else None,
                           "pair": tuple(sorted((trial["A"], trial["B"]))), "confidence": conf, "notes": a.get("notes", "")})  # fmt: skip
            else:
                for label, rating in (a.get("ratings") or {}).items():
                    if label not in trial["slots"]:
                        raise ListenError(f"{path}: trial {a['trial']} has no sample {label!r}")
                    if rating is not None and not (isinstance(rating, (int, float)) and 0 <= rating <= 100):
                        raise ListenError(f"{path}: trial {a['trial']} sample {label}: rating must be 0-100, got {rating!r}")
                    mushra.append({"listener": listener, "trial": a["trial"], "file": trial["file"],
                                   "condition": trial["slots"][label], "rating": rating, "notes": a.get("notes", "")})  # fmt: skip
    return ab, mushra


def ab_preferences(ab: list[dict]) -> list[dict]:
    """Per pair of variants: trials answered, wins of each, mean confidence, two-sided binomial p."""
    from scipy.stats import binomtest

    pairs: dict[tuple[str, str], list[dict]] = {}
    for r in ab:
        pairs.setdefault(r["pair"], []).append(r)
    out = []
    for (a, b), rows in sorted(pairs.items()):
        answered = [r for r in rows if r["preferred"] is not None]
        wins_a = sum(r["preferred"] == a for r in answered)
        n = len(answered)
        confidences = [r["confidence"] for r in answered if isinstance(r["confidence"], (int, float))]
        out.append({
            "a": a, "b": b, "trials": len(rows), "answered": n, "wins_a": wins_a, "wins_b": n - wins_a,
            "share_a": wins_a / n if n else None,
            "mean_confidence": sum(confidences) / len(confidences) if confidences else None,
            "p_value": float(binomtest(wins_a, n, 0.5, alternative="two-sided").pvalue) if n else None,
            "listeners": sorted({r["listener"] for r in answered}),
        })  # fmt: skip
    return out


def screened_listeners(mushra: list[dict]) -> dict[str, float]:
    """Listeners who rated the hidden reference below 90 in more than 15 % of their MUSHRA trials:
    ``{listener: that fraction}`` (BS.1534-3 post-screening)."""
    out = {}
    for listener in sorted({r["listener"] for r in mushra}):
        refs = [r["rating"] for r in mushra if r["listener"] == listener and r["condition"] == HIDDEN_REFERENCE and r["rating"] is not None]
        if refs:
            low = sum(x < SCREEN_REFERENCE_BELOW for x in refs) / len(refs)
            if low > SCREEN_FRACTION:
                out[listener] = low
    return out


def mushra_means(mushra: list[dict], excluded: set[str] = frozenset()) -> list[dict]:
    """Per condition: n ratings, mean, standard deviation and the 95 % t interval of the mean."""
    from scipy.stats import t as student_t

    by: dict[str, list[float]] = {}
    for r in mushra:
        if r["rating"] is not None and r["listener"] not in excluded:
            by.setdefault(r["condition"], []).append(float(r["rating"]))
    out = []
    for condition, values in by.items():
        n, mean = len(values), float(np.mean(values))
        sd = float(np.std(values, ddof=1)) if n > 1 else None
        half = float(student_t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else None
        out.append({"condition": condition, "n": n, "mean": mean, "sd": sd, "ci95_low": mean - half if half is not None else None,
                    "ci95_high": mean + half if half is not None else None})  # fmt: skip
    return sorted(out, key=lambda r: -r["mean"])


def score(answer_files: list[Path], key_files: list[Path] = ()) -> dict:
    """Everything ``recon listen score`` reports, as one JSON-ready dict."""
    ab, mushra = unblind(answer_files, key_files)
    excluded = screened_listeners(mushra)
    return {
        "listeners": sorted({r["listener"] for r in [*ab, *mushra]}),
        "ab": ab_preferences(ab),
        "mushra": mushra_means(mushra, set(excluded)),
        "mushra_excluded_listeners": excluded,
        "webmushra": {
            "paired_comparison": [{"trial_id": r["trial"], "participant": r["listener"], "choice_reference": r["file"],
                                   "choice_non_reference": r["other"], "choice_answer": r["preferred"],
                                   "choice_confidence": r["confidence"], "choice_comment": r["notes"]} for r in ab],  # fmt: skip
            "mushra": [{"trial_id": r["trial"], "participant": r["listener"], "rating_stimulus": r["condition"],
                        "rating_score": r["rating"], "rating_comment": r["notes"]} for r in mushra],  # fmt: skip
        },
    }


def format_results(result: dict) -> str:
    """The text tables of :func:`score`."""
    lines = [f"listeners: {', '.join(result['listeners']) or 'none'}"]
    if result["ab"]:
        lines += ["", "A/B preference (closer to the reference), two-sided binomial test:"]
        w = max(len(f"{r['a']} vs {r['b']}") for r in result["ab"])
        lines.append(f"  {'pair':<{w}}  {'n':>3}  {'wins':>9}  {'share':>5}  {'conf':>4}  {'p':>6}")
        for r in result["ab"]:
            share = f"{r['share_a']:.2f}" if r["share_a"] is not None else "-"
            conf = f"{r['mean_confidence']:.1f}" if r["mean_confidence"] is not None else "-"
            p = f"{r['p_value']:.3g}" if r["p_value"] is not None else "-"
            lines.append(f"  {r['a'] + ' vs ' + r['b']:<{w}}  {r['answered']:>3}  {r['wins_a']:>4}:{r['wins_b']:<4}  {share:>5}  {conf:>4}  {p:>6}")
    if result["mushra"]:
        lines += ["", "MUSHRA (0-100), mean and 95 % confidence interval:"]
        w = max(len(r["condition"]) for r in result["mushra"])
        for r in result["mushra"]:
            ci = f"[{r['ci95_low']:.1f}, {r['ci95_high']:.1f}]" if r["ci95_low"] is not None else "(one rating)"
            lines.append(f"  {r['condition']:<{w}}  {r['mean']:6.1f}  {ci:<15} n={r['n']}")
    for listener, fraction in result["mushra_excluded_listeners"].items():
        lines.append(f"  left out of MUSHRA: {listener} rated the hidden reference below {SCREEN_REFERENCE_BELOW:g} in {fraction:.0%} of trials")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recon listen", description="Write a blinded listening session (one HTML page) from an infer.py output folder.",
        epilog="Then: recon listen score ANSWERS.json... [--key PAGE.key.json] [--json RESULTS.json] unblinds the "
               "downloaded answers and reports preferences and MUSHRA means across listeners.",
    )  # fmt: skip
    p.add_argument("out_dir", metavar="OUT_DIR", help="an infer.py output folder (input/ and one folder per variant)")
    p.add_argument("--out", required=True, help="the page to write, e.g. session.html; its key goes beside it as <name>.key.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the file choice, trial order, A/B sides and MUSHRA labels (default: %(default)s)")
    p.add_argument("--variants", help="comma-separated variants to compare (default: every reconstruction in the folder)")
    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                   help="A/B trials: that many (file, pair of variants) drawn at random without repeats (default: %(default)s; 0: none)")
    p.add_argument("--mushra", action="store_true", help="add one MUSHRA trial per file: every variant, the hidden reference and the 3.5 kHz anchor")
    p.add_argument("--excerpt", type=float, default=DEFAULT_EXCERPT_S, help="seconds of each file to play, from its start (default: %(default)s)")
    p.add_argument("--max-files", type=int, default=6, help="files drawn from the folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing page and key")
    return p


def build_score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recon listen score", description="Unblind listening answers and report them across listeners.")
    p.add_argument("answers", nargs="+", metavar="ANSWERS.json", help="answers files downloaded from session pages")
    p.add_argument("--key", action="append", default=[], help="a session's key file (default: <page>.key.json beside the page or the answers)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["score"]:
            args = build_score_parser().parse_args(argv[1:])
            result = score(args.answers, args.key)
            print(format_results(result))
            if args.json:
                files.write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
            return 0
        args = build_parser().parse_args(argv)
        page = Path(args.out)
        if not args.overwrite and (page.exists() or key_path(page).exists()):
            raise ListenError(f"{page} or its key exists; pass --overwrite to replace them")
        variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
        spec = SessionSpec(Path(args.out_dir), page, args.seed, variants, args.trials, args.mushra, args.excerpt, args.max_files)
        page_path, key_file, key = write_session(spec)
        kinds = [t["type"] for t in key["trials"].values()]
        print(f"wrote {page_path} ({page_path.stat().st_size / 1e6:.1f} MB): {kinds.count('ab')} A/B and {kinds.count('mushra')} MUSHRA "
              f"trial(s) over {len({t['file'] for t in key['trials'].values()})} file(s); key: {key_file} (keep it from listeners)")
        for line in key["skipped_files"]:
            print(f"skipped {line}", file=sys.stderr)
        return 0
    except ListenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


__all__ = ["SessionSpec", "build_session", "key_path", "low_anchor", "loudness_db", "main", "match_loudness", "render_page", "score", "unblind", "write_session"]
