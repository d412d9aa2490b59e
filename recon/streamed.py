"""Files too long to hold: read, run, joined, scored and written window by window.

A file longer than ``--stream-above`` seconds is not loaded whole. Its windows (the same layout
as a held file's, :func:`recon.audio.segment_lengths`) are read by offset from an
:class:`~recon.audio_source.AudioSource`, ``segment_batch`` consecutive windows per forward pass
(the forward passes a held file alone in its step gets, so the outputs are the same); each
variant's windows are crossfaded as they come (:class:`~recon.audio.CrossfadeStream`), written to
its wav under a temporary name (:class:`~recon.files.WavStream`, which the writer renames into
place when the file is committed) and fed to the waveform metrics
(:class:`~recon.metric_stream.MetricStream`). What a file holds at once is one forward pass's
windows and the metrics' running sums, whatever its length; only the codes of codec variants
(a few kB per minute) are kept to the end, where they are packed into one file.

A failure of one variant drops that variant's output for the file; a failure of the encoder or
of the reading drops the whole file; nothing half-written is left either way.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from .audio import TAIL_FRAMES, CrossfadeStream, fit_length, segment_lengths
from .files import WavStream
from .metric_stream import MetricStream
from .outputs import INPUT_FOLDER, describe_error
from .precision import fp32_island
from .records import FileResult, VariantResult
from .variants import Variant

READ_BACK_SAMPLES = 16000 * 30  # block size of the metrics' second pass over the written files


@dataclass
class _VariantStream:
    """One variant's output of one streamed file, as it grows."""

    variant: Variant
    wav: WavStream
    join: CrossfadeStream
    seconds: float = 0.0
    codes: list[Tensor] = field(default_factory=list)
    snr: list[float] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    error: str | None = None

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
            self.wav.discard()


def window_groups(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive windows of equal length, at most ``batch_size`` per forward pass, in order."""
    groups: list[list[int]] = []
    for k, length in enumerate(lengths):
        if groups and len(groups[-1]) < batch_size and lengths[groups[-1][0]] == length:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def stream_file(runner, item: dict) -> FileResult:
    """Run every variant of ``runner`` on the streamed file ``item`` (``item["source"]`` an
    AudioSource); its outputs come back written under temporary names for the writer to commit."""
    source = item["source"]
    if runner.open_output is None:
        raise RuntimeError("a streamed file needs an output sink: the ResultWriter sets one at setup")
    spec, overlap, device = runner.backbone.spec, runner.settings.overlap, runner.device
    length = source.num_samples
    lengths = segment_lengths(length, spec.num_samples, TAIL_FRAMES * spec.hop_length, overlap)
    hop = spec.num_samples - overlap
    rel = item["relpath"]
    result = FileResult(item["index"], rel, num_samples=length)
    result.input_stream = runner.open_output(INPUT_FOLDER, rel)
    outputs = [_VariantStream(v, runner.open_output(v.name, rel), CrossfadeStream(overlap, length)) for v in runner.variants]
    try:
        metrics = MetricStream(len(outputs), runner.frontend, device=device)
        written = 0

        def emit(blocks: list[Tensor | None], count: int) -> None:
            """The next ``count`` final samples of every variant (None: failed) and of the input."""
            nonlocal written
            if any(b is not None and b.shape[-1] != count for b in blocks):
                raise RuntimeError(f"variants gave {[None if b is None else b.shape[-1] for b in blocks]} samples where {count} were due")
            if count == 0:
                return
            reference = source.read(written, written + count).to(device)
            result.input_stream.write(reference.cpu().numpy())
            estimates = []
            for out, block in zip(outputs, blocks):
                if block is not None and out.error is None and not torch.isfinite(block).all():
                    out.fail("produced non-finite audio (NaN or inf); nothing written")
                if out.error is not None:
                    metrics.drop(outputs.index(out))
                if block is None or out.error is not None:
                    estimates.append(torch.zeros_like(reference))  # a failed variant's metrics are dropped
                    continue
                out.wav.write(block.cpu().numpy())
                estimates.append(block)
            t0 = time.perf_counter()
            with fp32_island(reference.device):
                metrics.update(reference, torch.stack(estimates))
            runner.stage_seconds["metrics"] += time.perf_counter() - t0
            written += count

        for group in window_groups(lengths, runner.segment_batch):
            # One read per forward pass, and the input's emitted samples lie inside it: the source is
            # read front to back (a file only audioread decodes cannot seek back cheaply).
            start = group[0] * hop
            span = source.read(start, group[-1] * hop + spec.num_samples)
            windows = torch.stack([fit_length(span[k * hop - start : k * hop - start + spec.num_samples], lengths[k]) for k in group])
            runner._sync()
            t0 = time.perf_counter()
            x = runner._encode(windows.to(device), [f"{rel}#{k}" for k in group])
            runner._sync()
            encode_seconds = time.perf_counter() - t0
            runner.stage_seconds["encode"] += encode_seconds
            blocks: list[Tensor | None] = []
            for out in outputs:
                if out.error is not None:
                    blocks.append(None)
                    continue
                t0 = time.perf_counter()
                try:
                    parts = runner._run_variant(out.variant, x, list(range(len(group))))
                except Exception as err:  # this variant fails for this file; the others go on
                    runner._log_first(out.variant.name, err)
                    out.fail(describe_error(err))
                    blocks.append(None)
                    continue
                runner._sync()
                spent = time.perf_counter() - t0
                runner.stage_seconds[out.variant.name] += spent
                out.seconds += spent + (encode_seconds if out.variant.uses_latent else 0.0)
                blocks.append(torch.cat([out.join.push(p.wav.float()) for p in parts]))
                out.snr += [p.latent_snr_db for p in parts if p.latent_snr_db is not None]
                out.notes.update(n for p in parts for n in p.notes)
                if out.variant.pack_codes is not None:
                    out.codes += [p.codes for p in parts]
            # What CrossfadeStream.push makes final: all of each window but its last `overlap` samples.
            emit(blocks, min(sum(max(lengths[k] - overlap, 0) for k in group), length - written))
        emit([out.join.finish() if out.error is None else None for out in outputs], length - written)
        if written != length:
            raise RuntimeError(f"streamed {written} of {length} samples")
        if metrics.passes == 2:
            _second_pass(metrics, result.input_stream, outputs, device)
        values = metrics.finish()
    except Exception:
        for stream in [result.input_stream, *(out.wav for out in outputs)]:
            stream.discard()
        raise
    finally:
        source.close()
    for r, out in enumerate(outputs):
        entry = VariantResult(out.variant.name, seconds=out.seconds, error=out.error)
        result.variants.append(entry)
        if out.error is not None:
            continue
        entry.stream = out.wav
        entry.metrics = {name: column[r] for name, column in values.items()}
        entry.latent_snr_db = statistics.fmean(out.snr) if out.snr else None
        entry.notes = sorted(out.notes)
        if out.variant.pack_codes is not None and len(out.codes) == len(lengths) and all(c is not None for c in out.codes):
            try:
                entry.bitstream = out.variant.pack_codes(out.codes, lengths, length, item.get("level", 1.0),
                                                         out.variant.settings(runner.settings), runner.models, source=item.get("source_format"))
            except Exception as err:  # packing this file's codes
                runner._log_first(f"{out.variant.name} output", err)
                entry.error, entry.stream = describe_error(err), None
                out.wav.discard()
    return result


def _second_pass(metrics: MetricStream, reference: WavStream, outputs: list[_VariantStream], device) -> None:
    """Feed the metrics the written signals again (what a metric with whole-file statistics needs);
    a failed variant is fed zeros, as in the first pass."""
    for stream in [reference, *(out.wav for out in outputs if out.error is None)]:
        stream.close()
    readers = [sf.SoundFile(reference.tmp)] + [None if out.error is not None else sf.SoundFile(out.wav.tmp) for out in outputs]
    try:
        while True:
            ref = readers[0].read(READ_BACK_SAMPLES, dtype="float32")
            if ref.size == 0:
                break
            estimates = [np.zeros_like(ref) if r is None else r.read(ref.size, dtype="float32") for r in readers[1:]]
            with fp32_island(device):
                metrics.update(torch.from_numpy(ref).to(device), torch.from_numpy(np.stack(estimates)).to(device), pass_index=1)
    finally:
        for r in readers:
            if r is not None:
                r.close()
