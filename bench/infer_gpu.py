"""End-to-end throughput of the variant runner on N synthetic clips: no input files needed.

    python bench/infer_gpu.py --clips 512 --batch-size 32 --precision bf16-mixed          # on a GPU
    python bench/infer_gpu.py --clips 4 --batch-size 2 --backbone random:tiny --accelerator cpu  # quick check

The same Trainer.predict + VariantRunner + ResultWriter as infer.py, with every torch metric and
every file written (PESQ/STOI off unless --perceptual). Prints a table, then one JSON object as its
last line:
  wall_s (first batch -> summary.json written), clips_per_s, x_real_time, first_batch_s (process
  start -> first batch), device_busy_fraction (device-synchronised stage seconds / wall_s), and
  stage_s: encode, each variant, metrics, assemble (stitch, pack, copy to host), write (files,
  PESQ/STOI) as seconds summed over the run.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: they are part of the start-up

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.audio import AudioSpec, MelFrontEnd, normalise  # noqa: E402
from recon.backbone import FrozenAudioLDM2  # noqa: E402
from recon.codebook import CodebookConfig, VectorQuantizer  # noqa: E402
from recon.compile import COMPILE_MODES  # noqa: E402
from recon.precision import check_precision  # noqa: E402
from recon.inputs import collate_files  # noqa: E402
from recon.predict import VariantRunner  # noqa: E402
from recon.records import RunInfo  # noqa: E402
from recon.variants import Models, VariantSettings, resolve  # noqa: E402
from recon.writer import ResultWriter  # noqa: E402


class SyntheticClips(Dataset):
    """Clips of a seeded chirp plus noise, as InferenceFiles items (normalised like a loaded file)."""

    def __init__(self, count: int, seconds: float, spec: AudioSpec = AudioSpec()):
        self.count, self.samples, self.spec = count, int(round(seconds * spec.sample_rate)), spec

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        t = torch.arange(self.samples) / self.spec.sample_rate
        chirp = torch.sin(2 * math.pi * (200 + 40 * index % 800) * t * (1 + t / 4))
        noise = 0.05 * torch.randn(self.samples, generator=torch.Generator().manual_seed(index))
        return {"index": index, "relpath": f"clip{index:05d}.wav", "path": "", "wav": normalise(chirp + noise), "error": None}


class FirstBatch(L.Callback):
    def __init__(self):
        self.at: float | None = None

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.at is None:
            self.at = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--seconds", type=float, default=10.24, help="length of each clip")
    p.add_argument("--backbone", default="random:full", help="backbone source (random:full has AudioLDM2's shapes)")
    p.add_argument("--variants", default="vae_mode", help="comma-separated non-diffusion variants, or 'all'")
    p.add_argument("--batch-size", type=int, default=32, help="clips per step and segments per forward")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--perceptual", action="store_true", help="also PESQ/STOI (CPU, in the writer)")
    p.add_argument("--out", help="output folder (default: a temporary one, removed afterwards)")
    p.add_argument("--compile", default="off", choices=COMPILE_MODES, help="torch.compile the networks, as infer.py --compile")
    args = p.parse_args()

    backbone = FrozenAudioLDM2.from_source(args.backbone)
    torch.manual_seed(0)
    # Codebook quality does not change the cost of a variant: a random 1024 x 8 codebook will do.
    models = Models(backbone, MelFrontEnd(backbone.spec), VectorQuantizer(CodebookConfig(kmeans_init=False)).eval())
    variants = resolve(args.variants, {"diffusion": False})
    settings = VariantSettings()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "run"
        writer = ResultWriter(out, RunInfo(variants, {"bench": "infer_gpu"}, settings), backbone.spec, perceptual=args.perceptual)
        first = FirstBatch()
        trainer = L.Trainer(accelerator=args.accelerator, devices=1, precision=check_precision(args.precision), logger=False,
                            callbacks=[writer, first], enable_progress_bar=False, enable_model_summary=False)
        loader = DataLoader(SyntheticClips(args.clips, args.seconds, backbone.spec), batch_size=args.batch_size,
                            num_workers=args.num_workers, collate_fn=collate_files, persistent_workers=False)
        runner = VariantRunner(models, variants, settings, segment_batch=args.batch_size, compile_mode=args.compile)
        trainer.predict(runner, loader, return_predictions=False)
        done = time.perf_counter()
        assert (out / "summary.json").is_file(), "the run wrote no summary.json"
        rows = sum(1 for _ in open(out / "metrics.csv")) - 1
    wall = done - first.at
    stages = {**{k: round(v, 4) for k, v in runner.stage_seconds.items()}, "write": round(writer.write_seconds, 4)}
    device_stages = sum(v for k, v in runner.stage_seconds.items() if k != "assemble")
    audio_seconds = args.clips * args.seconds
    result = {
        "bench": "infer_gpu",
        "device": torch.cuda.get_device_name() if runner.device.type == "cuda" else runner.device.type,
        "backbone": args.backbone,
        "variants": [v.name for v in variants],
        "precision": args.precision,
        "compile": args.compile,
        "clips": args.clips,
        "clip_seconds": args.seconds,
        "batch_size": args.batch_size,
        "rows": rows,
        "wall_s": round(wall, 3),
        "clips_per_s": round(args.clips / wall, 3),
        "x_real_time": round(audio_seconds / wall, 2),
        "first_batch_s": round(first.at - PROCESS_START, 3),
        "device_busy_fraction": round(min(device_stages / wall, 1.0), 3),
        "stage_s": stages,
        "threads": torch.get_num_threads(),
    }
    print(f"{args.clips} clips x {args.seconds} s, {', '.join(result['variants'])}, {args.precision} on {result['device']}")
    print(f"  start -> first batch {result['first_batch_s']:.1f} s; first batch -> summary.json {wall:.1f} s "
          f"({result['clips_per_s']:.1f} clips/s, {result['x_real_time']:.0f}x real time); device busy {result['device_busy_fraction']:.0%}")
    for stage, spent in stages.items():
        print(f"  {stage:>16s} {spent:8.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
