"""The run's results as a W&B table, read from the output folder like the HTML report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from recon.audio import AudioSpec
from recon.evaluation import rate_distortion
from recon.report import (
    EXCERPT_SECONDS,
    INPUT_NAME,
    listed_files,
    load_wav,
    metric_columns,
    ordered_unique,
    read_metrics,
    read_summary,
    sort_metrics,
    spectrogram_png,
    wav_path,
)


def log_to_wandb(
    out_dir: str | Path,
    mode: str = "offline",
    project: str = "recon",
    run_name: str | None = None,
    max_files: int = 12,
    config: dict | None = None,
) -> str | None:
    """Log the run's results to W&B; returns the run directory, or None for ``mode="off"``.

    One ``run.log`` call (step 0) with three tables: ``reconstructions`` (columns file, variant,
    every metric column of metrics.csv, ``input_audio``, ``output_audio``, ``spectrogram`` - media
    only for the first ``max_files`` files, None beyond) and ``summary`` (variant, description,
    is_reconstruction, bitrate_label, files, seconds_per_clip, real_time_factor, ``mean/<metric>``), and
    ``rate_distortion`` (variant, bps, measured, the mean of each distortion of
    :func:`recon.evaluation.rate_distortion` and ``pareto/<metric>``: on its Pareto front).
    The means also go to ``run.summary`` as ``<variant>/<metric>``. ``config`` defaults to the
    ``run`` settings of summary.json. The run is finished before returning.

    Offline runs write under ``out_dir/wandb/offline-run-*``; W&B stages table media under
    ``WANDB_DATA_DIR`` (default ``~/.local/share/wandb``), which must still exist at ``wandb sync``.
    """
    if mode not in ("off", "offline", "online"):
        raise ValueError(f"mode must be 'off', 'offline' or 'online', got {mode!r}")
    if mode == "off":
        return None
    import wandb  # imported lazily: the HTML report does not need it

    out_dir = Path(out_dir)
    spec = AudioSpec()
    rows = read_metrics(out_dir)
    summary = read_summary(out_dir)
    metrics = metric_columns(out_dir)
    files = listed_files(out_dir, rows)
    media_files = set(files[: max(0, max_files)])
    cfg = dict(summary.get("run") or {}) if config is None else dict(config)

    # create_new: never hand back (and then finish) a run the caller already has open, e.g. training's.
    run = wandb.init(project=project, mode=mode, dir=str(out_dir), name=run_name, config=cfg, reinit="create_new")
    try:
        run_dir = str(run.settings.sync_dir) if getattr(run.settings, "sync_dir", None) else str(Path(run.dir).parent)
        table = wandb.Table(columns=["file", "variant", *metrics, "input_audio", "output_audio", "spectrogram"])
        inputs: dict[str, Any] = {}
        for r in rows:
            file, variant = r["file"], r["variant"]
            in_audio = out_audio = image = None
            if file in media_files:
                if file not in inputs:
                    ref = load_wav(wav_path(out_dir, INPUT_NAME, file), spec, EXCERPT_SECONDS)
                    inputs[file] = None if ref is None else wandb.Audio(ref, sample_rate=spec.sample_rate, caption=f"{file} input")
                in_audio = inputs[file]
                est = load_wav(wav_path(out_dir, variant, file), spec, EXCERPT_SECONDS)
                if est is not None:
                    out_audio = wandb.Audio(est, sample_rate=spec.sample_rate, caption=f"{file} {variant}")
                    image = wandb.Image(Image.open(io.BytesIO(spectrogram_png(est, spec))), caption=f"{file} {variant}")
            values = [r.get(m) if not isinstance(r.get(m), str) else None for m in metrics]
            table.add_data(file, variant, *values, in_audio, out_audio, image)

        info = summary.get("variants", {})
        mean_metrics = sort_metrics(ordered_unique(m for d in info.values() for m in (d.get("mean") or {})))
        sum_cols = ["variant", "description", "is_reconstruction", "bitrate_label", "files", "seconds_per_clip", "real_time_factor"]
        sum_table = wandb.Table(columns=[*sum_cols, *(f"mean/{m}" for m in mean_metrics)])
        for v, d in info.items():
            mean = d.get("mean") or {}
            sum_table.add_data(
                v,
                d.get("description"),
                d.get("is_reconstruction"),
                d.get("bitrate_label"),
                d.get("files"),
                d.get("seconds_per_clip"),
                d.get("real_time_factor"),
                *(mean.get(m) for m in mean_metrics),
            )
            for m, value in mean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    run.summary[f"{v}/{m}"] = value
        rd = rate_distortion(summary)
        rd_table = wandb.Table(columns=["variant", "bps", "measured", *(m for m, _ in rd.metrics), *(f"pareto/{m}" for m, _ in rd.metrics)])
        for v, by_metric in rd.points.items():
            first = next(iter(by_metric.values()))
            values = [by_metric[m].value if m in by_metric else None for m, _ in rd.metrics]
            rd_table.add_data(v, first.bps, first.measured, *values, *(v in rd.fronts[m] for m, _ in rd.metrics))
        run.log({"reconstructions": table, "summary": sum_table, "rate_distortion": rd_table})
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return run_dir
