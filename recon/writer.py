"""Writer -> summary: each file's outputs written as its batch finishes, rows gathered at the end.

Rules that keep it running on any accelerator and number of ranks:

* The writer takes host data only (:class:`~recon.records.FileResult`); it never touches a device.
* Under DDP, Lightning's predict split is unrepeated (rank r gets items r, r + world, ...), so every
  file is processed by exactly one rank. Rows and errors reach global rank 0 through the process
  group, not through files; the output folder must be shared by all ranks, which a marker written
  by rank 0 and checked by every rank proves before any work starts.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from . import files
from . import metrics as M
from .audio import AudioSpec
from .distributed import gather_to_all
from .inputs import output_relpath
from .outputs import UsageError, check_output, describe_error, remove_previous, write_manifest
from .records import FileResult, RunInfo, VariantResult
from .summary import finalize

log = logging.getLogger(__name__)

# Written by global rank 0 at start-up; every rank must see it (a shared output folder).
RUN_MARKER = ".recon-run"
_STOP = object()  # ends the writer thread


class ResultWriter(BasePredictionWriter):
    """Writes each file's outputs as its batch finishes; rows and errors reach rank 0 at the end.

    Host data only (see :class:`FileResult`). The writing happens on a background thread fed by a
    bounded queue, so the loop that feeds the device does not wait on the disk (and waits only when
    ``queue_batches`` batches are pending). Perceptual metrics (PESQ, STOI), whose libraries take
    numpy arrays and hold the GIL, run in ``perceptual_workers`` CPU processes when the model is on
    an accelerator, and are collected at the end. A failure of the thread fails the run at the end
    of predict, on every rank together.
    """

    def __init__(self, out_dir: str | Path, info: RunInfo, spec: AudioSpec = AudioSpec(), perceptual: bool | Sequence[str] = True,
                 overwrite: bool = False, queue_batches: int = 4, perceptual_workers: int | None = None):
        super().__init__(write_interval="batch")
        self.out = Path(out_dir)
        self.info = info
        self.spec = spec
        # True: every metric of M.PERCEPTUAL_METRICS; or the names of those to compute.
        self.perceptual = tuple(M.PERCEPTUAL_METRICS if perceptual is True else perceptual or ())
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
                self._pending.append((row, self._pool.submit(M.perceptual_scores, result.input_wav, out.wav, label, self.perceptual)))
            else:
                row.update(M.perceptual_scores(result.input_wav, out.wav, label, self.perceptual))
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
            (self.out / RUN_MARKER).unlink(missing_ok=True)

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

