"""The variant runner in-process: host-only records for the writer, and failures pinned on one file and
one variant while the rest goes on."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch

from recon import metrics as M
from recon.inputs import InferenceFiles, collate_files
from recon.predict import VariantRunner
from recon.records import FileResult, RunInfo, VariantResult
from recon.variants import VARIANTS, Models, Reconstruction, Variant, VariantInput, VariantSettings, vae_mode, vae_sample
from recon.writer import ResultWriter
from tests.conftest import write_tone

SETTINGS = VariantSettings(griffinlim_iters=2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in")
    write_tone(root / "a.wav", 1.0, freq=220)
    write_tone(root / "b.wav", 12.0, freq=440)  # two segments: the second shares a batch with c
    write_tone(root / "c.wav", 1.0, freq=880)
    (root / "d.wav").write_bytes(b"")
    return root


def host_leaves(obj, path="result"):
    """(path, value) of every leaf of a prediction record."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from host_leaves(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from host_leaves(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from host_leaves(item, f"{path}[{key!r}]")
    else:
        yield path, obj


def test_predict_step_hands_the_writer_host_data_only(models, inputs, single_thread):
    """Lightning moves the whole batch to the accelerator: anything passed through unconverted would be
    a device tensor. The records carry numpy arrays, bytes and numbers only, never a tensor."""
    variants = [VARIANTS[n] for n in ("vae_mode", "griffinlim", "codebook_hard")]
    runner = VariantRunner(models, variants, SETTINGS, segment_batch=2)
    batch = collate_files([InferenceFiles([inputs])[i] for i in range(4)])
    results = runner.predict_step(batch, 0)
    assert [r.relpath for r in results] == ["a.wav", "b.wav", "c.wav", "d.wav"]
    tensors = [path for path, value in host_leaves(results) if isinstance(value, torch.Tensor)]
    assert tensors == []
    assert results[3].error == "empty file" and results[3].variants == []
    for result in results[:3]:
        assert result.input_wav.dtype == np.float32
        for entry in result.variants:
            assert entry.error is None and entry.wav.shape == result.input_wav.shape
            assert set(entry.metrics) == {"log_mel_db", "mel_multiscale", "mr_stft", "lsd_db", "si_sdr_db", "snr_db", "hf_retention",
                                          "mel_db_mae", "mel_db_mae_low", "mel_db_mae_high", "stft_mag_mse",
                                          "spectral_centroid_l1", "waveform_corr", "envelope_rms_l1"}  # fmt: skip


def test_writer_refuses_device_tensors(tmp_path):
    writer = ResultWriter(tmp_path, RunInfo([VARIANTS["vae_mode"]], {}), perceptual=False)
    assert not any(isinstance(v, (torch.nn.Module, torch.Tensor)) for v in vars(writer).values())
    wav = torch.zeros(16000)
    bad = [
        FileResult(0, "a.wav", input_wav=wav),
        FileResult(0, "a.wav", input_wav=wav.numpy(), variants=[VariantResult("vae_mode", wav=wav)]),
    ]
    for result in bad:
        with pytest.raises(TypeError, match="must be a numpy array on the host"):
            writer.write(result)
        # Inside Lightning's hook (the writer thread) the rank records it, goes on, and every rank
        # stops together at the end.
        writer.fatal = None
        writer.write_on_batch_end(None, None, [result], [0], None, 7)
        writer.write_on_batch_end(None, None, [], [], None, 8)
        with pytest.raises(RuntimeError, match="rank 0: writing batch 7 failed: TypeError"):
            writer.on_predict_end(None, None)
        assert writer._thread is None


def test_last_segments_are_cut_to_their_length_and_batching_does_not_change_results(models, inputs, single_thread):
    """A file's last segment is padded to a multiple of 1.28 s, not to 10.24 s: a 1 s file costs an
    eighth of a segment. Segments of equal length share a forward pass, and a file's output is the
    same whether it shares the pass or runs alone."""
    seen = []

    def recording(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
        seen.append((tuple(x.keys), x.wav.shape[-1], x.mean.shape[2]))
        return vae_sample(x, models, settings)

    variant = Variant("recording", recording, "vae_sample, recording what it is given")
    files = InferenceFiles([inputs])
    together = VariantRunner(models, [variant], SETTINGS, segment_batch=4).predict_step(collate_files([files[i] for i in range(3)]), 0)
    # b (12 s) = one full segment + 1.76 s, padded to 2.56 s; a and c (1 s) padded to 1.28 s, together.
    assert sorted(seen) == sorted([(("b.wav#0",), 163840, 256), (("b.wav#1",), 40960, 64), (("a.wav#0", "c.wav#0"), 20480, 32)])
    for i, result in enumerate(together):
        alone = VariantRunner(models, [variant], SETTINGS, segment_batch=1).predict_step(collate_files([files[i]]), 0)[0]
        a, b = result.variants[0].wav, alone.variants[0].wav
        assert a.shape == result.input_wav.shape and np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def fails_for_b(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    if any(key.startswith("b.wav#") for key in x.keys):
        raise RuntimeError("cannot handle b")
    return vae_mode(x, models, settings)


def oom_on_batches(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    if len({key.split("#")[0] for key in x.keys}) > 1:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return vae_mode(x, models, settings)


def nan_for_c(x: VariantInput, models: Models, settings: VariantSettings) -> Reconstruction:
    rec = vae_mode(x, models, settings)
    for i, key in enumerate(x.keys):
        if key.startswith("c.wav#"):
            rec.wav[i, 100] = float("nan")
    return rec


def test_a_failing_variant_costs_one_row_and_an_oom_batch_is_retried_per_file(tmp_path, models, inputs, single_thread):
    variants = [
        VARIANTS["vae_mode"],
        Variant("fails_for_b", fails_for_b, "raises on b.wav"),
        Variant("oom_on_batches", oom_on_batches, "out of memory on any batch of several files"),
        Variant("nan_for_c", nan_for_c, "non-finite audio on c.wav"),
    ]
    out = tmp_path / "out"
    writer = ResultWriter(out, RunInfo(variants, {}, SETTINGS), perceptual=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(InferenceFiles([inputs]), batch_size=4, collate_fn=collate_files)
    trainer.predict(VariantRunner(models, variants, SETTINGS, segment_batch=2), loader, return_predictions=False)
    with open(out / "errors.csv") as f:
        errors = {(e["file"], e["variant"]): e["reason"] for e in csv.DictReader(f)}
    assert errors == {
        ("b.wav", "fails_for_b"): "RuntimeError: cannot handle b",
        ("c.wav", "nan_for_c"): "produced non-finite audio (NaN or inf); nothing written",
        ("d.wav", ""): "empty file",
    }
    with open(out / "metrics.csv") as f:
        written = {(r["file"], r["variant"]) for r in csv.DictReader(f)}
    expected = {(f, v.name) for f in ("a.wav", "b.wav", "c.wav") for v in variants} - set(errors)
    assert written == expected
    assert {p.name for p in (out / "fails_for_b").iterdir()} == {"a.wav", "c.wav"}
    # The out-of-memory batches passed file by file, equal to vae_mode up to batch-size rounding.
    for name in ("a.wav", "b.wav", "c.wav"):
        expected, _ = sf.read(out / "vae_mode" / name, dtype="float32")
        retried, _ = sf.read(out / "oom_on_batches" / name, dtype="float32")
        np.testing.assert_allclose(retried, expected, atol=1e-5, rtol=0)


class RankZero:
    is_global_zero = True


@pytest.mark.parametrize("workers", [0, 1], ids=["writer-thread", "worker-process"])
def test_perceptual_scores_land_in_their_row(tmp_path, caplog, workers):
    """PESQ, STOI and ViSQOL, computed on the writer thread or in a worker process, land in the row of their
    file and variant; a NaN warning names both."""
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    reference = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    estimate = (reference + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    writer = ResultWriter(tmp_path, RunInfo([VARIANTS["vae_mode"]], {}), perceptual=True, perceptual_workers=workers)
    result = FileResult(0, "a.wav", input_wav=reference, variants=[VariantResult("vae_mode", wav=estimate, metrics={"snr_db": 1.0})])
    writer.write_on_batch_end(None, None, [result], [0], None, 0)
    writer.on_predict_end(RankZero(), None)
    with open(tmp_path / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    expected = M.perceptual_scores(reference, estimate, "a.wav [vae_mode]")
    assert float(row["stoi"]) == pytest.approx(expected["stoi"]) and 0 < expected["stoi"] <= 1
    assert (math.isnan(expected["pesq_wb"]) and row["pesq_wb"] == "nan") or float(row["pesq_wb"]) == pytest.approx(expected["pesq_wb"])
    assert float(row["visqol_audio"]) == pytest.approx(expected["visqol_audio"]) and 1 < expected["visqol_audio"] <= 5
    assert writer._pool is None and writer._thread is None
    M.perceptual_scores(reference, np.zeros_like(estimate), "b.wav [codebook_hard]")
    assert "pesq_wb of b.wav [codebook_hard] is NaN: estimate is silent" in caplog.text


def test_overwrite_follows_the_manifest_and_never_leaves_the_output_folder(tmp_path):
    import json

    from recon.outputs import MANIFEST, UsageError, check_output, remove_previous

    out, outside = tmp_path / "out", tmp_path / "precious"
    outside.mkdir()
    (outside / "x.wav").write_bytes(b"keep")
    out.mkdir()
    for entry in ("input/", "old_variant/"):
        (out / entry / "a.wav").parent.mkdir()
        (out / entry / "a.wav").write_bytes(b"")
    (out / "metrics.csv").write_text("")
    (out / "mine.txt").write_text("the user's")
    (out / MANIFEST).write_text(json.dumps({"entries": ["input/", "old_variant/", "metrics.csv", "summary.json"]}))
    with pytest.raises(UsageError, match="--overwrite"):
        check_output(out, overwrite=False)
    stale = check_output(out, overwrite=True, outputs=["input/", "vae_mode/", "metrics.csv"])
    assert sorted(stale) == ["input/", "metrics.csv", "old_variant/"]  # summary.json was never written
    remove_previous(out, stale)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "mine.txt"]
    # A damaged record that names something outside OUT is refused, not followed.
    for bad in ("../precious", "/tmp", "a/b", ".."):
        (out / MANIFEST).write_text(json.dumps({"entries": [bad]}))
        with pytest.raises(UsageError, match="not names inside"):
            check_output(out, overwrite=True)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(UsageError, match="cannot read"):
        check_output(out, overwrite=True)
    assert (outside / "x.wav").read_bytes() == b"keep"


def test_a_folder_written_before_manifests_is_read_from_its_summary(tmp_path):
    import json

    from recon.outputs import RESULT_NAMES, check_output

    out = tmp_path / "out"
    for folder in ("input", "vae_mode", "griffinlim", "wandb", "my_clips"):
        (out / folder).mkdir(parents=True)
        (out / folder / "a.wav").write_bytes(b"")
    for name in RESULT_NAMES:
        (out / name).write_text("")
    (out / "summary.json").write_text(json.dumps({"variants": {"vae_mode": {}, "griffinlim": {}}, "run": {"wandb": "offline"}}))
    stale = check_output(out, overwrite=True, outputs=["input/", "vae_mode/", *RESULT_NAMES])
    assert sorted(stale) == sorted(["input/", "vae_mode/", "griffinlim/", "wandb/", *RESULT_NAMES])  # not my_clips/


def test_written_files_have_the_permissions_of_any_new_file(tmp_path):
    # The atomic writer's temporary file is private (mkstemp: 0600); the result must not be, or a
    # report served from OUT/ cannot be read by anyone else.
    from recon.files import write_text

    umask = os.umask(0)
    os.umask(umask)
    write_text(tmp_path / "report.html", "<html></html>")
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o666 & ~umask


def test_metric_batches_bounded_by_samples_score_every_variant_as_one_batch_does(models, inputs, single_thread, monkeypatch):
    """A held file's variants are scored as many at a time as ``METRIC_BATCH_SAMPLES`` allows; a bound
    that splits them into batches of one must give every variant the same metrics."""
    import recon.predict as P

    variants = [VARIANTS[name] for name in ("vae_mode", "vae_sample", "griffinlim")]
    files = InferenceFiles([inputs])
    batch = collate_files([files[1]])  # b.wav, 12 s

    def scored() -> dict[str, dict[str, float]]:
        result = VariantRunner(models, variants, SETTINGS, segment_batch=4).predict_step(batch, 0)[0]
        return {v.variant: v.metrics for v in result.variants}

    together = scored()
    monkeypatch.setattr(P, "METRIC_BATCH_SAMPLES", 1)
    alone = scored()
    assert set(alone) == {v.name for v in variants} and all(alone.values())
    for name, metrics in together.items():
        assert metrics.keys() == alone[name].keys()
        for key, value in metrics.items():
            assert math.isclose(value, alone[name][key], rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(value) and math.isnan(alone[name][key])), (name, key)
