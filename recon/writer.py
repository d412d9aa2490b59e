"""Writer -> summary: each file's outputs committed as it finishes, the summary merged at the end.

Rules that keep it running on any accelerator and number of ranks, and resumable:

* The writer takes host data only (:class:`~recon.records.FileResult`); it never touches a device.
* A file is committed when it is done: its wavs and codec files are renamed into place (atomic,
  :mod:`recon.files`), then its rows and errors are appended to this rank's journal
  (:mod:`recon.journal`) and fsynced. A run stopped at any moment leaves only whole files, and
  ``--resume`` skips exactly the committed ones.
* Every file is processed by exactly one rank (the batch plan of :class:`recon.inputs.FileBatches`).
  Rows never pass through the process group: each rank streams them to its journal, and global
  rank 0 merges the journals into metrics.csv once every rank has said it is done, so rank 0's
  memory does not grow with the corpus while it runs and no collective waits on a slow rank.
* The output folder must be shared by all ranks, which a marker written by rank 0 and checked by
  every rank proves before any work starts.
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
from collections import deque
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
from .journal import JOURNAL, Journal, RankJournal
from .outputs import INPUT_FOLDER, UsageError, check_output, describe_error, remove_previous, write_manifest
from .records import FileResult, RunInfo, VariantResult
from .summary import finalize

log = logging.getLogger(__name__)

# Written by global rank 0 at start-up; every rank must see it (a shared output folder).
RUN_MARKER = ".recon-run"
_STOP = object()  # ends the writer thread


class ResultWriter(BasePredictionWriter):
    """Writes and commits each file's outputs as its batch finishes; rank 0 writes the summary at the end.

    Host data only (see :class:`FileResult`). The writing happens on a background thread fed by a
    bounded queue, so the loop that feeds the device does not wait on the disk (and waits only when
    ``queue_batches`` batches are pending). Perceptual metrics (PESQ, STOI), whose libraries take
    numpy arrays and hold the GIL, run in ``perceptual_workers`` CPU processes when the model is on
    an accelerator; at most ``perceptual_backlog`` files wait for them (default: 4 per worker), then
    the writer thread waits for the oldest, the queue fills and predict waits: memory stays bounded
    whatever the corpus. A failure of the thread fails the run at the end of predict.

    ``resume``: continue the run recorded in ``out`` (its identity must equal ``info.identity``);
    ``rank_timeout``: seconds rank 0 waits for a rank whose heartbeat stopped before giving up on it.
    """

    def __init__(self, out_dir: str | Path, info: RunInfo, spec: AudioSpec = AudioSpec(), perceptual: bool | Sequence[str] = True,
                 overwrite: bool = False, queue_batches: int = 4, perceptual_workers: int | None = None,
                 resume: bool = False, perceptual_backlog: int | None = None, rank_timeout: float = 1800.0):
        super().__init__(write_interval="batch")
        self.out = Path(out_dir)
        self.info = info
        self.spec = spec
        # True: every metric of M.PERCEPTUAL_METRICS; or the names of those to compute.
        self.perceptual = tuple(M.PERCEPTUAL_METRICS if perceptual is True else perceptual or ())
        self.overwrite = overwrite
        self.resume = resume
        self.queue_batches = queue_batches
        # PESQ and STOI hold the GIL for seconds per file. With the model on an accelerator they run
        # in worker processes; on the CPU, which the model keeps busy, spawning workers (each
        # importing torch) costs more than it frees (measured on 2 cores: 62 s vs 45 s for the demo),
        # so they run on the writer thread. ``None`` chooses by device; 0 means the writer thread.
        self.perceptual_workers = perceptual_workers
        self.perceptual_backlog = perceptual_backlog
        self.rank_timeout = rank_timeout
        self._pool: ProcessPoolExecutor | None = None
        self._backlog = perceptual_backlog if perceptual_backlog is not None else 4
        # Files whose outputs are written and whose PESQ/STOI are being computed: (record, [(row, future)]).
        self._pending: deque[tuple[dict, list[tuple[dict, Future]]]] = deque()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self.journal = Journal(self.out)
        self._rank_journal: RankJournal | None = None
        self._attempt: str | None = None
        self._skip: set[str] = set()  # files an earlier attempt committed
        self.committed = 0  # files this process committed
        self.fatal: str | None = None  # an unexpected failure of this rank's writing, raised at the end
        self._finished = False
        self._variants = {v.name: v for v in info.variants}
        self.write_seconds = 0.0  # time the writer thread spent writing files
        self.first_batch_at: float | None = None

    # -------------------------------------------------------------- start
    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before any work, on every rank: the output folder is usable, and it is the same folder for all."""
        problem, token = None, None
        if trainer.is_global_zero:
            try:
                token = uuid.uuid4().hex[:12]
                self._prepare_output()
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
        self.fatal, self._finished, self.committed = None, False, 0
        self.first_batch_at, self.write_seconds = None, 0.0
        self._skip = self.journal.finished() if self.resume else set()
        self._attempt = token
        self._rank_journal = RankJournal(self.journal, token, trainer.global_rank)
        self._start_thread(pl_module.device)
        if hasattr(pl_module, "open_output"):
            pl_module.open_output = self.open_output

    def open_output(self, folder: str, relpath: str) -> files.WavStream:
        """A wav of this run's output folder written as it grows (a streamed file's); it appears when
        the file is committed, and not at all if the file fails."""
        return files.WavStream(self.out / folder / output_relpath(relpath), self.spec.sample_rate)

    def _prepare_output(self) -> None:
        """Rank 0: a fresh run clears what the previous run wrote and records its identity; a resumed
        run checks that identity and removes what a kill left half-written."""
        outputs = [*self.info.outputs(), f"{JOURNAL}/"]
        resuming = self.resume and self.journal.exists()  # --resume where no run started: a fresh run
        if resuming:
            self.journal.check(self.info.identity)
            for folder in [INPUT_FOLDER, *self._variants]:
                for tmp in (self.out / folder).rglob(".*.tmp"):  # a write the kill interrupted
                    tmp.unlink(missing_ok=True)
        else:
            remove_previous(self.out, check_output(self.out, self.overwrite, outputs))
        # Recorded before anything is written, so an interrupted run is removed as a whole.
        write_manifest(self.out, outputs)
        if not resuming:
            self.journal.start(self.info.identity)

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
        self._backlog = self.perceptual_backlog if self.perceptual_backlog is not None else 4 * max(workers, 1)
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
                # Not raised here: this rank reports it when it is done, and rank 0 fails the run.
                # The thread goes on draining the queue.
                log.error("writing batch %d failed: %s", batch_idx, describe_error(err), exc_info=err)
                self.fatal = self.fatal or f"writing batch {batch_idx} failed: {describe_error(err)}"

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -------------------------------------------------------------- one file
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

    def _error(self, record: dict, index: int, relpath: str, variant: str, reason: str) -> None:
        log.error("%s%s: %s", relpath, f" [{variant}]" if variant else "", reason)
        record["errors"].append({"index": index, "file": relpath, "variant": variant, "reason": reason})
        # An earlier run's output (under --overwrite, or before a kill) must not stand in for what failed now.
        rel = output_relpath(relpath)
        for name in [variant] if variant else [INPUT_FOLDER, *(v.name for v in self.info.variants)]:
            target = self.out / name / rel
            target.unlink(missing_ok=True)
            suffix = self._variants[name].codes_suffix if name in self._variants else ""
            if suffix:
                target.with_suffix(suffix).unlink(missing_ok=True)

    def _write(self, result: FileResult) -> None:
        if not isinstance(result, FileResult):
            raise TypeError(f"predict_step must return FileResult records, got {type(result).__name__}")
        result.check_host()
        if result.relpath in self._skip:
            return  # committed by an earlier attempt; its batch came back for the others' sake
        record = {"file": result.relpath, "rows": [], "errors": []}
        scoring: list[tuple[dict, Future]] = []
        if result.error is not None:
            for stream in result.streams:
                stream.discard()
            self._error(record, result.index, result.relpath, "", result.error)
        else:
            try:
                if result.input_stream is not None:
                    result.input_stream.commit()
                else:
                    files.write_wav(self.out / INPUT_FOLDER / output_relpath(result.relpath), result.input_wav, self.spec.sample_rate)
            except OSError as err:
                for stream in result.streams:
                    stream.discard()
                self._error(record, result.index, result.relpath, "", f"writing the input failed: {describe_error(err)}")
                result.variants = []
            for out in result.variants:
                if out.error is not None:
                    if out.stream is not None:
                        out.stream.discard()
                    self._error(record, result.index, result.relpath, out.variant, out.error)
                    continue
                try:
                    row, future = self._write_variant(result, out)
                    record["rows"].append(row)
                    if future is not None:
                        scoring.append((row, future))
                except Exception as err:  # a full disk, or a perceptual metric failing in a new way
                    self._error(record, result.index, result.relpath, out.variant, f"writing failed: {describe_error(err)}")
        self._pending.append((record, scoring))
        self._commit_ready(self._backlog)

    def _write_variant(self, result: FileResult, out: VariantResult) -> tuple[dict, Future | None]:
        variant = self._variants[out.variant]
        target = self.out / out.variant / output_relpath(result.relpath)
        if out.stream is not None:
            if out.stream.path != target:
                raise ValueError(f"{out.variant} was streamed to {out.stream.path}, not to {target}")
            out.stream.commit()
        else:
            files.write_wav(target, out.wav, self.spec.sample_rate)
        if out.bitstream is not None:
            files.write_bytes(target.with_suffix(variant.codes_suffix), out.bitstream)
        duration = result.length / self.spec.sample_rate
        notes = list(out.notes)
        if self.perceptual and result.input_stream is not None and M.perceptual_excerpt_note(result.length):
            notes.append(M.perceptual_excerpt_note(result.length))
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
            "notes": "; ".join(notes),
        }
        future = None
        if self.perceptual:
            label = f"{result.relpath} [{out.variant}]"
            if result.input_stream is not None:  # a streamed file: scored from its written files, in bounded memory
                score, pair = M.perceptual_scores_of_files, (str(result.input_stream.path), str(target))
            else:
                score, pair = M.perceptual_scores, (result.input_wav, out.wav)
            if self._pool is not None:
                future = self._pool.submit(score, *pair, label, self.perceptual)
            else:
                row.update(score(*pair, label, self.perceptual))
        return row, future

    def _commit_ready(self, backlog: int) -> None:
        """Commit the files whose scores are in, oldest first; while more than ``backlog`` files wait
        for their scores, wait for the oldest (the back-pressure that bounds memory)."""
        while self._pending:
            record, scoring = self._pending[0]
            if len(self._pending) <= backlog and not all(future.done() for _, future in scoring):
                return
            for row, future in scoring:
                try:
                    row.update(future.result())
                except Exception as err:
                    record["rows"].remove(row)
                    self._error(record, row["index"], row["file"], row["variant"], f"PESQ/STOI failed: {describe_error(err)}")
            self._pending.popleft()
            self._commit(record)

    def _commit(self, record: dict) -> None:
        if self._rank_journal is None:  # used outside a Lightning run (setup not called)
            self._attempt = uuid.uuid4().hex[:12]
            self._rank_journal = RankJournal(self.journal, self._attempt, 0)
        self._rank_journal.append(record)
        self.committed += 1

    # -------------------------------------------------------------- end
    def on_predict_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._finished = True  # the exception is the run's outcome; no summary
        if self._rank_journal is not None:
            # Rank 0 learns it at once instead of waiting for the heartbeat to fall silent.
            self._rank_journal.done(f"failed: {describe_error(exception)}")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # A rank whose share is empty never reaches on_predict_end (Lightning skips its loop).
        if not self._finished and self._rank_journal is not None:
            self._finish(trainer, pl_module)
        # Also after an exception, so no thread or worker process outlives the run.
        self._stop_thread()
        self._stop_pool()
        if self._rank_journal is not None:
            self._rank_journal.close()

    def _finish(self, trainer, pl_module) -> None:
        self._finished = True
        self._stop_thread()  # every queued file written
        self._commit_ready(0)
        self._stop_pool()
        if self._rank_journal is None:  # nothing was written
            self._commit_nothing()
        self._rank_journal.done(self.fatal)
        rank, world = getattr(trainer, "global_rank", 0), getattr(trainer, "world_size", 1)
        if rank != 0:
            if self.fatal:
                raise RuntimeError(f"rank {rank}: {self.fatal}")
            return
        failures = {0: self.fatal, **self.journal.wait_for_ranks(self._attempt, list(range(1, world)), self.rank_timeout)}
        fatal = [f"rank {r}: {failure}" for r, failure in sorted(failures.items()) if failure]
        if fatal:
            raise RuntimeError("; ".join(fatal))
        rows, errors = [], []
        for record in self.journal.records():
            rows += record["rows"]
            errors += record["errors"]
        finalize(self.out, self.info, rows, errors, self._timing(pl_module))
        (self.out / RUN_MARKER).unlink(missing_ok=True)

    def _commit_nothing(self) -> None:
        self._attempt = self._attempt or uuid.uuid4().hex[:12]
        self._rank_journal = RankJournal(self.journal, self._attempt, 0)

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
            "files_committed": self.committed,
        }
