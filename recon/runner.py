"""Run reconstruction variants over audio files with ``Trainer.predict``, on one or many devices.

Data flows one way: file -> normalised waveform -> 10.24 s segments -> log-mel -> posterior (once)
-> each variant -> stitched waveform -> metrics (on the device) -> host arrays -> files.

Rules that keep it running on any accelerator, precision and number of ranks:

* ``predict_step`` returns :class:`FileResult` records holding numpy arrays only; the writer never
  touches a device (Lightning moves the whole batch to the accelerator, so anything passed through
  unconverted would be a device tensor).
* An exception in one variant for one file becomes an error row (file, variant, reason) and the
  rest goes on; a batch that fails is retried one file at a time first (a CUDA out-of-memory error
  on a batch of several files usually passes file by file).
* Under DDP, Lightning's predict split is unrepeated (rank r gets items r, r + world, ...), so every
  file is processed by exactly one rank. Rows and errors reach global rank 0 through the process
  group, not through files; the output folder must be shared by all ranks, which a marker written
  by rank 0 and checked by every rank proves before any work starts.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import queue
import socket
import statistics
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import Dataset

from . import files
from . import metrics as M
from .compile import COMPILE_MODES, compile_networks
from .audio import AudioLoadError, AudioSpec, length_chunks, load_audio, normalisation_gain, normalise, split_file
from .data import find_audio_files
from .outputs import INPUT_FOLDER, RESULT_NAMES, UsageError, check_output, describe_error, remove_previous, write_manifest
from .precision import fp32_island
from .variants import Models, Variant, VariantInput, VariantSettings

log = logging.getLogger(__name__)

MIN_SECONDS = 0.1
METRIC_COLUMNS = (*M.WAVEFORM_METRICS, *M.PERCEPTUAL_METRICS, "latent_snr_db")
# bitrate_bps: the variant's nominal rate; measured_bps: its written file's bytes x 8 / duration.
ROW_COLUMNS = ("file", "variant", "duration_s", "seconds", *METRIC_COLUMNS, "bitrate_bps", "measured_bps", "notes")
ERROR_COLUMNS = ("file", "variant", "reason")
# Written by global rank 0 at start-up; every rank must see it (a shared output folder).
RUN_MARKER = ".recon-run"
T = TypeVar("T")
_STOP = object()  # ends the writer thread


def output_relpath(relpath: str) -> str:
    return Path(relpath).with_suffix(".wav").as_posix()


# ---------------------------------------------------------------------- input
class InferenceFiles(Dataset):
    """Whole input files (normalised once, like AudioLDM2 does per clip), or the reason one failed.

    Items: ``{"index", "relpath", "wav" [samples] | None, "level", "error" str | None}``, where
    ``level`` is the factor that restores the file's own loudness (codec files record it). A file
    that cannot be read is an item with an error, so the other files go on.
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
        item = {"index": index, "relpath": rel, "path": str(path), "wav": None, "level": 1.0, "error": None}
        try:
            wav = load_audio(path, self.spec)
            if wav.numel() < MIN_SECONDS * self.spec.sample_rate:
                raise AudioLoadError(path, f"too short: {wav.numel() / self.spec.sample_rate:.3f} s < {MIN_SECONDS} s")
            item["wav"] = normalise(wav)
            item["level"] = normalisation_gain(wav)
        except AudioLoadError as err:
            # Reported in errors.csv and on stderr by the writer; the other files go on.
            item["error"] = err.reason
        except Exception as err:  # e.g. MemoryError resampling a huge file: still one file's error
            item["error"] = describe_error(err)
        return item


def collate_files(items: list[dict]) -> list[dict]:
    return items


# ---------------------------------------------------------------------- what predict_step hands the writer
def _require_host(name: str, value) -> None:
    if value is not None and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array on the host, got {type(value).__name__}: predict_step converts device tensors")


@dataclass
class VariantResult:
    """One variant's output for one file, on the host. ``error`` set: nothing else is meaningful."""

    variant: str
    wav: np.ndarray | None = None  # float32 [samples], the input's length
    metrics: dict[str, float] = field(default_factory=dict)  # the torch metrics, computed on the device
    latent_snr_db: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # this file's share of the variant's compute (and of the shared encode)
    bitstream: bytes | None = None
    error: str | None = None

    def check_host(self) -> None:
        _require_host(f"{self.variant} output", self.wav)


@dataclass
class FileResult:
    """Everything the writer needs for one input file, as host data (numpy, bytes, floats)."""

    index: int  # global dataset index
    relpath: str
    input_wav: np.ndarray | None = None  # the normalised reference, float32 [samples]
    error: str | None = None  # the file as a whole failed (unreadable, or its encode failed)
    variants: list[VariantResult] = field(default_factory=list)

    def check_host(self) -> None:
        """Raise unless every array is a host (numpy) array: the writer's one precondition."""
        _require_host(f"{self.relpath} input", self.input_wav)
        for entry in self.variants:
            entry.check_host()


@dataclass
class SegmentOutput:
    """One variant's output for one 10.24 s segment, still on the device."""

    wav: Tensor
    latent_snr_db: float | None
    notes: list[str]
    codes: Tensor | None  # on the host: bitstreams are packed there


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# ---------------------------------------------------------------------- the module
class VariantRunner(L.LightningModule):
    """Encodes each chunk of segments once and runs every requested variant on it."""

    def __init__(self, models: Models, variants: list[Variant], settings: VariantSettings = VariantSettings(), segment_batch: int = 4,
                 compile_mode: str = "off", compile_backend: str = "inductor"):
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
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        self.compile_mode, self.compile_backend = compile_mode, compile_backend
        self._reported: set[str] = set()
        # Seconds per stage over the whole run on this rank (device-synchronised): encode, each
        # variant, metrics, and "assemble" (stitching, packing, copies to the host). Benchmarks read it.
        self.stage_seconds: dict[str, float] = defaultdict(float)

    @property
    def models(self) -> Models:
        return Models(self.backbone, self.frontend, self.quantizer, self.diffusion)

    def setup(self, stage: str) -> None:
        # In every process (after ddp_spawn pickled the model): compiled modules do not pickle.
        compiled = compile_networks(self.models, self.compile_mode, self.compile_backend)
        if compiled:
            log.info("compiling %s (torch.compile mode %s): the first batch of each shape is slow", ", ".join(compiled), self.compile_mode)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _isolated(self, what: str, run: Callable[[list[int]], T], groups: list[list[int]]) -> list[tuple[list[int], T | Exception]]:
        """``run`` on all groups together; if that raises and there are several groups, on each alone.

        Returns (members, result or the exception) pairs. A group is one file's segments (or one
        variant's outputs), so a failure is pinned on the file that causes it.
        """
        if not groups:
            return []
        members = [m for g in groups for m in g]
        try:
            return [(members, run(members))]
        except Exception as err:  # reported per file by the caller, never swallowed
            if len(groups) == 1:
                self._log_first(what, err)
                return [(members, err)]
            out_of_memory = _is_out_of_memory(err)
            log.warning("%s failed on a batch (%s); retrying one item at a time", what, describe_error(err))
        if out_of_memory and self.device.type == "cuda":
            # Outside the except block: the traceback no longer holds the failed attempt's tensors.
            torch.cuda.empty_cache()
        results = []
        for group in groups:
            try:
                results.append((group, run(group)))
            except Exception as err:
                self._log_first(what, err)
                results.append((group, err))
        return results

    def _log_first(self, what: str, err: Exception) -> None:
        # The traceback once per failing stage; every occurrence is an errors.csv row anyway.
        if what not in self._reported:
            self._reported.add(what)
            log.error("%s failed: %s", what, describe_error(err), exc_info=err)

    def _encode(self, wav: Tensor, keys: list[str]) -> VariantInput:
        logmel = self.frontend(wav)
        posterior = self.backbone.encode(logmel)
        return VariantInput(wav, logmel, posterior.mean.float(), posterior.std.float(), keys)

    def _run_variant(self, variant: Variant, x: VariantInput, rows: list[int]) -> list[SegmentOutput]:
        """One variant on some segments of an encoded chunk, split into per-segment outputs."""
        part = x.select(rows)
        rec = variant.run(part, self.models, self.settings)
        snr = M.latent_snr(part.mean, rec.latent.float()).tolist() if rec.latent is not None else [None] * len(rows)
        return [
            SegmentOutput(
                wav=rec.wav[r],
                latent_snr_db=snr[r],
                notes=rec.notes[r] if rec.notes else [],
                codes=rec.codes[r].cpu() if rec.codes is not None else None,
            )
            for r in range(len(rows))
        ]

    @torch.no_grad()
    def predict_step(self, batch: list[dict], batch_idx: int) -> list[FileResult]:
        try:
            return self._predict(batch)
        except Exception as err:
            # Last resort for a failure outside the isolated stages: every file of the batch is
            # reported, and this rank goes on, so ranks never diverge before their collectives.
            log.error("batch %d failed: %s", batch_idx, describe_error(err), exc_info=err)
            return [FileResult(item["index"], item["relpath"], error=item["error"] or f"failed: {describe_error(err)}") for item in batch]

    def _predict(self, batch: list[dict]) -> list[FileResult]:
        spec = self.backbone.spec
        ok = [item for item in batch if item["error"] is None]
        segments = [split_file(item["wav"], spec) for item in ok]
        owner = [f for f, seg in enumerate(segments) for _ in range(len(seg))]  # segment -> position in ok
        keys = [f"{item['relpath']}#{i}" for item, seg in zip(ok, segments) for i in range(len(seg))]
        flat = [s for seg in segments for s in seg]
        outputs: dict[str, dict[int, SegmentOutput]] = {v.name: {} for v in self.variants}  # variant -> segment -> output
        failed: dict[tuple[int, str], str] = {}  # (file position, variant or "") -> reason
        seconds = defaultdict(float)

        def by_file(members: list[int]) -> list[list[int]]:
            grouped: dict[int, list[int]] = defaultdict(list)
            for s in members:
                grouped[owner[s]].append(s)
            return list(grouped.values())

        # Segments of equal length share forward passes: full ones, then each length of last segment.
        chunks = length_chunks([segment.shape[-1] for segment in flat], self.segment_batch)
        for chunk in chunks:
            self._sync()
            t0 = time.perf_counter()
            encoded = self._isolated("encode", lambda sel: self._encode(torch.stack([flat[s] for s in sel]), [keys[s] for s in sel]), by_file(chunk))
            self._sync()
            seconds["encode"] += time.perf_counter() - t0
            for members, x in encoded:
                if isinstance(x, Exception):
                    for s in members:
                        failed.setdefault((owner[s], ""), f"encode failed: {describe_error(x)}")
                    continue
                row = {s: r for r, s in enumerate(members)}
                for variant in self.variants:
                    t0 = time.perf_counter()
                    runs = self._isolated(variant.name, lambda sel: self._run_variant(variant, x, [row[s] for s in sel]), by_file(members))
                    self._sync()
                    seconds[variant.name] += time.perf_counter() - t0
                    for sel, per_segment in runs:
                        if isinstance(per_segment, Exception):
                            for s in sel:
                                failed.setdefault((owner[s], variant.name), describe_error(per_segment))
                        else:
                            outputs[variant.name].update(zip(sel, per_segment))
        for stage, spent in seconds.items():
            self.stage_seconds[stage] += spent
        t0 = time.perf_counter()
        metrics_seconds = 0.0
        total = max(sum(segment.shape[-1] for segment in flat), 1)
        results = {item["index"]: FileResult(item["index"], item["relpath"], error=item["error"]) for item in batch}
        first = 0
        for f, item in enumerate(ok):
            members = list(range(first, first + len(segments[f])))
            first += len(segments[f])
            result = results[item["index"]]
            result.input_wav = item["wav"].float().cpu().numpy()
            if (f, "") in failed:
                result.error = failed[(f, "")]
                continue
            share = sum(flat[s].shape[-1] for s in members) / total
            stitched = {}
            for variant in self.variants:
                name = variant.name
                entry = VariantResult(name, seconds=share * (seconds[name] + (seconds["encode"] if variant.uses_latent else 0.0)))
                result.variants.append(entry)
                if (f, name) in failed:
                    entry.error = failed[(f, name)]
                    continue
                try:
                    wav = self._assemble(variant, [outputs[name][s] for s in members], item["wav"].numel(), entry, item.get("level", 1.0))
                except Exception as err:  # stitching or packing this file's output
                    self._log_first(f"{name} output", err)
                    entry.error = describe_error(err)
                    continue
                if wav is not None:
                    stitched[name] = wav
            metrics_seconds += self._file_metrics(item["wav"].float(), stitched, result)
        self._sync()
        self.stage_seconds["metrics"] += metrics_seconds
        # Stitching, packing and copies to the host: the rest of this part.
        self.stage_seconds["assemble"] += time.perf_counter() - t0 - metrics_seconds
        return [results[item["index"]] for item in batch]

    def _assemble(self, variant: Variant, parts: list[SegmentOutput], length: int, entry: VariantResult, level: float = 1.0) -> Tensor | None:
        """Stitch one file's segments, fill in the entry; None (with the reason) for non-finite audio."""
        wav = torch.cat([p.wav for p in parts]).float()[:length]
        if not torch.isfinite(wav).all():
            entry.error = "produced non-finite audio (NaN or inf); nothing written"
            return None
        snr = [p.latent_snr_db for p in parts if p.latent_snr_db is not None]
        entry.latent_snr_db = statistics.fmean(snr) if snr else None
        entry.notes = sorted({n for p in parts for n in p.notes})
        if variant.pack_codes is not None and all(p.codes is not None for p in parts):
            entry.bitstream = variant.pack_codes([p.codes for p in parts], [p.wav.shape[-1] for p in parts], length, level, variant.settings(self.settings), self.models)
        return wav

    def _file_metrics(self, reference: Tensor, stitched: dict[str, Tensor], result: FileResult) -> float:
        """The torch metrics of every variant of one file, batched over the variants, on the device;
        then the outputs that have them go to the host. Returns the seconds the metrics took."""
        by_name = {entry.variant: entry for entry in result.variants}
        names = list(stitched)

        def compute(sel: list[int]) -> dict[str, Tensor]:
            with fp32_island(reference.device):
                estimate = torch.stack([stitched[names[i]] for i in sel])
                values = M.compute_all(reference.expand_as(estimate).contiguous(), estimate, self.frontend, include_perceptual=False)
                return {k: v.tolist() for k, v in values.items()}

        self._sync()
        t0 = time.perf_counter()
        for sel, values in self._isolated("metrics", compute, [[i] for i in range(len(names))]):
            for r, i in enumerate(sel):
                entry = by_name[names[i]]
                if isinstance(values, Exception):
                    entry.error = f"metrics failed: {describe_error(values)}"
                else:
                    entry.metrics = {k: v[r] for k, v in values.items()}
        spent = time.perf_counter() - t0
        for name in names:
            if by_name[name].error is None:
                by_name[name].wav = stitched[name].cpu().numpy()
        return spent


# ---------------------------------------------------------------------- the writer
@dataclass
class RunInfo:
    variants: list[Variant]
    settings: dict  # free-form run settings, shown in summary.json and the report
    variant_settings: VariantSettings = field(default_factory=VariantSettings)
    started_at: float | None = None  # time.perf_counter() at process start, for the start-up time in summary.json
    extra_outputs: tuple[str, ...] = ()  # other top-level names the caller writes into OUT (e.g. "wandb/")

    def outputs(self) -> list[str]:
        """Every top-level name of OUT this run writes; folders end in "/"."""
        return [f"{INPUT_FOLDER}/", *(f"{v.name}/" for v in self.variants), *RESULT_NAMES, *self.extra_outputs]


def gather_to_all(obj):
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class ResultWriter(BasePredictionWriter):
    """Writes each file's outputs as its batch finishes; rows and errors reach rank 0 at the end.

    Host data only (see :class:`FileResult`). The writing happens on a background thread fed by a
    bounded queue, so the loop that feeds the device does not wait on the disk (and waits only when
    ``queue_batches`` batches are pending). Perceptual metrics (PESQ, STOI), whose libraries take
    numpy arrays and hold the GIL, run in ``perceptual_workers`` CPU processes when the model is on
    an accelerator, and are collected at the end. A failure of the thread fails the run at the end
    of predict, on every rank together.
    """

    def __init__(self, out_dir: str | Path, info: RunInfo, spec: AudioSpec = AudioSpec(), perceptual: bool = True,
                 overwrite: bool = False, queue_batches: int = 4, perceptual_workers: int | None = None):
        super().__init__(write_interval="batch")
        self.out = Path(out_dir)
        self.info = info
        self.spec = spec
        self.perceptual = perceptual
        self.overwrite = overwrite
        self.queue_batches = queue_batches
        # PESQ and STOI hold the GIL for seconds per file. With the model on an accelerator they run
        # in worker processes; on the CPU, which the model keeps busy, spawning workers (each
        # importing torch) costs more than it frees (measured on 2 cores: 62 s vs 45 s for the demo),
        # so they run on the writer thread. ``None`` chooses by device; 0 means the writer thread.
        self.perceptual_workers = perceptual_workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[tuple[dict, Future]] = []
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self.rows: list[dict] = []
        self.errors: list[dict] = []
        self.fatal: str | None = None  # an unexpected failure of this rank's writing, raised at the end
        self._variants = {v.name: v for v in info.variants}
        self.write_seconds = 0.0  # time the writer thread spent writing files
        self.first_batch_at: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before any work, on every rank: the output folder is usable, and it is the same folder for all."""
        problem, token = None, None
        if trainer.is_global_zero:
            try:
                outputs = self.info.outputs()
                remove_previous(self.out, check_output(self.out, self.overwrite, outputs))
                # Recorded before anything is written, so an interrupted run is removed as a whole.
                write_manifest(self.out, outputs)
                token = uuid.uuid4().hex
                files.write_text(self.out / RUN_MARKER, token)
            except (UsageError, OSError) as err:
                problem = str(err)
        problem, token = trainer.strategy.broadcast((problem, token), src=0)
        if problem is not None:
            raise UsageError(problem)
        marker = self.out / RUN_MARKER
        try:
            sees = marker.read_text() == token
        except OSError:
            sees = False
        views = gather_to_all((trainer.global_rank, socket.gethostname(), sees))
        blind = [(rank, host) for rank, host, ok in views if not ok]
        if blind:
            where = ", ".join(f"rank {rank} on {host}" for rank, host in blind)
            raise UsageError(
                f"the output folder {self.out} is not shared by all ranks: {where} cannot see the {RUN_MARKER} marker that "
                "rank 0 wrote there; put --output on a file system that every node mounts"
            )
        self.rows, self.errors, self.fatal = [], [], None
        self.first_batch_at, self.write_seconds = None, 0.0
        self._start_thread(pl_module.device)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()

    def _start_thread(self, device: torch.device | None = None) -> None:
        workers = self.perceptual_workers
        if workers is None:
            workers = 0 if device is None or device.type == "cpu" else max(1, min(4, (os.cpu_count() or 2) // 2))
        if self.perceptual and workers > 0 and self._pool is None:
            # spawn: forking a process that holds CUDA state and threads is unsafe.
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self._queue = queue.Queue(maxsize=self.queue_batches)
        self._thread = threading.Thread(target=self._drain, name="recon-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            batch_idx, prediction = item
            try:
                for result in prediction:
                    self.write(result)
            except Exception as err:
                # Not raised here: this rank must still reach the collective in on_predict_end,
                # where every rank stops together. The thread goes on draining the queue.
                log.error("writing batch %d failed: %s", batch_idx, describe_error(err), exc_info=err)
                self.fatal = self.fatal or f"writing batch {batch_idx} failed: {describe_error(err)}"

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _collect_perceptual(self) -> None:
        """Fill in PESQ and STOI from the worker processes; a pair that failed is an error row."""
        for row, future in self._pending:
            try:
                row.update(future.result())
            except Exception as err:
                self.rows.remove(row)
                self._error(row["index"], row["file"], row["variant"], f"PESQ/STOI failed: {describe_error(err)}")
        self._pending = []

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # Also after an exception, so no thread or worker process outlives the run.
        self._stop_thread()
        self._stop_pool()

    def _error(self, index: int, relpath: str, variant: str, reason: str) -> None:
        log.error("%s%s: %s", relpath, f" [{variant}]" if variant else "", reason)
        self.errors.append({"index": index, "file": relpath, "variant": variant, "reason": reason})
        # An earlier run's output (under --overwrite) must not stand in for what failed now.
        rel = output_relpath(relpath)
        for name in [variant] if variant else ["input", *(v.name for v in self.info.variants)]:
            target = self.out / name / rel
            target.unlink(missing_ok=True)
            suffix = self._variants[name].codes_suffix if name in self._variants else ""
            if suffix:
                target.with_suffix(suffix).unlink(missing_ok=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        if self._thread is None:  # used outside a Lightning run (setup not called)
            self._start_thread()
        self._queue.put((batch_idx, prediction))  # blocks while queue_batches batches are pending

    def write(self, result: FileResult) -> None:
        """One file's outputs and rows; a failure to write one output is that output's error row."""
        t0 = time.perf_counter()
        try:
            self._write(result)
        finally:
            self.write_seconds += time.perf_counter() - t0

    def _write(self, result: FileResult) -> None:
        if not isinstance(result, FileResult):
            raise TypeError(f"predict_step must return FileResult records, got {type(result).__name__}")
        result.check_host()
        if result.error is not None:
            self._error(result.index, result.relpath, "", result.error)
            return
        rel = output_relpath(result.relpath)
        try:
            files.write_wav(self.out / "input" / rel, result.input_wav, self.spec.sample_rate)
        except OSError as err:
            self._error(result.index, result.relpath, "", f"writing the input failed: {describe_error(err)}")
            return
        for out in result.variants:
            if out.error is not None:
                self._error(result.index, result.relpath, out.variant, out.error)
                continue
            try:
                self.rows.append(self._write_variant(result, out))
            except Exception as err:  # a full disk, or a perceptual metric failing in a new way
                self._error(result.index, result.relpath, out.variant, f"writing failed: {describe_error(err)}")

    def _write_variant(self, result: FileResult, out: VariantResult) -> dict:
        variant = self._variants[out.variant]
        target = self.out / out.variant / output_relpath(result.relpath)
        files.write_wav(target, out.wav, self.spec.sample_rate)
        if out.bitstream is not None:
            files.write_bytes(target.with_suffix(variant.codes_suffix), out.bitstream)
        duration = result.input_wav.size / self.spec.sample_rate
        row = {
            "index": result.index,
            "file": result.relpath,
            "variant": out.variant,
            "duration_s": duration,
            "seconds": out.seconds,
            **out.metrics,
            "latent_snr_db": out.latent_snr_db,
            "bitrate_bps": variant.bitrate(self.info.variant_settings),
            "measured_bps": len(out.bitstream) * 8 / duration if out.bitstream is not None and duration > 0 else None,
            "notes": "; ".join(out.notes),
        }
        if self.perceptual:
            label = f"{result.relpath} [{out.variant}]"
            if self._pool is not None:
                self._pending.append((row, self._pool.submit(M.perceptual_scores, result.input_wav, out.wav, label)))
            else:
                row.update(M.perceptual_scores(result.input_wav, out.wav, label))
        return row

    def on_predict_end(self, trainer, pl_module) -> None:
        self._stop_thread()  # every queued file written
        self._collect_perceptual()
        self._stop_pool()
        # A collective: every rank reaches it once its last batch is written.
        parts = gather_to_all((self.rows, self.errors, self.fatal))
        fatal = [f"rank {rank}: {failure}" for rank, (_, _, failure) in enumerate(parts) if failure]
        if fatal:
            raise RuntimeError("; ".join(fatal))
        if trainer.is_global_zero:
            rows, errors = [r for rows, _, _ in parts for r in rows], [e for _, errors, _ in parts for e in errors]
            finalize(self.out, self.info, rows, errors, self._timing(pl_module))

    def _timing(self, pl_module) -> dict:
        """Where rank 0's time went: start-up (process start to first batch), then the predict loop."""
        now = time.perf_counter()
        first = self.first_batch_at if self.first_batch_at is not None else now
        stages = dict(getattr(pl_module, "stage_seconds", {}))
        stages["write"] = self.write_seconds
        return {
            "startup_s": first - self.info.started_at if self.info.started_at is not None else None,
            "predict_s": now - first,
            "stage_s": {k: round(v, 4) for k, v in stages.items()},
        }


# ---------------------------------------------------------------------- results
def bitrate_label(bps: float | None, is_reconstruction: bool = True) -> str:
    if not is_reconstruction:
        return "n/a (not a reconstruction)"
    if bps is None:
        return "n/a (not a bitstream)"
    return f"{bps / 1000:.1f} kbps" if bps >= 1000 else f"{bps:.1f} bps"


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
        coded = [r for r in mine if r.get("measured_bps") is not None]
        coded_seconds = sum(r["duration_s"] for r in coded)
        variants[variant.name] = {
            "description": variant.description,
            "is_reconstruction": variant.is_reconstruction,
            "bitrate_bps": bps,
            "bitrate_label": bitrate_label(bps, variant.is_reconstruction),
            # Every written file's bits over all their audio: headers and padding included.
            "measured_bps": sum(r["measured_bps"] * r["duration_s"] for r in coded) / coded_seconds if coded_seconds > 0 else None,
            "files": len(mine),
            "seconds_per_clip": compute_seconds / len(mine) if mine else None,
            "real_time_factor": audio_seconds / compute_seconds if compute_seconds > 0 else None,
            **stats,
        }
    return {"variants": variants, "run": info.settings}


def finalize(out: Path, info: RunInfo, rows: list[dict], errors: list[dict], timing: dict | None = None) -> dict:
    """Write metrics.csv, errors.csv and summary.json from every rank's rows (global rank 0 only)."""
    order = [v.name for v in info.variants]
    rows = sorted(rows, key=lambda r: (r["file"], order.index(r["variant"])))
    errors = sorted(errors, key=lambda e: (e["file"], order.index(e["variant"]) if e["variant"] in order else -1))
    files.write_csv(out / "metrics.csv", ROW_COLUMNS, rows)
    files.write_csv(out / "errors.csv", ERROR_COLUMNS, errors)
    summary = summarise(rows, info)
    summary["errors"] = len(errors)
    if timing is not None:
        summary["timing"] = timing
    files.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    (out / RUN_MARKER).unlink(missing_ok=True)
    return summary
