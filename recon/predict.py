"""Model -> variants -> stitched audio -> metrics: the LightningModule of ``infer.py``.

Each batch of files is cut into windows (:mod:`recon.windows`), each forward pass of equal-length
windows is encoded once and every requested variant runs on it; a file's segments are stitched
back to its length (crossfaded where they overlap), the torch metrics are computed on the device, and the results go to the host
as :class:`~recon.records.FileResult` records for the writer.

An exception in one variant for one file becomes that pair's error and the rest goes on; a batch
that fails is retried one file at a time first (a CUDA out-of-memory error on a batch of several
files usually passes file by file).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import lightning as L
import torch
from torch import Tensor

from . import metrics as M
from .audio import crossfade_join
from .compile import COMPILE_MODES, compile_networks
from .outputs import describe_error
from .precision import fp32_island
from .files import WavStream
from .records import FileResult, VariantResult
from .streamed import stream_file
from .variants import Models, Variant, VariantInput, VariantSettings
from .windows import Windows, encode_windows

log = logging.getLogger(__name__)

T = TypeVar("T")

# The held path scores variants together, as many at a time as fit this many samples: a batch of
# whole-file spectra at several resolutions grows with variants x length, and past a few million
# samples it is slower (memory-bound) than scoring in turn, as well as larger.
METRIC_BATCH_SAMPLES = 1 << 22


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
        # A resumed run may leave fewer batches than ranks; a rank without a batch still finishes
        # its journal (ResultWriter.teardown), so Lightning must not refuse its empty loader.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        self.compile_mode, self.compile_backend = compile_mode, compile_backend
        self._reported: set[str] = set()
        # Where a streamed file's outputs are written as they grow: ResultWriter.open_output, set by
        # the writer at setup (in each process, after ddp_spawn pickled this module).
        self.open_output: Callable[[str, str], WavStream] | None = None
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
        logmel, posterior = encode_windows(self.frontend, self.backbone, wav)
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
        held = [item for item in batch if item.get("source") is None]
        results = {r.index: r for r in self._predict_held(held)} if held else {}
        for item in batch:
            if item.get("source") is not None:
                results[item["index"]] = self._stream(item)
        return [results[item["index"]] for item in batch]

    def _stream(self, item: dict) -> FileResult:
        """A file too long to hold (recon.streamed), or the reason it failed."""
        try:
            return stream_file(self, item)
        except Exception as err:
            self._log_first("streamed file", err)
            return FileResult(item["index"], item["relpath"], error=f"failed: {describe_error(err)}")

    def _predict_held(self, batch: list[dict]) -> list[FileResult]:
        """Files held whole: their windows share forward passes across the step."""
        spec = self.backbone.spec
        ok = [item for item in batch if item["error"] is None]
        windows = Windows([item["wav"] for item in ok], spec, self.settings.overlap)
        owner = windows.owner  # segment -> position in ok
        keys = [f"{item['relpath']}#{i}" for f, item in enumerate(ok) for i in range(len(windows.of_file(f)))]
        outputs: dict[str, dict[int, SegmentOutput]] = {v.name: {} for v in self.variants}  # variant -> segment -> output
        failed: dict[tuple[int, str], str] = {}  # (file position, variant or "") -> reason
        seconds = defaultdict(float)

        # Segments of equal length share forward passes: full ones, then each length of last segment.
        for chunk in windows.chunks(self.segment_batch):
            self._sync()
            t0 = time.perf_counter()
            encoded = self._isolated("encode", lambda sel: self._encode(windows.stack(sel), [keys[s] for s in sel]), windows.by_file(chunk))
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
                    runs = self._isolated(variant.name, lambda sel: self._run_variant(variant, x, [row[s] for s in sel]), windows.by_file(members))
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
        total = max(sum(windows.lengths()), 1)
        results = {item["index"]: FileResult(item["index"], item["relpath"], error=item["error"]) for item in batch}
        for f, item in enumerate(ok):
            members = windows.of_file(f)
            result = results[item["index"]]
            result.input_wav = item["wav"].float().cpu().numpy()
            if (f, "") in failed:
                result.error = failed[(f, "")]
                continue
            share = sum(windows.lengths(members)) / total
            stitched = {}
            for variant in self.variants:
                name = variant.name
                entry = VariantResult(name, seconds=share * (seconds[name] + (seconds["encode"] if variant.uses_latent else 0.0)))
                result.variants.append(entry)
                if (f, name) in failed:
                    entry.error = failed[(f, name)]
                    continue
                try:
                    wav = self._assemble(variant, [outputs[name][s] for s in members], item["wav"].numel(), entry, item.get("level", 1.0),
                                         item.get("source_format"))
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

    def _assemble(self, variant: Variant, parts: list[SegmentOutput], length: int, entry: VariantResult, level: float = 1.0,
                  source: dict | None = None) -> Tensor | None:
        """Stitch one file's segments, fill in the entry; None (with the reason) for non-finite audio."""
        wav = crossfade_join([p.wav.float() for p in parts], self.settings.overlap, length)
        if not torch.isfinite(wav).all():
            entry.error = "produced non-finite audio (NaN or inf); nothing written"
            return None
        snr = [p.latent_snr_db for p in parts if p.latent_snr_db is not None]
        entry.latent_snr_db = statistics.fmean(snr) if snr else None
        entry.notes = sorted({n for p in parts for n in p.notes})
        if variant.pack_codes is not None and all(p.codes is not None for p in parts):
            entry.bitstream = variant.pack_codes([p.codes for p in parts], [p.wav.shape[-1] for p in parts], length, level, variant.settings(self.settings), self.models,
                                                source=source)
        return wav

    def _file_metrics(self, reference: Tensor, stitched: dict[str, Tensor], result: FileResult) -> float:
        """The torch metrics of every variant of one file, batched over the variants, on the device;
        then the outputs that have them go to the host. Returns the seconds the metrics took."""
        by_name = {entry.variant: entry for entry in result.variants}
        names = list(stitched)

        def compute(sel: list[int]) -> dict[str, Tensor]:
            with fp32_island(reference.device):
                estimate = torch.stack([stitched[names[i]] for i in sel])
                values = M.compute_all(reference[None], estimate, self.frontend, include_perceptual=False)
                return {k: v.tolist() for k, v in values.items()}

        self._sync()
        t0 = time.perf_counter()
        per_batch = max(1, METRIC_BATCH_SAMPLES // max(1, reference.numel()))
        scored = []
        for start in range(0, len(names), per_batch):
            scored += self._isolated("metrics", compute, [[i] for i in range(start, min(start + per_batch, len(names)))])
        for sel, values in scored:
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

