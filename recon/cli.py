"""recon: compress audio to files and decode them back.

    recon encode --ckpt CKPT IN... --out DIR          # one DIR/<name>.recn per input file
    recon decode FILE... --ckpt CKPT --out DIR       # one DIR/<name>.wav per .recn file
    recon info FILE...                               # header, size and measured bitrate
    recon listen OUT --out session.html              # blinded listening test of an infer.py folder

A file decodes from itself and the named model alone; decoding refuses a model whose weights differ
from those the file was encoded with. A bad input -- unreadable, foreign, corrupt, or a header or
payload outside what recon writes -- costs one line on stderr and the other inputs go on (exit
status 1); an existing output is kept unless --overwrite (exit status 2 for a usage error).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from . import files
from .console import LOG_FORMAT, configure_output
from .container import SUFFIX, Container, dumps, loads
from .folders import find_files

# torch and everything that imports it (recon.audio, recon.codec, recon.variants) are imported where
# encoding and decoding need them: `recon info` reads headers only and starts without them.
log = logging.getLogger("recon.cli")

# --format: soundfile's (format, subtype) and the output suffix.
OUTPUT_FORMATS = {
    "wav16": ("WAV", "PCM_16", ".wav"),
    "wav24": ("WAV", "PCM_24", ".wav"),
    "float": ("WAV", "FLOAT", ".wav"),
    "flac": ("FLAC", "PCM_16", ".flac"),
}
# Resampling to a rate whose ratio to the model's reduces to more than this (numerator times
# denominator) builds a huge polyphase kernel; such a rate is refused instead.
MAX_RESAMPLING_RATIO_TERMS = 1 << 20


def _no_grad(fn):
    """``torch.no_grad()`` as a decorator that imports torch only when ``fn`` runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _describe(err: Exception, rel: str) -> str:
    """One line for one file's failure: recon's own messages as they are, anything else with its type."""
    message = " ".join(str(err).split()).removeprefix(rel + ": ")
    if isinstance(err, (ValueError, OSError)) and message:
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return device


def _load(args) -> tuple:
    """(backbone, quantizer or None, diffusion components or None, device) from --ckpt, --backbone
    and --diffusion. Without --ckpt or --backbone, the backbone is the diffusion pipeline's own VAE
    and vocoder."""
    from .backbone import FrozenAudioLDM2
    from .lit import load_inference_codebook

    device = _device(args.device)
    backbone = quantizer = diffusion = None
    if args.ckpt:
        backbone, quantizer = load_inference_codebook(args.ckpt, backbone=args.backbone)
        quantizer = quantizer.to(device)
    elif args.backbone:
        backbone = FrozenAudioLDM2.from_source(args.backbone)
    if args.diffusion:
        from .diffusion import load_diffusion_components

        diffusion = load_diffusion_components(args.diffusion)
        diffusion.pipe.unet.to(device)  # the text encoders stay on the CPU, where prompts are embedded once
        if backbone is None:
            backbone = FrozenAudioLDM2(diffusion.pipe.vae, diffusion.pipe.vocoder, source=args.diffusion)
    if backbone is None:
        raise ValueError("name the model: --ckpt for codebook and rvq files, --diffusion for ddcm files")
    return backbone.to(device), quantizer, diffusion, device


def _report(failures: list[str], done: int, what: str, out: Path) -> int:
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    print(f"{what} {done} file(s) into {out}/" + (f"; {len(failures)} failed" if failures else ""))
    return 1 if failures else 0


# ---------------------------------------------------------------------- encode
def encode(args) -> int:
    import torch

    from .audio import AudioLoadError, MelFrontEnd, overlap_samples
    from .inputs import InferenceFiles, file_durations, output_relpath

    backbone, quantizer, diffusion, device = _load(args)
    overlap = overlap_samples(args.overlap, backbone.spec)
    if not args.stream_above > 0:
        raise ValueError(f"--stream-above must be a positive number of seconds, not {args.stream_above}")
    if args.codec == "ddcm":
        if diffusion is None:
            raise ValueError("--codec ddcm needs --diffusion (the AudioLDM2 pipeline whose UNet codes the noise)")
        if args.ddcm_k < 2 or args.ddcm_k & (args.ddcm_k - 1) or args.ddcm_steps < 2:
            raise ValueError(f"--ddcm-k must be a power of two >= 2 and --ddcm-steps >= 2, got {args.ddcm_k} and {args.ddcm_steps}")
        _ddcm_settings(args).ddcm_options.check_schedule(diffusion.schedule.num_train_timesteps)
        coder = _ddcm_coder(backbone, diffusion, args, overlap)
    else:
        if quantizer is None:
            raise ValueError(f"--codec {args.codec} needs --ckpt (a trained codebook)")
        stages = args.stages or (quantizer.num_stages if args.codec == "rvq" else 1)
        if not 1 <= stages <= quantizer.num_stages:
            raise ValueError(f"--stages {stages}: {args.ckpt} has {quantizer.num_stages} residual stage(s)")
        coder = _codebook_coder(backbone, quantizer, stages, entropy=not args.fixed_rate, overlap=overlap)
    frontend = MelFrontEnd(backbone.spec).to(device)
    dataset = InferenceFiles(args.inputs, backbone.spec)
    if len(dataset) == 0:
        raise ValueError(f"no audio files found in {' '.join(args.inputs)}")
    out = Path(args.out)
    failures, done = [], 0

    def target_of(rel: str) -> Path | None:
        """Where ``rel``'s file goes, or None (and a failure) when it exists and may not be replaced."""
        target = out / Path(output_relpath(rel)).with_suffix(SUFFIX)
        if target.exists() and not args.overwrite:
            failures.append(f"{rel}: {target} exists; pass --overwrite to replace it")
            return None
        return target

    def write(rel: str, target: Path, container: Container, path: str) -> None:
        nonlocal done
        try:
            files.write_bytes(target, dumps(with_input_format(container, path)))
            done += 1
        except OSError as err:
            failures.append(f"{rel}: cannot write {target}: {err.strerror or err}")

    # Files longer than --stream-above (by their header) are read by offset, window group by window
    # group, and never held whole; the others are loaded and batched across files as before.
    durations = file_durations([path for path, _ in dataset.items])
    streamed = [i for i, seconds in enumerate(durations) if seconds > args.stream_above]
    held = torch.utils.data.Subset(dataset, [i for i, seconds in enumerate(durations) if not seconds > args.stream_above])
    loader = torch.utils.data.DataLoader(held, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=list)
    with tqdm(total=len(dataset), unit="file", desc="encode", disable=args.quiet) as progress:
        for batch in loader:
            todo = []
            for item in batch:
                if item["error"] is not None:
                    failures.append(f"{item['relpath']}: {item['error']}")
                elif (target := target_of(item["relpath"])) is not None:
                    todo.append((item, target))
            try:
                containers = _encode_held([item for item, _ in todo], backbone, frontend, device, args.batch_size, coder, overlap)
            except Exception as err:  # one batch's failure is its files' failure; the rest go on
                failures += [f"{item['relpath']}: encoding failed: {' '.join(str(err).split())}" for item, _ in todo]
                containers = []
            for (item, target), container in zip(todo, containers):
                write(item["relpath"], target, container, item["path"])
            progress.update(len(batch))
        for i in streamed:
            path, rel = dataset.items[i]
            if (target := target_of(rel)) is not None:
                try:
                    container = _encode_streamed(path, backbone, frontend, device, args.batch_size, coder, overlap)
                except AudioLoadError as err:
                    failures.append(f"{rel}: {err.reason}")
                except Exception as err:  # this file's failure; the rest go on
                    failures.append(f"{rel}: encoding failed: {' '.join(str(err).split())}")
                else:
                    write(rel, target, container, str(path))
            progress.update(1)
    return _report(failures, done, "encoded", out)


def with_input_format(container: Container, path: str) -> Container:
    """``container`` with the encoded file's own sample rate and channel count in its header (what
    ``recon decode --sample-rate original`` restores), when the file's header says them."""
    from .audio import source_format

    found = source_format(path)
    if not found:
        log.warning("%s: its sample rate and channel count are unknown; the file records 16000 Hz mono", path)
    return Container(dict(container.header, **found), container.payload)


class _Coder(NamedTuple):
    """One codec's two halves: ``code(posterior_mean, logmel)`` gives one code tensor per window of
    a forward pass; ``pack(codes, window_lengths, num_samples, level)`` the file of a whole input."""

    code: Callable
    pack: Callable


def _encoded_segments(items: list[dict], backbone, frontend, device, batch_size: int, code, overlap: int = 0) -> list[tuple[list, list[int]]]:
    """Per file: (per-segment codes, segment lengths). Segments of all files are batched by length
    (as infer.py batches them); ``code(posterior_mean, logmel)`` gives one code tensor per segment;
    consecutive segments share ``overlap`` samples."""
    from .windows import Windows

    windows = Windows([item["wav"] for item in items], backbone.spec, overlap)
    codes: list = [None] * len(windows)
    for chunk, logmel, posterior in windows.encoded(frontend, backbone, batch_size, device):
        for i, code_i in zip(chunk, code(posterior.mean.float(), logmel)):
            codes[i] = code_i.cpu()
    return [([codes[s] for s in windows.of_file(f)], windows.lengths(windows.of_file(f))) for f in range(len(items))]


@_no_grad
def _encode_held(items: list[dict], backbone, frontend, device, batch_size: int, coder: _Coder, overlap: int = 0) -> list[Container]:
    """The files of loaded inputs (``InferenceFiles`` items), their windows batched together."""
    encoded = _encoded_segments(items, backbone, frontend, device, batch_size, coder.code, overlap)
    return [coder.pack(codes, lengths, item["wav"].numel(), item["level"]) for item, (codes, lengths) in zip(items, encoded)]


@_no_grad
def _encode_streamed(path: Path, backbone, frontend, device, batch_size: int, coder: _Coder, overlap: int = 0) -> Container:
    """The file of one input read by offset (recon.audio_source.AudioSource), window group by
    window group: the windows (recon.audio.split_file's), forward passes (length_chunks of one
    file, as ``_encode_held`` gives a file alone) and codes of a loaded input, holding one group."""
    import torch

    from .audio import TAIL_FRAMES, AudioLoadError, fit_length, length_chunks, segment_lengths
    from .audio_source import AudioSource
    from .inputs import MIN_SECONDS
    from .windows import encode_windows

    spec = backbone.spec
    source = AudioSource(path, spec)
    if source.num_samples < MIN_SECONDS * spec.sample_rate:  # as InferenceFiles refuses a loaded one
        raise AudioLoadError(path, f"too short: {source.num_samples / spec.sample_rate:.3f} s < {MIN_SECONDS} s")
    lengths = segment_lengths(source.num_samples, spec.num_samples, TAIL_FRAMES * spec.hop_length, overlap)
    hop = spec.num_samples - overlap
    codes: list = []
    try:
        for chunk in length_chunks(lengths, batch_size):  # one file's: in file order
            wav = torch.stack([fit_length(source.read(k * hop, k * hop + spec.num_samples), lengths[k]) for k in chunk])
            logmel, posterior = encode_windows(frontend, backbone, wav.to(device))
            codes += [c.cpu() for c in coder.code(posterior.mean.float(), logmel)]
    finally:
        source.close()
    return coder.pack(codes, lengths, source.num_samples, source.level)


def _ddcm_settings(args):
    from .ddcm_options import FLAGS
    from .variants import VariantSettings

    return VariantSettings(seed=args.seed, guidance_scale=args.guidance_scale, refine_prompt=args.prompt, ddcm_steps=args.ddcm_steps,
                           ddcm_k=args.ddcm_k, **{f"ddcm_{name}": getattr(args, f"ddcm_{name}") for name in FLAGS})


def _ddcm_coder(backbone, diffusion, args, overlap: int = 0) -> _Coder:
    from .codec import ddcm_container
    from .ddcm import compress
    from .variants import logmel_error

    settings = _ddcm_settings(args)
    options = settings.ddcm_options
    denoiser = diffusion.denoiser(settings.refine_prompt, settings.guidance_scale)

    def code(mean, logmel):
        scale = diffusion.scaling_factor
        rerank = logmel_error(backbone, logmel, scale) if options.rerank > 1 else None
        return compress(denoiser, mean * scale, settings.ddcm_steps, settings.ddcm_k, settings.seed, options, rerank)[0]

    def pack(codes, lengths, num_samples, level):
        return ddcm_container(codes, lengths, num_samples, settings, diffusion, backbone, level, overlap=overlap)

    return _Coder(code, pack)


def _codebook_coder(backbone, quantizer, stages: int = 1, entropy: bool = True, overlap: int = 0) -> _Coder:
    from .codec import codebook_container

    def code(mean, logmel):
        # One stage: [B, time, freq] as codebook_hard writes it; a ladder: [B, stages, time, freq].
        return quantizer.quantize_indices(mean) if stages == 1 else quantizer.residual_indices(mean, stages)

    def pack(codes, lengths, num_samples, level):
        return codebook_container(codes, lengths, num_samples, quantizer, backbone, level, entropy, overlap)

    return _Coder(code, pack)


# ---------------------------------------------------------------------- decode
def _recn_files(inputs: list[str]) -> list[tuple[Path, str]]:
    return find_files(inputs, extensions=(SUFFIX,))


def decode(args) -> int:
    inputs = _recn_files(args.inputs)
    if not inputs:
        raise ValueError(f"no {SUFFIX} files found in {' '.join(args.inputs)}")
    backbone, quantizer, diffusion, device = _load(args)
    out = Path(args.out)
    failures, done = [], 0
    for path, rel in tqdm(inputs, unit="file", desc="decode", disable=args.quiet):
        target = out / Path(rel).with_suffix(OUTPUT_FORMATS[args.format][2])
        if target.exists() and not args.overwrite:
            failures.append(f"{rel}: {target} exists; pass --overwrite to replace it")
            continue
        try:  # any failure is this file's: one line, nothing written, and the other files go on
            _decode_file(path, rel, target, backbone, quantizer, diffusion, args)
            done += 1
        except Exception as err:
            failures.append(f"{rel}: {_describe(err, rel)}")
    return _report(failures, done, "decoded", out)


@_no_grad
def _decode_file(path: Path, rel: str, target: Path, backbone, quantizer, diffusion, args) -> None:
    """Decode one file into ``target`` window group by window group: its windows crossfaded as they
    come (CrossfadeStream), brought to the input's level, resampled block-wise (StreamResampler)
    and written under a temporary name that only a complete decode renames into place. What it
    holds is one forward pass's windows, whatever the file's length."""
    from . import codec
    from .audio import CrossfadeStream

    audio_format, subtype, _ = OUTPUT_FORMATS[args.format]
    container = loads(path.read_bytes())
    windows = codec.decoded_windows(container, backbone, quantizer, diffusion, path=rel, batch_size=args.batch_size)
    gain = None if args.normalised else container.header["level"]
    rate = container.get("input_sample_rate") if args.sample_rate == "original" else int(args.sample_rate)
    resampler = _resampler(container.header["sample_rate"], rate)
    join = CrossfadeStream(container.get("overlap"), container.header["num_samples"])
    clipped = 0

    def write(block) -> None:
        nonlocal clipped
        samples = block.numpy()
        if subtype != "FLOAT":
            beyond = int((abs(samples) > 1.0).sum())
            if beyond:
                clipped += beyond
                samples = samples.clip(-1.0, 1.0)
        stream.write(samples)

    def at_level(block):
        return (block if gain is None else block * gain).float().cpu()

    try:
        stream = files.WavStream(target, rate, subtype=subtype, format=audio_format)
    except Exception as err:
        raise OSError(f"cannot write {target}: {getattr(err, 'strerror', None) or err}") from err
    with stream:
        for window in windows:
            write(resampler.push(at_level(join.push(window))))
        write(resampler.push(at_level(join.finish())))
        write(resampler.finish())
        stream.commit()
    if clipped:
        log.warning("%s: %d sample(s) beyond full scale clipped (--format float keeps them)", rel, clipped)


def _resampler(rate: int, target_rate: int):
    """``rate`` -> ``target_rate`` block by block, as torchaudio's resampler (the front-end's) does
    it whole (recon.resample); a ratio too unwieldy to resample is refused."""
    from .resample import StreamResampler

    g = math.gcd(rate, target_rate)
    if (rate // g) * (target_rate // g) > MAX_RESAMPLING_RATIO_TERMS:
        raise ValueError(f"cannot resample {rate} Hz to {target_rate} Hz (ratio {target_rate // g}/{rate // g}); pass --sample-rate {rate}")
    return StreamResampler(rate, target_rate)


# ---------------------------------------------------------------------- info
def info(args) -> int:
    """Header, size and measured bitrate of each file, one JSON line each; reads no model (and no torch)."""
    failures = []
    for path, rel in _recn_files(args.inputs):
        try:  # any failure is this file's: one line, and the other files go on
            data = path.read_bytes()
            container = loads(data)
            defaults = {key: container.get(key) for key in ("input_sample_rate", "input_channels")}
            header = dict(defaults, **container.header, bytes=len(data), measured_bps=len(data) * 8 / container.duration)
        except Exception as err:
            failures.append(f"{rel}: {_describe(err, rel)}")
            continue
        print(json.dumps({"file": rel, **header}))
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


# ---------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return build_parser(for_info=command == "info").parse_args(argv)


class _NoDefaults:
    """Stands in for recon.variants' settings in a parser that only ``recon info`` uses: the encode
    options' defaults are never read there, and importing recon.variants would import torch."""

    def __getattr__(self, name):
        return None


def build_parser(for_info: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="also print the libraries' info messages and warnings that recon hides")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p):
        p.add_argument("--ckpt", help="trained codebook checkpoint (train.py), for codebook and rvq; it names its backbone")
        p.add_argument("--diffusion", help="AudioLDM2 pipeline for ddcm (cvssp/audioldm2, a folder, or random:tiny)")
        p.add_argument("--backbone", help="VAE + vocoder source overriding the checkpoint's or the pipeline's (a folder, hub id or random:tiny|full)")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default: %(default)s)")
        p.add_argument("--batch-size", type=int, default=4, help="segments per forward pass (default: %(default)s)")
        p.add_argument("--out", required=True, help="output folder; input folders keep their layout inside it")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        # Also after the subcommand; SUPPRESS keeps a --verbose given before it.
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="also print the libraries' info messages and warnings that recon hides")

    enc = sub.add_parser("encode", help="audio files -> .recn files", description="Compress audio files (or folders of them) to .recn files.")
    enc.add_argument("inputs", nargs="+", metavar="IN", help="audio files and/or folders (searched recursively)")
    enc.add_argument("--codec", default="codebook", choices=("codebook", "rvq", "ddcm"),
                     help="codebook: the nearest trained code per latent vector, log2 K bits each (codebook_hard); "
                          "rvq: the residual ladder of a multi-stage checkpoint, stages x log2 K bits (codebook_rvq@N); "
                          "ddcm: the noise choices of true DDCM, (steps - 1) x log2 K bits per segment for plain DDCM; the --ddcm-* options "
                          "change that as recon.ddcm_options defines (ddcm_noise); decoding reads them from the file")
    enc.add_argument("--fixed-rate", action="store_true", help="write indices at log2 K bits each instead of range-coding them under the checkpoint's code frequencies")
    enc.add_argument("--stages", type=int, help="residual stages to code with (default: 1 for codebook, all for rvq)")
    from .ddcm_options import add_arguments as add_ddcm_arguments

    if for_info:
        d, overlap_default, stream_default = _NoDefaults(), None, None
    else:
        from .audio import DEFAULT_OVERLAP_SECONDS, STREAM_ABOVE_SECONDS
        from .variants import VariantSettings

        d, overlap_default, stream_default = VariantSettings(), DEFAULT_OVERLAP_SECONDS, STREAM_ABOVE_SECONDS
    enc.add_argument("--overlap", type=float, default=overlap_default, metavar="SECONDS",
                     help="seconds shared by consecutive 10.24 s windows, crossfaded on decoding (the file records it), a multiple "
                          "of 0.04; 0 butts the windows as files without an overlap field (default: %(default)s)")
    g = enc.add_argument_group("ddcm")
    g.add_argument("--ddcm-steps", type=int, default=d.ddcm_steps, help="steps of the DDCM sampler, i.e. the bitstream's length (default: %(default)s)")
    g.add_argument("--ddcm-k", type=int, default=d.ddcm_k, help="noise codebook size per step, a power of two (default: %(default)s)")
    add_ddcm_arguments(g, *([] if for_info else [d.ddcm_options]))
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the shared noise codebooks (default: %(default)s)")
    g.add_argument("--prompt", default=d.refine_prompt, help="text conditioning (default: empty)")
    g.add_argument("--guidance-scale", type=float, default=d.guidance_scale, help="classifier-free guidance (default: %(default)s)")
    enc.add_argument("--stream-above", type=float, default=stream_default, metavar="SECONDS",
                     help="read files longer than this by offset, window group by window group, instead of loading them whole "
                          "(memory flat in their length; the same file either way) (default: %(default)s)")
    enc.add_argument("--num-workers", type=int, default=0, help="audio loading workers")
    model_options(enc)
    dec = sub.add_parser("decode", help=".recn files -> audio files", description="Decode .recn files (or folders of them) to wav or flac files.")
    dec.add_argument("inputs", nargs="+", metavar="FILE", help=".recn files and/or folders (searched recursively)")
    dec.add_argument("--normalised", action="store_true", help="keep the model's peak-normalised level instead of the input's own loudness")
    dec.add_argument("--format", choices=tuple(OUTPUT_FORMATS), default="wav16",
                     help="wav16 / wav24: 16- / 24-bit PCM wav (samples beyond full scale are clipped); float: 32-bit float wav; "
                          "flac: 16-bit FLAC (default: %(default)s)")
    dec.add_argument("--sample-rate", default="16000", type=_output_rate, metavar="original|HZ",
                     help="a rate in Hz (default: %(default)s, the model's), or original: the encoded file's own rate, resampled "
                          "with torchaudio's resampler (16000 Hz for files that predate recording it)")
    model_options(dec)
    # `recon listen ...` is parsed by recon.listen itself (main() hands it over before this parser).
    sub.add_parser("listen", add_help=False, help="blinded A/B and MUSHRA listening session of an infer.py folder; "
                   "`recon listen score` unblinds the answers (see recon listen --help)")
    inf = sub.add_parser("info", help="print the header, size and measured bitrate of .recn files")
    inf.add_argument("inputs", nargs="+", metavar="FILE", help=".recn files and/or folders (searched recursively)")
    inf.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="also print the libraries' info messages and warnings that recon hides")
    return parser


def _output_rate(value: str) -> str:
    from .container import SAMPLE_RATES

    if value != "original" and not (value.isdigit() and SAMPLE_RATES[0] <= int(value) <= SAMPLE_RATES[1]):
        raise argparse.ArgumentTypeError(f"expected original or a rate in [{SAMPLE_RATES[0]}, {SAMPLE_RATES[1]}] Hz, got {value!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["listen"]:
        from .listen import main as listen_main

        configure_output(verbose=False)
        return listen_main(argv[1:])
    args = parse_args(argv)
    if args.command == "info":
        # No model is loaded, so only recon's own logging needs setting (configure_output imports
        # diffusers and transformers, and with them torch).
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=LOG_FORMAT)
    else:
        configure_output(verbose=args.verbose)
    try:
        return {"encode": encode, "decode": decode, "info": info}[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
