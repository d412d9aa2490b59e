"""Run reconstruction variants over audio files with ``Trainer.predict``, on one or many devices.

Data flows one way: file -> normalised waveform -> 10.24 s segments -> log-mel -> posterior (once)
-> each variant -> stitched waveform -> metrics -> files. Under DDP, Lightning's predict split is
unrepeated (rank r gets items r, r + world, ...), so every file is processed by exactly one rank;
the writer keys everything by the global dataset index it is handed and writes each output once.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import soundfile as sf
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import Dataset

from . import metrics as M
from .audio import AudioLoadError, AudioSpec, MelFrontEnd, load_audio, normalise, split_segments
from .data import find_audio_files
from .variants import Models, Variant, VariantInput, VariantSettings

log = logging.getLogger(__name__)

MIN_SECONDS = 0.1
METRIC_COLUMNS = (*M.WAVEFORM_METRICS, *M.PERCEPTUAL_METRICS, "latent_snr_db")
ROW_COLUMNS = ("file", "variant", "duration_s", "seconds", *METRIC_COLUMNS, "bitrate_bps", "notes")


def output_relpath(relpath: str) -> str:
    return Path(relpath).with_suffix(".wav").as_posix()


class InferenceFiles(Dataset):
    """Whole input files (normalised once, like AudioLDM2 does per clip), or the reason one failed.

    Items: ``{"index", "relpath", "wav" [samples] | None, "error" str | None}``. A file that cannot be
    read is an item with an error, so the other files go on.
    """

    def __init__(self, inputs: list[str | Path], spec: AudioSpec = AudioSpec()):
        self.spec = spec
        self.items: list[tuple[Path, str]] = []
        for entry in inputs:
            entry = Path(entry)
            if entry.is_dir():
                self.items += [(p, p.relative_to(entry).as_posix()) for p in find_audio_files(entry)]
            elif entry.is_file():
                self.items.append((entry, entry.name))
            else:
                raise FileNotFoundError(f"no such file or folder: {entry}")
        seen: dict[str, Path] = {}
        for path, rel in self.items:
            out = output_relpath(rel)
            if out in seen:
                raise ValueError(f"{path} and {seen[out]} would both be written as {out}; rename one")
            seen[out] = path

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, rel = self.items[index]
        item = {"index": index, "relpath": rel, "path": str(path), "wav": None, "error": None}
        try:
            wav = load_audio(path, self.spec)
            if wav.numel() < MIN_SECONDS * self.spec.sample_rate:
                raise AudioLoadError(path, f"too short: {wav.numel() / self.spec.sample_rate:.3f} s < {MIN_SECONDS} s")
            item["wav"] = normalise(wav)
        except AudioLoadError as err:
            # Reported in errors.csv and on stderr by the writer; the other files go on.
            item["error"] = err.reason
        return item


def collate_files(items: list[dict]) -> list[dict]:
    return items


class VariantRunner(L.LightningModule):
    """Encodes each chunk of segments once and runs every requested variant on it."""

    def __init__(self, models: Models, variants: list[Variant], settings: VariantSettings = VariantSettings(), segment_batch: int = 4):
        super().__init__()
        self.backbone = models.backbone
        self.frontend = models.frontend
        self.quantizer = models.quantizer
        self.diffusion = models.diffusion
        # Registered so Lightning moves it to the device; the rest of the pipeline is not needed there.
        self.unet = models.diffusion.unet if models.diffusion is not None else None
        self.variants = variants
        self.settings = settings
        self.segment_batch = segment_batch

    @property
    def models(self) -> Models:
        return Models(self.backbone, self.frontend, self.quantizer, self.diffusion)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        spec = self.backbone.spec
        ok = [item for item in batch if item["error"] is None]
        segments = [split_segments(item["wav"], spec) for item in ok]
        keys = [f"{item['relpath']}#{i}" for item, seg in zip(ok, segments) for i in range(len(seg))]
        flat = torch.cat(segments) if segments else torch.empty(0, spec.num_samples)
        outputs = {v.name: [] for v in self.variants}
        latent_snr = {v.name: [] for v in self.variants}
        notes = {v.name: [] for v in self.variants}
        codes = {v.name: [] for v in self.variants}
        seconds = {v.name: 0.0 for v in self.variants}
        encode_seconds = 0.0
        models = self.models
        for start in range(0, len(flat), self.segment_batch):
            wav = flat[start : start + self.segment_batch].to(self.device)
            self._sync()
            t0 = time.perf_counter()
            logmel = self.frontend(wav)
            posterior = self.backbone.encode(logmel)
            x = VariantInput(wav, logmel, posterior.mean.float(), posterior.std.float(), keys[start : start + self.segment_batch])
            self._sync()
            encode_seconds += time.perf_counter() - t0
            for variant in self.variants:
                t0 = time.perf_counter()
                rec = variant.fn(x, models, self.settings)
                self._sync()
                seconds[variant.name] += time.perf_counter() - t0
                outputs[variant.name].append(rec.wav.float().cpu())
                if rec.latent is not None:
                    latent_snr[variant.name].append(M.latent_snr(x.mean, rec.latent).cpu())
                notes[variant.name] += rec.notes or [[] for _ in range(len(wav))]
                if rec.codes is not None:
                    codes[variant.name].append(rec.codes.cpu())
        return self._per_file(batch, ok, segments, outputs, latent_snr, notes, codes, seconds, encode_seconds)

    def _per_file(self, batch, ok, segments, outputs, latent_snr, notes, codes, seconds, encode_seconds) -> list[dict]:
        total = sum(len(s) for s in segments) or 1
        cat = {name: torch.cat(chunks) if chunks else None for name, chunks in outputs.items()}
        lat = {name: torch.cat(chunks) if chunks else None for name, chunks in latent_snr.items()}
        coded = {name: torch.cat(chunks) if chunks else None for name, chunks in codes.items()}
        segment_counts = {item["index"]: len(seg) for item, seg in zip(ok, segments)}
        results, offset = [], 0
        for item in batch:
            if item["error"] is not None:
                results.append({"index": item["index"], "relpath": item["relpath"], "error": item["error"]})
                continue
            n, length = segment_counts[item["index"]], item["wav"].numel()
            share = n / total
            result = {"index": item["index"], "relpath": item["relpath"], "error": None, "input": item["wav"], "variants": {}}
            for variant in self.variants:
                name = variant.name
                result["variants"][name] = {
                    "wav": cat[name][offset : offset + n].reshape(-1)[:length],
                    # Segment-weighted mean of per-segment latent SNRs; only for latent variants.
                    "latent_snr_db": float(lat[name][offset : offset + n].mean()) if lat[name] is not None else None,
                    "notes": sorted({note for seg in notes[name][offset : offset + n] for note in seg}),
                    # The variant's own time plus its share of the one shared encode when it uses it.
                    "seconds": share * (seconds[name] + (encode_seconds if variant.uses_latent else 0.0)),
                    "bitstream": (
                        variant.pack_codes(coded[name][offset : offset + n], self.settings, self.models)
                        if variant.pack_codes is not None and coded[name] is not None
                        else None
                    ),
                }
            results.append(result)
            offset += n
        return results


def write_wav_atomic(path: Path, wav: Tensor | np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    sf.write(str(tmp), np.asarray(wav, dtype=np.float32), sample_rate, format="WAV", subtype="FLOAT")
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class RunInfo:
    variants: list[Variant]
    settings: dict  # free-form run settings, shown in summary.json and the report
    variant_settings: VariantSettings = field(default_factory=VariantSettings)


class ResultWriter(BasePredictionWriter):
    """Writes each file's outputs and metric rows as its batch finishes; rank 0 merges at the end.

    Rows go to a per-rank part file keyed by the global dataset index, so a file processed on any
    rank appears exactly once in ``metrics.csv``.
    """

    def __init__(self, out_dir: str | Path, info: RunInfo, spec: AudioSpec = AudioSpec(), perceptual: bool = True):
        super().__init__(write_interval="batch")
        self.out = Path(out_dir)
        self.info = info
        self.spec = spec
        self.perceptual = perceptual
        self.frontend = MelFrontEnd(spec)
        self.parts = self.out / ".parts"

    def _part(self, trainer, kind: str) -> Path:
        return self.parts / f"{kind}.rank{trainer.global_rank}.jsonl"

    def on_predict_start(self, trainer, pl_module) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        for kind in ("rows", "errors"):
            self._part(trainer, kind).unlink(missing_ok=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        rows, errors = [], []
        for result in prediction:
            if result["error"] is not None:
                log.error("%s: %s", result["relpath"], result["error"])
                errors.append({"index": result["index"], "file": result["relpath"], "reason": result["error"]})
                continue
            rows += self._write_file(result, errors)
        with open(self._part(trainer, "rows"), "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(self._part(trainer, "errors"), "a") as f:
            f.writelines(json.dumps(e) + "\n" for e in errors)

    def _write_file(self, result: dict, errors: list[dict]) -> list[dict]:
        rel = output_relpath(result["relpath"])
        reference = result["input"]
        duration = reference.numel() / self.spec.sample_rate
        write_wav_atomic(self.out / "input" / rel, reference.numpy(), self.spec.sample_rate)
        rows = []
        for variant in self.info.variants:
            out = result["variants"][variant.name]
            wav = out["wav"]
            if not torch.isfinite(wav).all():
                reason = f"variant {variant.name} produced non-finite audio; nothing written"
                log.error("%s: %s", result["relpath"], reason)
                errors.append({"index": result["index"], "file": result["relpath"], "reason": reason})
                continue
            write_wav_atomic(self.out / variant.name / rel, wav.numpy(), self.spec.sample_rate)
            if out["bitstream"] is not None:
                write_bytes_atomic((self.out / variant.name / rel).with_suffix(variant.codes_suffix), out["bitstream"])
            values = M.compute_all(reference[None], wav[None], self.frontend, include_perceptual=self.perceptual)
            rows.append(
                {
                    "index": result["index"],
                    "file": result["relpath"],
                    "variant": variant.name,
                    "duration_s": duration,
                    "seconds": out["seconds"],
                    **{k: float(v[0]) for k, v in values.items()},
                    "latent_snr_db": out["latent_snr_db"],
                    "bitrate_bps": variant.bitrate(self.info.variant_settings),
                    "notes": "; ".join(out["notes"]),
                }
            )
        return rows

    def on_predict_end(self, trainer, pl_module) -> None:
        # Every rank has finished writing its parts once all reach this barrier.
        trainer.strategy.barrier("recon-predict-end")
        if trainer.is_global_zero:
            finalize(self.out, self.info)


def _read_parts(parts: Path, kind: str) -> list[dict]:
    rows = []
    for part in sorted(parts.glob(f"{kind}.rank*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    return rows


def bitrate_label(bps: float | None, is_reconstruction: bool = True) -> str:
    if not is_reconstruction:
        return "n/a (not a reconstruction)"
    if bps is None:
        return "n/a (not a bitstream)"
    return f"{bps / 1000:.1f} kbps" if bps >= 1000 else f"{bps:.1f} bps"


def _write_csv_atomic(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    os.replace(tmp, path)


def summarise(rows: list[dict], info: RunInfo) -> dict:
    variants = {}
    for variant in info.variants:
        mine = [r for r in rows if r["variant"] == variant.name]
        stats = {"mean": {}, "median": {}}
        for column in METRIC_COLUMNS:
            values = [r[column] for r in mine if r.get(column) is not None and not math.isnan(r[column])]
            if values:
                stats["mean"][column] = statistics.fmean(values)
                stats["median"][column] = statistics.median(values)
        audio_seconds = sum(r["duration_s"] for r in mine)
        compute_seconds = sum(r["seconds"] for r in mine)
        bps = variant.bitrate(info.variant_settings)
        variants[variant.name] = {
            "description": variant.description,
            "is_reconstruction": variant.is_reconstruction,
            "bitrate_bps": bps,
            "bitrate_label": bitrate_label(bps, variant.is_reconstruction),
            "files": len(mine),
            "seconds_per_clip": compute_seconds / len(mine) if mine else None,
            "real_time_factor": audio_seconds / compute_seconds if compute_seconds > 0 else None,
            **stats,
        }
    return {"variants": variants, "run": info.settings}


def finalize(out: Path, info: RunInfo) -> dict:
    """Merge the ranks' parts into metrics.csv, errors.csv and summary.json (global rank 0 only)."""
    parts = out / ".parts"
    rows = sorted(_read_parts(parts, "rows"), key=lambda r: (r["file"], [v.name for v in info.variants].index(r["variant"])))
    errors = sorted(_read_parts(parts, "errors"), key=lambda r: r["file"])
    _write_csv_atomic(out / "metrics.csv", ROW_COLUMNS, rows)
    _write_csv_atomic(out / "errors.csv", ("file", "reason"), errors)
    summary = summarise(rows, info)
    summary["errors"] = len(errors)
    tmp = out / f".summary.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")
    for part in parts.glob("*.jsonl"):
        part.unlink()
    parts.rmdir()
    return summary
