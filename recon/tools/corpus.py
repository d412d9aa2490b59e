"""A small CC0 training corpus made on the spot: espeak-ng speech and sox music and effects.

``python -m recon.tools.corpus --out DIR`` writes 16 kHz mono WAVs under ``DIR/speech``, ``DIR/music``
and ``DIR/effects`` (about 15 minutes of audio, under a minute to make). Everything is synthesised
from the sentences and recipes below, so the corpus is free of rights, and the same on every
machine with the same espeak-ng and sox (sox runs with ``-R``: its noise and dither are seeded). It never contains the sentences or recipes of
``examples/audio``, which therefore serve as held-out clips for the small backbone.

Needs the ``espeak-ng`` and ``sox`` programs (Debian/Ubuntu: ``apt-get install espeak-ng sox``).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from tqdm import tqdm

SAMPLE_RATE = 16000

SENTENCES = {
    "en": [
        "The lighthouse keeper counted seven ships before the fog rolled in.",
        "Please bring the blue folder and two sharp pencils to the meeting.",
        "A warm breeze carried the smell of bread across the quiet market.",
        "Numbers like forty two and nineteen hundred are easy to remember.",
        "She opened the window, listened for a moment, and closed it again.",
        "Every morning the old train rattles past the orchard at half past six.",
        "Could you tell me whether the museum is open on public holidays?",
        "Thunder rumbled far away while the children finished their puzzle.",
        "The recipe calls for three eggs, a cup of milk and a pinch of salt.",
        "Our flight was delayed, so we walked along the harbour until noon.",
        "He whispered the answer, but nobody in the back row could hear it.",
        "Bright copper kettles hung above the stove in the narrow kitchen.",
        "Turn left at the bridge, then follow the river for about a mile.",
        "The committee will announce its decision on Thursday afternoon.",
        "Jazz drifted from the basement club long after midnight.",
        "Measure twice and cut once, said the carpenter with a grin.",
        "A small grey cat slept on the warm roof of the parked car.",
        "Why does the kettle always whistle just as the phone rings?",
        "Fresh snow covered the fields and muffled every footstep.",
        "The library closes early today because of the inventory.",
    ],
    "de": [
        "Der Zug nach Hamburg fährt heute zehn Minuten später ab.",
        "Im Garten blühen die ersten Tulpen schon Anfang April.",
        "Könnten Sie mir bitte sagen, wie spät es gerade ist?",
        "Die Kinder bauten am Strand eine riesige Sandburg.",
    ],
    "fr": [
        "Le marché du samedi matin est toujours plein de couleurs.",
        "Nous avons pris le dernier bus pour rentrer à la maison.",
        "Il pleut depuis trois jours sur la petite ville du port.",
    ],
    "es": [
        "El tren de la mañana llega a la estación a las ocho.",
        "Mi abuela cocina la mejor sopa de todo el pueblo.",
        "Las montañas se veían muy claras después de la lluvia.",
    ],
    "it": [
        "La biblioteca resta aperta fino alle nove di sera.",
        "Abbiamo mangiato una pizza enorme vicino al mare.",
    ],
}
VOICES = {
    "en": ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"],
    "de": ["de"],
    "fr": ["fr-fr"],
    "es": ["es"],
    "it": ["it"],
}
VARIANTS = ["", "+m1", "+m3", "+m5", "+f1", "+f2", "+f3", "+f4", "+klatt2", "+croak", "+whisper"]

NOTES = ["C3", "D3", "E3", "F3", "G3", "A3", "B3", "C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5", "E5", "G5"]
WAVES = ["sine", "square", "triangle", "sawtooth", "pluck"]


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"recon.tools.corpus needs {' and '.join(missing)} on PATH (Debian/Ubuntu: apt-get install espeak-ng sox)")


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


def _to_16k_mono(src: Path, dst: Path, effects: list[str] = ()) -> None:
    _run(["sox", "-R", str(src), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(dst), *effects, "norm", "-3"])


def speech_jobs(rng: random.Random, clips: int) -> list[list[str]]:
    """espeak-ng command lines (without output path): sentence x voice x variant x speed x pitch."""
    pairs = [(lang, sentence) for lang, sentences in SENTENCES.items() for sentence in sentences]
    jobs = []
    for i in range(clips):
        lang, sentence = pairs[i % len(pairs)]
        voice = rng.choice(VOICES[lang]) + rng.choice(VARIANTS)
        jobs.append(["espeak-ng", "-v", voice, "-s", str(rng.randint(130, 200)), "-p", str(rng.randint(25, 75)), sentence])
    return jobs


def _melody(rng: random.Random, seconds: float) -> list[str]:
    """A sox ``synth`` line per note of a random melody, concatenated by the caller."""
    wave = rng.choice(WAVES)
    notes = rng.randint(4, 10)
    return [f"{wave}:{rng.choice(NOTES)}:{seconds / notes:.3f}" for _ in range(notes)]


def music_jobs(rng: random.Random, clips: int) -> list[list[str]]:
    """sox effect chains on ``-n``: chords, melodies, sweeps, with envelopes and reverb."""
    jobs = []
    for i in range(clips):
        seconds = rng.uniform(3.0, 7.0)
        kind = i % 3
        if kind == 0:  # a chord of 2-4 voices with a slow fade
            voices = [rng.choice(WAVES) + " " + rng.choice(NOTES) for _ in range(rng.randint(2, 4))]
            synth = ["synth", f"{seconds:.2f}"] + [tok for v in voices for tok in v.split()]
            chain = synth + ["fade", "q", "0.05", f"{seconds:.2f}", f"{seconds * 0.6:.2f}"]
        elif kind == 1:  # a sweep between two pitches, optionally with tremolo
            lo, hi = sorted(rng.sample(range(80, 2000), 2))
            chain = ["synth", f"{seconds:.2f}", rng.choice(WAVES[:4]), f"{lo}-{hi}"]
            if rng.random() < 0.5:
                chain += ["tremolo", f"{rng.uniform(2, 9):.1f}", f"{rng.randint(20, 80)}"]
        else:  # a plucked arpeggio, one note every 0.2-0.5 s
            step = rng.uniform(0.2, 0.5)
            notes = max(2, int(seconds / step))
            chain = ["synth", f"{step:.3f}", "pluck", rng.choice(NOTES), "repeat", str(notes - 1)]
            chain = ["synth", f"{seconds:.2f}", "pluck", rng.choice(NOTES), "pluck", rng.choice(NOTES)] if notes < 3 else chain
        if rng.random() < 0.5:
            chain += ["reverb", str(rng.randint(20, 70))]
        jobs.append(chain)
    return jobs


def effect_jobs(rng: random.Random, clips: int) -> list[list[str]]:
    """Noises shaped like rain, wind, engines and knocks."""
    jobs = []
    for i in range(clips):
        seconds = rng.uniform(3.0, 7.0)
        colour = rng.choice(["whitenoise", "pinknoise", "brownnoise"])
        kind = i % 4
        chain = ["synth", f"{seconds:.2f}", colour]
        if kind == 0:  # rain / hiss: band-limited noise
            chain += ["lowpass", str(rng.randint(1500, 7000)), "highpass", str(rng.randint(50, 800))]
        elif kind == 1:  # wind: slowly modulated low noise
            chain += ["lowpass", str(rng.randint(300, 1200)), "tremolo", f"{rng.uniform(0.2, 1.0):.2f}", "60"]
        elif kind == 2:  # engine: a low hum under noise
            hum = rng.randint(40, 160)
            chain = ["synth", f"{seconds:.2f}", "sawtooth", str(hum), colour, "mix", "lowpass", "2000", "tremolo", f"{rng.uniform(8, 30):.1f}", "30"]
        else:  # knocks: short noise bursts
            burst = rng.uniform(0.03, 0.08)
            gap = rng.uniform(0.2, 0.6)
            chain = ["synth", f"{burst:.3f}", colour, "lowpass", str(rng.randint(800, 4000)), "fade", "0", f"{burst:.3f}", f"{burst:.3f}",
                     "pad", "0", f"{gap:.3f}", "repeat", str(max(1, int(seconds / (burst + gap))))]
        jobs.append(chain)
    return jobs


def make_corpus(out: str | Path, speech: int = 160, music: int = 60, effects: int = 40, seed: int = 0) -> list[Path]:
    """Synthesise the corpus into ``out``; returns the written files in a fixed order."""
    require_tools()
    out = Path(out)
    rng = random.Random(seed)
    tasks = [("speech", job) for job in speech_jobs(rng, speech)]
    tasks += [("music", job) for job in music_jobs(rng, music)]
    tasks += [("effects", job) for job in effect_jobs(rng, effects)]
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (group, job) in enumerate(tqdm(tasks, desc="corpus", unit="clip")):
            dst = out / group / f"{group}_{i:04d}.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            raw = Path(tmp) / "raw.wav"
            if group == "speech":
                _run([*job[:-1], "-w", str(raw), job[-1]])
                _to_16k_mono(raw, dst)
            else:
                _run(["sox", "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(raw), *job])
                _to_16k_mono(raw, dst)
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recon.tools.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write speech/, music/ and effects/ into")
    parser.add_argument("--speech", type=int, default=160, help="espeak-ng clips (default: %(default)s)")
    parser.add_argument("--music", type=int, default=60, help="sox chords, sweeps and arpeggios (default: %(default)s)")
    parser.add_argument("--effects", type=int, default=40, help="sox noises: rain, wind, engines, knocks (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: %(default)s)")
    args = parser.parse_args(argv)
    files = make_corpus(args.out, args.speech, args.music, args.effects, args.seed)
    print(f"wrote {len(files)} clips to {args.out}")


if __name__ == "__main__":
    main()
