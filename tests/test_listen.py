"""recon listen: a blinded session page from an infer.py folder, answers saved by the page, scoring."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from recon import listen as L
from recon.cli import main as recon_main

SR = 16000
FILES = ["song.wav", "sub/speech.flac"]
VARIANTS = {"codec_hi": 0.02, "codec_mid": 0.2, "codec_lo": 0.6}  # noise added to the reference; best first


def make_out(root: Path, seconds: float = 1.2) -> Path:
    """An infer.py-like folder: input/ and three variants of two files, the variants at other levels."""
    out = root / "OUT"
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for i, file in enumerate(FILES):
        rel = Path(file).with_suffix(".wav")
        ref = (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        for name, wav in [("input", ref)] + [(v, (0.5 + j) * ref + n * rng.standard_normal(t.size)) for j, (v, n) in enumerate(VARIANTS.items())]:
            (out / name / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(out / name / rel), np.asarray(wav, np.float32) * 0.8, SR, subtype="FLOAT")
    summary = {"variants": {v: {"is_reconstruction": True} for v in VARIANTS} | {"text2audio": {"is_reconstruction": False}}, "run": {}}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "metrics.csv").write_text("file,variant\n" + "".join(f"{f},{v}\n" for f in FILES for v in VARIANTS))
    return out


def _page_data(page: Path) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="session-data">(.*?)</script>', page.read_text(), re.S).group(1))


def _wav(uri: str) -> tuple[bytes, np.ndarray]:
    raw = base64.b64decode(uri.split(",", 1)[1])
    return raw, sf.read(io.BytesIO(raw), dtype="float32")[0]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("listen")
    out = make_out(root)
    page = root / "session.html"
    assert recon_main(["listen", str(out), "--out", str(page), "--mushra", "--trials", "6", "--seed", "3", "--excerpt", "1.0"]) == 0
    return out, page, json.loads(L.key_path(page).read_text())


def test_page_is_blind_and_its_stimuli_are_bounded_matched_and_distinct(session):
    out, page, key = session
    text = page.read_text()
    data = _page_data(page)
    # no name of a variant or a file outside the audio data (base64 may spell anything)
    visible = re.sub(r"data:audio/wav;base64,[A-Za-z0-9+/=]*", "", text)
    for name in [*VARIANTS, *FILES, "speech", "song", L.LOW_ANCHOR]:
        assert name not in visible, name
    assert key["variants"] == list(VARIANTS)  # text2audio is not a reconstruction: not offered
    kinds = [t["type"] for t in data["trials"]]
    assert kinds == ["ab"] * 6 + ["mushra"] * 2 and [t["id"] for t in data["trials"]] == list(key["trials"])
    for trial in data["trials"]:
        sids = [trial["reference"], *([trial["A"], trial["B"]] if trial["type"] == "ab" else [s["stimulus"] for s in trial["slots"]])]
        decoded = [_wav(data["stimuli"][s]) for s in sids]
        assert len({len(raw) for raw, _ in decoded}) == 1  # same size: the bytes say nothing
        assert all(x.size == SR for _, x in decoded)  # the 1.0 s excerpt
        ref = decoded[0][1]
        target = float(AF.loudness(torch.from_numpy(ref)[None], SR))
        for _, x in decoded[1:]:
            assert abs(float(AF.loudness(torch.from_numpy(x)[None], SR)) - target) < 0.5  # BS.1770 within 0.5 LU
        if trial["type"] == "mushra":
            slots = key["trials"][trial["id"]]["slots"]
            assert sorted(slots.values()) == sorted([*VARIANTS, L.HIDDEN_REFERENCE, L.LOW_ANCHOR])
            by_condition = {slots[s["label"]]: _wav(data["stimuli"][s["stimulus"]]) for s in trial["slots"]}
            hidden_raw, hidden = by_condition[L.HIDDEN_REFERENCE]
            assert hidden_raw != decoded[0][0] and np.abs(hidden - ref).max() < 1e-3  # differs only by its dither
            anchor = by_condition[L.LOW_ANCHOR][1]
            band = np.fft.rfftfreq(SR, 1 / SR) > 4000
            assert np.sum(np.abs(np.fft.rfft(anchor))[band] ** 2) < 1e-3 * np.sum(np.abs(np.fft.rfft(ref))[band] ** 2)
    # A/B sides are shuffled by the seed: both orders occur, and another seed gives another session
    firsts = [key["trials"][t]["A"] for t in key["trials"] if key["trials"][t]["type"] == "ab"]
    assert len(set(firsts)) > 1
    page_b, key_b = L.build_session(L.SessionSpec(out, page, seed=4, trials=6, mushra=True, excerpt_s=1.0))
    assert key_b["trials"] != key["trials"] and page_b["session"] != data["session"]
    page_c, key_c = L.build_session(L.SessionSpec(out, page, seed=3, trials=6, mushra=True, excerpt_s=1.0))
    assert key_c["trials"] == key["trials"] and page_c["stimuli"] == data["stimuli"]


def test_listen_refuses_bad_requests_in_one_line(session, tmp_path, capsys):
    out, page, _ = session
    assert recon_main(["listen", str(out), "--out", str(page)]) == 2  # the page exists
    assert recon_main(["listen", str(out), "--out", str(tmp_path / "x.html"), "--variants", f"{HI},nope"]) == 2
    assert recon_main(["listen", str(tmp_path), "--out", str(tmp_path / "y.html")]) == 2  # not an infer.py folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--overwrite" in err[0] and "nope" in err[1] and "no input/" in err[2]


# --- scoring ------------------------------------------------------------------------------------


def _answers(path: Path, key: dict, listener: str, choose, rate) -> Path:
    """An answers file as the page writes it: ``choose(trial_key) -> "A"/"B"``, ``rate(condition) -> score``."""
    answers = []
    for trial, k in key["trials"].items():
        if k["type"] == "ab":
            answers.append({"trial": trial, "type": "ab", "preferred": choose(k), "confidence": 3, "notes": ""})
        else:
            answers.append({"trial": trial, "type": "mushra", "ratings": {lab: rate(c) for lab, c in k["slots"].items()}, "notes": ""})
    path.write_text(json.dumps({"format": L.ANSWERS_FORMAT, "session": key["session"], "page": "", "listener": listener, "answers": answers}))
    return path


def closer(k: dict, order: list[str] = list(VARIANTS)) -> str:
    """The side of an A/B trial key holding the variant earlier in ``order``."""
    return "A" if order.index(k["A"]) < order.index(k["B"]) else "B"


def wins(result: dict, winner: str, loser: str) -> tuple[int, int, float]:
    """``(wins of winner, wins of loser, p)`` of one pair in a score result."""
    r = next(r for r in result["ab"] if {r["a"], r["b"]} == {winner, loser})
    return (r["wins_a"], r["wins_b"], r["p_value"]) if r["a"] == winner else (r["wins_b"], r["wins_a"], r["p_value"])


HI, MID, LO = VARIANTS


def test_score_binomial_preferences_and_mushra_intervals(session, tmp_path):
    from scipy.stats import t as student_t

    _, page, key = session
    ratings = {"ann": {HI: 80, MID: 50, LO: 20, "reference": 100, "anchor35": 10},
               "bob": {HI: 70, MID: 60, LO: 30, "reference": 95, "anchor35": 15},
               "cy": {HI: 90, MID: 40, LO: 10, "reference": 40, "anchor35": 20}}  # fmt: skip
    backwards = list(VARIANTS)[::-1]
    files = {name: _answers(tmp_path / f"{name}.json", key, name, (lambda k: closer(k, backwards)) if name == "cy" else closer, ratings[name].get)
             for name in ratings}  # fmt: skip
    # ann and bob agree: each pair 4:0 over their two files
    agreed = L.score([files["ann"], files["bob"]], [L.key_path(page)])
    assert wins(agreed, HI, MID) == (4, 0, pytest.approx(2 * 0.5**4))  # two-sided binomial
    assert wins(agreed, HI, LO)[:2] == (4, 0) and wins(agreed, MID, LO)[:2] == (4, 0)
    result = L.score(list(files.values()), [L.key_path(page)])
    assert wins(result, HI, MID) == (4, 2, pytest.approx(0.6875))  # cy prefers the other way
    pair = next(r for r in result["ab"] if {r["a"], r["b"]} == {HI, MID})
    assert pair["answered"] == 6 and pair["mean_confidence"] == 3 and pair["listeners"] == ["ann", "bob", "cy"]
    # cy rated the hidden reference 40 in every MUSHRA trial: left out (BS.1534-3), named
    assert result["mushra_excluded_listeners"] == {"cy": 1.0}
    means = {r["condition"]: r for r in result["mushra"]}
    hi = means[HI]  # ann 80 x 2, bob 70 x 2
    assert hi["n"] == 4 and hi["mean"] == pytest.approx(75.0)
    half = student_t.ppf(0.975, 3) * np.std([80, 80, 70, 70], ddof=1) / 2
    assert (hi["ci95_low"], hi["ci95_high"]) == pytest.approx((75 - half, 75 + half))
    assert [r["condition"] for r in result["mushra"]][0] == "reference" and result["mushra"][-1]["condition"] == "anchor35"
    assert {r["rating_stimulus"] for r in result["webmushra"]["mushra"]} == {*VARIANTS, "reference", "anchor35"}
    text = L.format_results(result)
    assert f"{HI} vs {MID}" in text and "0.688" in text and "left out of MUSHRA: cy" in text


def test_score_refuses_foreign_or_broken_answers(session, tmp_path, capsys):
    _, page, key = session
    other = dict(key, session="000000000000")
    foreign = _answers(tmp_path / "x.json", other, "x", lambda k: "A", lambda c: 50)
    with pytest.raises(L.ListenError, match="no key for session"):
        L.score([foreign], [])
    (tmp_path / "y.json").write_text("{not json")
    assert recon_main(["listen", "score", str(tmp_path / "y.json"), "--key", str(L.key_path(page))]) == 2
    assert "not a readable answers file" in capsys.readouterr().err


# --- the page in a browser: click through every trial, save, score -----------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """The Chrome DevTools protocol over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-framed JSON)."""

    def __init__(self, tmp_path: Path):
        cmd_read, self._cmd = os.pipe()
        self._events, ev_write = os.pipe()

        def fds():
            os.dup2(cmd_read, 3)
            os.dup2(ev_write, 4)

        home = tmp_path / "chromium-home"
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "about:blank"],
            preexec_fn=fds, close_fds=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(cmd_read)
        os.close(ev_write)
        self._buffer, self._next, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._events], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._events, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}} | ({"sessionId": session} if session else {})
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str, match=lambda params: True, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and match(event.get("params", {})):
                    return event["params"]
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # already gone: the process is waited for (and killed) below
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd)
        os.close(self._events)


# Runs in the page: answers every trial through its controls (radio clicks, slider input events,
# typing into the notes), moving on with the Next button, then presses Save answers.
CLICK_THROUGH = """(plan) => {
  const $ = (id) => document.getElementById(id);
  const listener = $("listener"); listener.value = plan.listener; listener.dispatchEvent(new Event("input"));
  const shown = [];
  plan.trials.forEach((step, i) => {
    shown.push($("trial-title").textContent);
    if (step.type === "ab") { $("preferred-" + step.preferred).click(); $("confidence-" + step.confidence).click(); }
    else { for (const [label, value] of Object.entries(step.ratings)) { const s = $("rate-" + label); s.value = value; s.dispatchEvent(new Event("input")); } }
    const notes = $("notes"); notes.value = step.notes; notes.dispatchEvent(new Event("input"));
    if (i < plan.trials.length - 1) $("next").click();
  });
  $("prev").click(); $("next").click();  // going back and forth keeps the answers
  $("save").click();
  return {shown: shown, status: $("status").textContent};
}"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not on PATH (apt-get install chromium to enable)")
def test_listener_clicks_through_the_page_in_chromium_and_the_saved_answers_score(session, tmp_path):
    _, page, key = session
    data = _page_data(page)
    ratings = {HI: 81, MID: 47, LO: 22, "reference": 100, "anchor35": 9}
    plan = {"listener": "Ann Lee", "trials": []}
    for i, trial in enumerate(data["trials"]):
        k = key["trials"][trial["id"]]
        if trial["type"] == "ab":
            plan["trials"].append({"type": "ab", "preferred": closer(k), "confidence": 1 + i % 5, "notes": f"note {i}"})
        else:
            plan["trials"].append({"type": "mushra", "ratings": {lab: ratings[c] for lab, c in k["slots"].items()}, "notes": ""})
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = DevTools(tmp_path)
    try:
        # the first call waits for chromium to start: generous on a busy machine
        browser.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True}, timeout=90)
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        tab = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=tab)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=tab)
        browser.wait_event("Page.loadEventFired")
        done = browser.call("Runtime.evaluate", {"expression": f"({CLICK_THROUGH})({json.dumps(plan)})", "returnByValue": True}, session=tab)
        assert "exceptionDetails" not in done, done
        shown = done["result"]["value"]
        browser.wait_event("Browser.downloadProgress", lambda p: p.get("state") == "completed")
    finally:
        browser.close()
    assert shown["shown"][0] == "A/B trial 1" and shown["shown"][-1] == f"MUSHRA trial {len(data['trials'])}"
    saved = list(downloads.glob("*.json"))
    assert [p.name for p in saved] == [f"answers-Ann_Lee-{data['session']}.json"] and saved[0].name in shown["status"]
    answers = json.loads(saved[0].read_text())
    assert answers["format"] == L.ANSWERS_FORMAT and answers["session"] == key["session"] and answers["listener"] == "Ann Lee"
    assert answers["page"] == page.resolve().as_uri()
    for step, answer, trial in zip(plan["trials"], answers["answers"], data["trials"]):
        assert answer["trial"] == trial["id"] and answer["notes"] == step["notes"]
        if step["type"] == "ab":
            assert (answer["preferred"], answer["confidence"]) == (step["preferred"], step["confidence"])
        else:
            assert answer["ratings"] == step["ratings"]
    # unblinded with the key found beside the page the answers name
    result = L.score(saved)
    assert wins(result, HI, MID)[:2] == wins(result, HI, LO)[:2] == wins(result, MID, LO)[:2] == (2, 0)
    assert {r["condition"]: r["mean"] for r in result["mushra"]} == pytest.approx({c: float(v) for c, v in ratings.items()})
    assert math.isclose(result["mushra"][0]["mean"], 100.0)
