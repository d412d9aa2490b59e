"""Does a small backbone's vocoder beat Griffin-Lim on the held-out examples?

    python bench/vocoder_target.py                                     # the committed small backbone
    python bench/vocoder_target.py --backbone runs/backbone-gan        # a trained candidate
    python bench/vocoder_target.py --gan-state runs/backbone-gan       # an adversarial round in progress

Runs ``infer.py --variants vocoder_only,griffinlim`` on ``examples/audio`` (every metric, PESQ, STOI
and ViSQOL included, no W&B) with the given backbone and checks the target: ``vocoder_only`` beats
``griffinlim`` on PESQ and STOI over the speech clips and on ViSQOL (audio mode) over all clips,
and its log-mel distance is at most 4 dB. ``--gan-state OUT`` first writes the vocoder of the round
saved in ``OUT/gan_state.pt`` (whatever step it has reached; the training may go on) into a copy of
``--init``'s backbone, so a round can be judged while it runs.

Prints a table, then one JSON object as its last line: backbone, step (with --gan-state), means
{variant: {metric: value}} (speech-only means under ``*_speech``), checks {name: [vocoder, griffinlim,
met]}, met (all of them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "audio"
LOG_MEL_TARGET_DB = 4.0


def snapshot(state_dir: Path, init: Path, out: Path) -> int:
    """``init``'s backbone with the vocoder of the adversarial round saved in ``state_dir``; its step."""
    import torch

    from recon.backbone import FrozenAudioLDM2
    from recon.tools.gan_training import STATE_FILE

    state = torch.load(state_dir / STATE_FILE, map_location="cpu", weights_only=True)
    shutil.copytree(init, out)
    backbone = FrozenAudioLDM2.from_source(str(init))
    vocoder = backbone.vocoder
    vocoder.load_state_dict(state["generator"])
    vocoder.save_pretrained(out / "vocoder")
    return int(state["step"])


def means(rows: list[dict], variant: str, metric: str, files: set[str] | None = None) -> float:
    values = [float(r[metric]) for r in rows if r["variant"] == variant and (files is None or r["file"] in files)
              and r.get(metric) not in (None, "") and math.isfinite(float(r[metric]))]
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=str(ROOT / "checkpoints" / "backbone-small"), help="backbone folder (default: the committed small one)")
    p.add_argument("--gan-state", help="an adversarial round's --out folder: judge the vocoder saved in its gan_state.pt")
    p.add_argument("--init", default=str(ROOT / "checkpoints" / "backbone-small"), help="with --gan-state: the backbone the round started from")
    p.add_argument("--input", default=str(EXAMPLES), help="held-out audio (default: examples/audio; speech = files under a 'speech' folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        backbone, step = Path(args.backbone), None
        if args.gan_state:
            backbone = Path(scratch) / "backbone"
            step = snapshot(Path(args.gan_state), Path(args.init), backbone)
        out = Path(scratch) / "out"
        env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
        command = [sys.executable, str(ROOT / "infer.py"), "--backbone", str(backbone), "--variants", "vocoder_only,griffinlim",
                   "--input", args.input, "--output", str(out), "--wandb", "off", "--accelerator", "cpu"]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"infer.py failed:\n{done.stderr[-3000:]}")
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    speech = {r["file"] for r in rows if "speech" in Path(r["file"]).parts}
    table = {}
    for variant in ("vocoder_only", "griffinlim"):
        table[variant] = {
            "log_mel_db": means(rows, variant, "log_mel_db"),
            "visqol_audio": means(rows, variant, "visqol_audio"),
            "pesq_wb_speech": means(rows, variant, "pesq_wb", speech),
            "stoi_speech": means(rows, variant, "stoi", speech),
            "visqol_speech_speech": means(rows, variant, "visqol_speech", speech),
        }
    v, g = table["vocoder_only"], table["griffinlim"]
    checks = {
        "pesq_wb_speech": [v["pesq_wb_speech"], g["pesq_wb_speech"], v["pesq_wb_speech"] > g["pesq_wb_speech"]],
        "stoi_speech": [v["stoi_speech"], g["stoi_speech"], v["stoi_speech"] > g["stoi_speech"]],
        "visqol_audio": [v["visqol_audio"], g["visqol_audio"], v["visqol_audio"] > g["visqol_audio"]],
        "log_mel_db": [v["log_mel_db"], LOG_MEL_TARGET_DB, v["log_mel_db"] <= LOG_MEL_TARGET_DB],
    }
    print(f"backbone {args.gan_state or args.backbone}" + (f" (adversarial step {step})" if step is not None else ""))
    print(f"{'check':<16} {'vocoder_only':>13} {'griffinlim / target':>20}  met")
    for name, (mine, theirs, met) in checks.items():
        print(f"{name:<16} {mine:>13.3f} {theirs:>20.3f}  {'yes' if met else 'no'}")
    result = {"backbone": str(args.gan_state or args.backbone), "step": step, "means": table, "checks": checks,
              "met": all(met for _, _, met in checks.values())}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
