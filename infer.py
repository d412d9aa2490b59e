"""Run every reconstruction variant on a folder of audio and compare them.

    python infer.py --ckpt checkpoints/demo/codebook-tiny.ckpt --input examples/audio --output outputs/demo
    python infer.py --ckpt CKPT --input FOLDER --output OUT --devices 2 --accelerator cpu --strategy ddp

Writes OUT/<variant>/<file>.wav, OUT/input/<file>.wav, OUT/metrics.csv, OUT/summary.json,
OUT/errors.csv and OUT/report.html; logs a W&B table (offline by default). OUT/.recon-manifest.json
lists what the run writes: --overwrite removes exactly that, so your own files in OUT stay. Exit
status 1 when any input or any variant of an input failed (see errors.csv; the rest is written),
2 on a usage error.
"""

from __future__ import annotations

import time

STARTED_AT = time.perf_counter()  # before the heavy imports, which summary.json counts as start-up

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.multiprocessing import ProcessRaisedException  # noqa: E402

from recon.audio import DEFAULT_OVERLAP_SECONDS, STREAM_ABOVE_SECONDS, MelFrontEnd, overlap_samples  # noqa: E402
from recon.ddcm_options import FLAGS as DDCM_FLAGS, add_arguments as add_ddcm_arguments  # noqa: E402
from recon.backbone import HUB_ID, FrozenAudioLDM2, describe_weights  # noqa: E402
from recon.compile import COMPILE_MODES  # noqa: E402
from recon.console import configure_output  # noqa: E402
from recon.lit import load_inference_codebook  # noqa: E402
from recon.outputs import UsageError, check_output  # noqa: E402
from recon.precision import SUPPORTED_PRECISIONS, UnsupportedPrecision, check_precision  # noqa: E402
from recon.report import write_html_report  # noqa: E402
from recon.inputs import FileBatches, InferenceFiles, collate_files, file_durations  # noqa: E402
from recon.journal import Journal, weights_fingerprint  # noqa: E402
from recon.predict import VariantRunner  # noqa: E402
from recon.records import RunInfo  # noqa: E402
from recon.metrics import PERCEPTUAL_METRICS, VISQOL_METRICS  # noqa: E402
from recon.variants import VARIANTS, Models, VariantSettings, opus_level, resolve, sweep  # noqa: E402
from recon.writer import ResultWriter  # noqa: E402
from recon.wandb_table import log_to_wandb  # noqa: E402

log = logging.getLogger("recon.infer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as err:
        if err.argument_name == "--precision":
            # Why a precision is refused takes one line (exit status 2, see main), not a usage dump.
            raise UsageError(err.message) from None
        parser.error(str(err))


def precision_name(text: str) -> str:
    """argparse type: a supported precision under its canonical name (Lightning's aliases accepted)."""
    try:
        return check_precision(text)
    except UnsupportedPrecision as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    variant_help = "; ".join(f"{v.name}: {v.description}" for v in VARIANTS.values())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter, exit_on_error=False)
    d = VariantSettings()
    p.add_argument("--ckpt", help="trained codebook checkpoint (train.py); without it the codebook variants are skipped")
    p.add_argument("--input", nargs="+", required=True,
                   help="audio files, folders (searched recursively) and/or list files: .txt/.lst/.list one path per line, "
                        ".csv/.tsv with a 'path' column; relative paths resolve against the list's folder")
    p.add_argument("--output", default="outputs/recon", help="output folder (default: %(default)s)")
    p.add_argument("--backbone", help=f"backbone source overriding the checkpoint's (default without --ckpt: {HUB_ID}); a folder, hub id or random:tiny|full")
    p.add_argument("--diffusion", help="AudioLDM2 pipeline source for codebook_sdedit/ddcm_noise/text2audio (cvssp/audioldm2, cvssp/audioldm2-music, cvssp/audioldm2-large, a local snapshot of one, or random:tiny); without it those variants are skipped")
    p.add_argument("--variants", default="all", help=f"comma-separated variants or 'all'. {variant_help}")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto")
    p.add_argument("--devices", default="1", help="number of devices, or 'auto'")
    p.add_argument("--num-nodes", type=int, default=1, help="machines taking part (with a cluster launcher such as SLURM or torchrun; default: %(default)s)")
    p.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, ... (Lightning strategies)")
    p.add_argument("--ddp-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="timeout of the process group's collectives under a ddp strategy, and how long rank 0 waits for a rank "
                        "whose heartbeat stopped; a rank may take longer than the others as long as it lives (default: %(default)s)")
    p.add_argument("--precision", default="32-true", type=precision_name, choices=SUPPORTED_PRECISIONS,
                   help="the networks run under autocast, the front-end, quantizer, filters and metrics stay float32 (default: %(default)s; Lightning runs 16-mixed as bf16-mixed on CPU)")
    p.add_argument("--compile", default="off", choices=COMPILE_MODES, help="torch.compile the VAE, vocoder and UNet (reduce-overhead adds CUDA graphs); 1.05x on 2 CPU cores after 140 s of compiling, not measured on a GPU (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="10.24 s windows per forward pass (default: %(default)s)")
    p.add_argument("--files-per-step", type=int, metavar="N",
                   help="files whose outputs a step holds at once, their windows sharing forward passes (default: --batch-size)")
    p.add_argument("--stream-above", type=float, default=STREAM_ABOVE_SECONDS, metavar="SECONDS",
                   help="files longer than this are not loaded whole: read, run, scored and written window by window, in memory "
                        "that does not grow with their length (PESQ/STOI/ViSQOL then on excerpts past 120 s; default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=0, help="data loading workers per device")
    p.add_argument("--rvq-stages", type=number_list(int), metavar="N[,N...]",
                   help="codebook_rvq: residual stage counts to run, one codebook_rvq@N column each (default: every prefix of the checkpoint's ladder)")
    p.add_argument("--opus-kbps", type=number_list(float), default=[d.opus_kbps], metavar="R[,R...]",
                   help=f"opus baseline: target rates in kb/s (6 to 256, libsndfile's encoder); several values give one opus@<R>k column each, reported at the rate measured from the written streams (default: {d.opus_kbps:g})")
    p.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP_SECONDS, metavar="SECONDS",
                   help="seconds shared by consecutive 10.24 s windows of a file, crossfaded linearly, a multiple of 0.04; "
                        "0 butts the windows end to end (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of posterior samples and Griffin-Lim")
    p.add_argument("--griffinlim-iters", type=int, default=64, help="Griffin-Lim iterations of the griffinlim baseline")
    p.add_argument("--overwrite", action="store_true", help="remove what the previous run in --output wrote (listed in its .recon-manifest.json), then write; other files there stay")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output that was stopped: files it finished are kept and skipped; refused unless its "
                        "settings and weights are these (a fresh run where none started)")
    p.add_argument("--verbose", action="store_true", help="also print Lightning's info messages and the library warnings recon hides")
    g = p.add_argument_group("diffusion variants")
    g.add_argument("--diffusion-steps", type=int, default=d.diffusion_steps,
                   help="DDIM steps of codebook_sdedit's SDEdit refinement and of text2audio generation; not DDCM's (see --ddcm-steps) (default: %(default)s)")
    g.add_argument("--guidance-scale", type=float, default=d.guidance_scale, help="classifier-free guidance (default: %(default)s)")
    g.add_argument("--refine-strength", type=number_list(float), default=[d.refine_strength], metavar="S[,S...]",
                   help=f"codebook_sdedit SDEdit strength: 0 = codebook only, 1 = generation; several values give one codebook_sdedit@S column each (default: {d.refine_strength})")
    g.add_argument("--refine-prompt", default=d.refine_prompt, help="text conditioning of codebook_sdedit and ddcm_noise (default: empty, neutral)")
    g.add_argument("--prompt", default=d.prompt, help="text2audio prompt (default: %(default)r)")
    g.add_argument("--ddcm-steps", type=number_list(int), default=[d.ddcm_steps], metavar="T[,T...]",
                   help=f"ddcm_noise: steps of the DDCM sampler, i.e. the bitstream's length (not --diffusion-steps); with several values "
                        f"(or several values of any --ddcm-* option) one ddcm_noise@T<steps>-K<k>[-<option><value>...] column each (default: {d.ddcm_steps})")
    g.add_argument("--ddcm-k", type=number_list(int), default=[d.ddcm_k], metavar="K[,K...]",
                   help=f"ddcm_noise codebook size per step, a power of two; plain DDCM spends (steps-1)·log2 K bits per 10.24 s (default: {d.ddcm_k})")
    add_ddcm_arguments(p.add_argument_group("ddcm_noise sampler options (recon.ddcm_options; each one sweepable, each point its own column and bitrate)"),
                       d.ddcm_options, many=True, list_type=number_list)
    p.add_argument("--wandb", choices=("off", "offline", "online"), default="offline",
                   help="log a W&B table of the results: offline into OUT/wandb/ (default; `wandb sync` uploads it later), online, or off")
    p.add_argument("--wandb-project", default="recon", help="W&B project of the run (default: %(default)s)")
    p.add_argument("--report-max-files", type=int, default=12, help="files with audio players in report.html and W&B")
    p.add_argument("--report-embed", action="store_true", help="embed the audio in report.html (compressed) so the page works on its own; default: link the wavs in OUT/")
    p.add_argument("--no-perceptual", action="store_true", help="skip PESQ, STOI and ViSQOL (slow, on the CPU)")
    p.add_argument("--no-visqol", action="store_true", help="skip ViSQOL only (its two modes take about 2.4 s per 10.24 s clip and variant on 2 CPU cores, PESQ and STOI 0.35 s; see the README)")
    return p


def number_list(kind):
    """argparse type: one number or a comma-separated list of them."""

    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected one {kind.__name__} value or comma-separated {kind.__name__} values, got {text!r}") from None
    return parse


def perceptual_metrics(args: argparse.Namespace) -> tuple[str, ...]:
    """The perceptual metrics the writer computes: all of them, none, or all but ViSQOL."""
    if args.no_perceptual:
        return ()
    return tuple(m for m in PERCEPTUAL_METRICS if not (args.no_visqol and m in VISQOL_METRICS))


def is_launching_process(trainer: L.Trainer) -> bool:
    """Global rank 0 in the process that starts the others (or the only one); False under torchrun/SLURM,
    where every rank is started externally and the writer checks the output folder collectively."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return trainer.global_rank == 0 and (environment is None or not environment.creates_processes_externally)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".recon-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to --output {out}: {err.strerror or err}") from err


def spawned_usage_error(err: BaseException) -> str | None:
    """The message of a UsageError raised in a process that ddp_spawn started, if that is what ``err`` is."""
    if not isinstance(err, ProcessRaisedException):
        return None
    last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    name, _, message = last.partition(": ")
    return message if name.rsplit(".", 1)[-1] == UsageError.__name__ else None


def load_models(args: argparse.Namespace) -> Models:
    if args.ckpt:
        backbone, quantizer = load_inference_codebook(args.ckpt, backbone=args.backbone)
    else:
        backbone, quantizer = FrozenAudioLDM2.from_source(args.backbone or HUB_ID), None
    diffusion = None
    if args.diffusion:
        from recon.diffusion import load_diffusion_components

        diffusion = load_diffusion_components(args.diffusion)
        if abs(diffusion.scaling_factor - backbone.scaling_factor) > 1e-9:
            raise UsageError(f"diffusion source {args.diffusion} uses another VAE scaling than backbone {backbone.source}")
    return Models(backbone=backbone, frontend=MelFrontEnd(backbone.spec), quantizer=quantizer, diffusion=diffusion)


# Settings that change how a run is carried out, not its results: a resumed run may change them.
OPERATIONAL_SETTINGS = ("output", "accelerator", "devices", "num_nodes", "strategy", "ddp_timeout", "num_workers",
                        "wandb", "wandb_project", "report_max_files", "report_embed")


def build_strategy(name: str, timeout_s: float):
    """A Lightning strategy by name; the DDP family built with the collectives' timeout ``timeout_s``."""
    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    entry = StrategyRegistry[name] if name in StrategyRegistry else None
    if entry is None or not issubclass(entry["strategy"], DDPStrategy):
        return name
    return entry["strategy"](**entry["init_params"], timeout=datetime.timedelta(seconds=timeout_s))


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except (UsageError, ValueError, FileNotFoundError) as err:  # UnsupportedPrecision is a ValueError
        # One line naming what is wrong; input files that fail are reported in errors.csv instead.
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except ProcessRaisedException as err:
        message = spawned_usage_error(err)
        if message is None:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    configure_output(verbose=args.verbose)
    out = Path(args.output)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=int(args.devices) if args.devices.isdigit() else args.devices,
        num_nodes=args.num_nodes,
        strategy=build_strategy(args.strategy, args.ddp_timeout),
        precision=check_precision(args.precision),
        logger=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # FileBatches shares the files between ranks, by duration
    )
    journal = Journal(out)
    resuming = args.resume and journal.exists()
    if is_launching_process(trainer):
        # Fail fast, before loading models; the writer checks again, on every rank, at setup.
        if not resuming:
            check_output(out, args.overwrite)
        check_writable(out)
    models = load_models(args)
    stages = models.quantizer.num_stages if models.quantizer is not None else 0
    available = {"codebook": models.quantizer is not None, "diffusion": models.diffusion is not None, "rvq": stages > 1}
    rvq_stages = args.rvq_stages or list(range(1, stages + 1))
    if any(not 1 <= n <= stages for n in rvq_stages) and stages:
        raise UsageError(f"--rvq-stages {rvq_stages}: the checkpoint's codebook has {stages} stage(s)")
    for flag, value in (("--batch-size", args.batch_size), ("--files-per-step", args.files_per_step)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, not {value}")
    if not args.stream_above > 0:
        raise UsageError(f"--stream-above must be a positive number of seconds, not {args.stream_above}")
    for kbps in args.opus_kbps:
        try:
            opus_level(kbps)
        except ValueError as err:
            raise UsageError(f"--opus-kbps: {err}") from None
    sweeps = {"refine_strength": args.refine_strength, "ddcm_steps": args.ddcm_steps, "ddcm_k": args.ddcm_k, "rvq_stages": rvq_stages,
              "opus_kbps": args.opus_kbps}
    sweeps.update({f"ddcm_{name}": getattr(args, f"ddcm_{name}") for name in DDCM_FLAGS})
    variants = sweep(resolve(args.variants, available), sweeps)
    dataset = InferenceFiles(args.input, models.backbone.spec, stream_above=args.stream_above)
    if len(dataset) == 0:
        raise UsageError(f"no audio files found in {' '.join(args.input)}")
    settings = VariantSettings(
        seed=args.seed,
        codebook_bits=models.quantizer.bits_per_index if models.quantizer is not None else 10.0,
        griffinlim_iters=args.griffinlim_iters,
        diffusion_steps=args.diffusion_steps,
        guidance_scale=args.guidance_scale,
        refine_strength=args.refine_strength[0],
        refine_prompt=args.refine_prompt,
        prompt=args.prompt,
        ddcm_steps=args.ddcm_steps[0],
        ddcm_k=args.ddcm_k[0],
        opus_kbps=args.opus_kbps[0],
        **{f"ddcm_{name}": getattr(args, f"ddcm_{name}")[0] for name in DDCM_FLAGS},
        overlap=overlap_samples(args.overlap, models.backbone.spec),
    )
    for variant in variants:
        if variant.name.split("@")[0] == "ddcm_noise":  # every point's options are valid, before any model runs
            variant.settings(settings).ddcm_options.check_schedule(models.diffusion.schedule.num_train_timesteps)
    if models.diffusion is not None:
        # Prompt embeddings once, on the CPU where the text encoders stay, before the UNet moves.
        for variant in variants:
            if "diffusion" in variant.requires:
                prompt = settings.prompt if variant.name == "text2audio" else settings.refine_prompt
                models.diffusion.prompt_embeddings(prompt, settings.guidance_scale)
    run_settings = {k: v for k, v in vars(args).items() if k not in ("overwrite", "verbose", "resume")}
    run_settings["backbone_source"] = models.backbone.source
    run_settings["backbone_weights"] = describe_weights(models.backbone.source)
    identity = {"settings": {k: v for k, v in run_settings.items() if k not in OPERATIONAL_SETTINGS}, "weights": weights_fingerprint(models)}
    info = RunInfo(variants, run_settings, settings, started_at=STARTED_AT, extra_outputs=("wandb/",) if args.wandb != "off" else (), identity=identity)
    finished: set[int] = set()
    if resuming:
        if is_launching_process(trainer):
            journal.check(identity)
        names = journal.finished()
        finished = {i for i, (_, rel) in enumerate(dataset.items) if rel in names}
        log.info("--resume: %d of %d file(s) already done", len(finished), len(dataset))
    writer = ResultWriter(out, info, models.backbone.spec, perceptual=perceptual_metrics(args), overwrite=args.overwrite,
                          resume=args.resume, rank_timeout=args.ddp_timeout)
    trainer.callbacks.append(writer)
    if trainer.world_size > len(dataset):
        raise UsageError(f"{len(dataset)} input file(s) for {trainer.world_size} processes: use at most {len(dataset)} devices")
    plan = FileBatches(file_durations([path for path, _ in dataset.items]), args.batch_size, trainer.world_size, finished,
                       files_per_step=args.files_per_step, alone_above=args.stream_above)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=plan, num_workers=args.num_workers, collate_fn=collate_files)
    # Lightning cannot see that a custom batch sampler returns every index; FileBatches does (tested).
    warnings.filterwarnings("ignore", message="You are using a custom batch sampler")
    if not plan.batches:  # --resume of a run whose files are all done: the summary is written again
        warnings.filterwarnings("ignore", message="Total length of `DataLoader` across ranks is zero")
    runner = VariantRunner(models, variants, settings, segment_batch=args.batch_size, compile_mode=args.compile)
    trainer.predict(runner, loader, return_predictions=False)
    if not trainer.is_global_zero:
        return 0
    write_html_report(out, max_files=args.report_max_files, embed=args.report_embed)
    log_to_wandb(out, mode=args.wandb, project=args.wandb_project, max_files=args.report_max_files, config=run_settings)
    with open(out / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    print(f"wrote {out}/ (report: {out / 'report.html'}); {len(errors)} error(s)" + (f", see {out / 'errors.csv'}" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
