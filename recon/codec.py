"""Codecs over the backbone's latent: audio -> a recon container -> audio.

``recon encode`` / ``recon decode`` (recon.cli) and ``infer.py``'s codec variants write and read
the same files through these functions. A file holds everything decoding needs besides the model,
and fingerprints of the weights it must be decoded with:

* ``codebook``: the nearest code of the trained codebook per latent vector, ``log2 K`` bits each;
  with ``stages`` > 1, the codes of the first stages of the residual ladder, ``stages x log2 K``.
  With a checkpoint that kept code frequencies (every one trained by this recon), the indices are
  range-coded (``constriction``) under each stage's code frequencies (``coding: categorical``)
  when that is smaller; otherwise, or without frequencies, written at ``log2 K`` bits (``coding:
  fixed``). The nominal rate is ``log2 K`` either way.
* ``ddcm``: the choices of true DDCM (recon.ddcm): plain DDCM writes ``log2 K`` bits per segment and
  step; with options (recon.ddcm_options: coded range, eta schedule, late K, noise mixing with P
  atoms and CB-bit levels, ...) the exact layout and bits are recon.ddcm_options'. The header holds
  the steps, K, seed, prompt and guidance, and under ``ddcm`` every option that differs from plain
  DDCM, so the file replays the sampler alone; its noise is recon.ddcm's portable generator, so a
  file encoded on one device decodes on any other.

Fingerprints hash the weights themselves (float32 bytes), so a renamed or copied checkpoint still
matches and a retrained one does not.
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .audio import OVERLAP_QUANTUM_FRAMES, TAIL_FRAMES, crossfade_join, length_chunks, segment_lengths
from .container import CODEC_FIELDS, Container
from .codebook import PRIOR_PRECISION
from .ddcm import NOISE_GENERATOR, coded_sizes, decompress
from .ddcm_options import DDCMOptions, pack_codes, unpack_codes

CODECS = tuple(CODEC_FIELDS)


class ModelMismatch(ValueError):
    """A file encoded with other weights than the model it is being decoded with."""


# ---------------------------------------------------------------------- fingerprints
_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, dict[str, str]]" = weakref.WeakKeyDictionary()


def tensors_fingerprint(named: Iterable[tuple[str, Tensor]]) -> str:
    h = hashlib.sha256()
    for name, tensor in named:
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _memo(module: nn.Module, key: str, compute) -> str:
    # Frozen weights: hashed once per module and run (the full-size decoder and vocoder are ~0.5 GB).
    cache = _FINGERPRINTS.setdefault(module, {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def decoder_fingerprint(backbone) -> str:
    """The weights that turn a latent into audio: VAE decoder side and vocoder, with the audio spec."""

    def compute() -> str:
        vae = [(f"vae.{k}", v) for k, v in backbone.vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))]
        vocoder = [(f"vocoder.{k}", v) for k, v in backbone.vocoder.state_dict().items()]
        spec = [("spec", torch.tensor([backbone.spec.sample_rate, backbone.spec.hop_length, backbone.spec.n_mels], dtype=torch.float32))]
        return tensors_fingerprint(spec + vae + vocoder)

    return _memo(backbone, "decoder", compute)


def codebook_fingerprint(quantizer, stages: int = 1) -> str:
    """The codebooks of the first ``stages`` stages (stage 1 alone hashes as a one-stage codebook)."""
    books = [quantizer, *quantizer.residual][:stages]
    named = [("codebook" if s == 0 else f"residual.{s - 1}.codebook", q.codebook) for s, q in enumerate(books)]
    return _memo(quantizer, f"codebook:{stages}", lambda: tensors_fingerprint(named))


def prior_fingerprint(tables: list[np.ndarray]) -> str:
    """The range coder's integer prior tables themselves (what the coder uses, bit for bit)."""
    h = hashlib.sha256()
    for s, table in enumerate(tables):
        h.update(f"stage{s}:{PRIOR_PRECISION}:{len(table)}".encode())
        h.update(np.asarray(table, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


def check_model(container: Container, expected: dict[str, str], path: str = "") -> None:
    """Refuse to decode with weights other than those the file was encoded with, naming both."""
    recorded = container.header["model"]
    wrong = [f"{name} {recorded.get(name)} in the file vs {value} given" for name, value in expected.items() if recorded.get(name) != value]
    if wrong:
        raise ModelMismatch(f"{path + ': ' if path else ''}encoded with other weights ({'; '.join(wrong)})")


# ---------------------------------------------------------------------- fixed-width index packing
def pack_indices(indices: np.ndarray, bits: int) -> bytes:
    """Unsigned integers at ``bits`` bits each, most significant bit first, zero-padded to a byte."""
    values = np.asarray(indices, dtype=np.int64).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"indices must lie in [0, {1 << bits})")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((values[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def unpack_indices(data: bytes, bits: int, count: int) -> np.ndarray:
    needed = math.ceil(count * bits / 8)
    if len(data) != needed:
        raise ValueError(f"payload of {len(data)} bytes; {count} indices of {bits} bits need {needed}")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits].reshape(count, bits).astype(np.int64)
    return flat @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


# ---------------------------------------------------------------------- entropy coding
# A range coder's output cannot be shorter than the information content of what it coded under its
# model, less the coder's 64-bit state; a longer claim means the decoder would read past the data.
RANGE_CODER_SLACK_BITS = 64


def prior_tables(quantizer, stages: int) -> list[np.ndarray] | None:
    """Each stage's range-coding prior as integer weights (int64, each >= 1, summing to
    ``2 ** PRIOR_PRECISION``), exactly ``quantizer.code_probabilities`` (dyadic by construction)."""
    priors = quantizer.code_probabilities(stages)
    if priors is None:
        return None
    return [np.rint(p.numpy() * (1 << PRIOR_PRECISION)).astype(np.int64) for p in priors]


def _categorical(table: np.ndarray):
    """constriction's categorical model whose fixed-point weights are exactly ``table``.

    constriction's fast quantisation (``perfect=False``) gives symbol i the left cumulative
    ``floor(cumsum_{j<i}(q_j) * (2^24 - n) / sum(q)) + i``. With ``q = table - 1`` (whole numbers,
    exact in float64, summing to 2^24 - n) the scale is exactly 1 and every product is exact, so
    the model is ``table`` itself on any CPU: no float rounding is left to differ."""
    import constriction

    return constriction.stream.model.Categorical((np.asarray(table, dtype=np.int64) - 1).astype(np.float64), perfect=False)


def _information_bits(symbols: np.ndarray, table: np.ndarray) -> float:
    return float(PRIOR_PRECISION * symbols.size - np.log2(table[symbols].astype(np.float64)).sum())


def range_encode(blocks: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Range-code blocks of (symbols, integer prior table) one after the other."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    for symbols, table in blocks:
        encoder.encode(np.ascontiguousarray(symbols, dtype=np.int32), _categorical(table))
    return encoder.get_compressed().astype("<u4").tobytes()


def range_decode(data: bytes, blocks: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
    """The symbols of blocks of (count, integer prior table), as :func:`range_encode` wrote them.

    Refuses, before decoding, a count the payload cannot hold even if every symbol were the most
    probable one (``-log2 p_max`` bits each), and, while decoding, symbols whose information content
    exceeds the payload: either way the decoder would be reading past the data."""
    import constriction

    if len(data) % 4:
        raise ValueError(f"range-coded payload of {len(data)} bytes is not whole 32-bit words")
    available = 8 * len(data) + RANGE_CODER_SLACK_BITS
    total = sum(count for count, _ in blocks)
    least = sum(count * (PRIOR_PRECISION - math.log2(int(table.max()))) for count, table in blocks)
    if least > available:
        raise ValueError(f"range-coded payload of {len(data)} bytes cannot hold {total} indices (at least {least:.0f} bits under the prior)")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    decoded, spent = [], 0.0
    for count, table in blocks:
        symbols = decoder.decode(_categorical(table), count).astype(np.int64)
        spent += _information_bits(symbols, table)
        if spent > available:
            raise ValueError(f"range-coded payload of {len(data)} bytes ends before its {total} indices")
        decoded.append(symbols)
    if not decoder.maybe_exhausted():
        raise ValueError(f"range-coded payload of {len(data)} bytes has data left after its {total} indices")
    return decoded


# ---------------------------------------------------------------------- the codebook codec
def latent_grid(backbone, segment_samples: int) -> tuple[int, int]:
    """(time, freq) latent vectors of a segment of ``segment_samples`` samples."""
    frames = segment_samples // backbone.spec.hop_length
    return frames // backbone.downsample_factor, backbone.spec.n_mels // backbone.downsample_factor


def layout_of(backbone) -> list[int]:
    """``[segment, quantum]`` samples: how recon cuts a file (recon.audio.split_file)."""
    return [backbone.spec.num_samples, TAIL_FRAMES * backbone.spec.hop_length]


def segments_of(container: Container) -> list[int]:
    return segment_lengths(container.header["num_samples"], *container.header["layout"], container.get("overlap"))


def _with_overlap(header: dict, overlap: int, source: dict | None = None) -> dict:
    # Written only when the windows overlap: a file of butted segments is byte for byte what it was.
    # ``source``: the input's own format (recon.audio.source_format), for decode --sample-rate original.
    header = dict(header, **(source or {}))
    return dict(header, overlap=int(overlap)) if overlap else header


def codebook_container(codes: list[Tensor], segments: list[int], num_samples: int, quantizer, backbone, level: float = 1.0,
                       entropy: bool = True, overlap: int = 0, source: dict | None = None) -> Container:
    """A file of per-segment code indices ``codes[i]`` (``[time, freq]``, or ``[stages, time, freq]``
    for a residual ladder) of segments ``segments[i]`` samples long, consecutive ones sharing
    ``overlap`` samples; ``level`` restores the input's loudness (the model sees peak-normalised audio)."""
    layout = layout_of(backbone)
    if segment_lengths(num_samples, *layout, overlap) != list(segments):
        raise ValueError(f"segments {segments} are not recon's layout {layout} of {num_samples} samples")
    codes = [c if c.ndim == 3 else c[None] for c in codes]
    stages = codes[0].shape[0]
    for code, length in zip(codes, segments, strict=True):
        if tuple(code.shape) != (stages, *latent_grid(backbone, length)):
            raise ValueError(f"codes of shape {tuple(code.shape)} for a segment of {length} samples")
    bits = math.ceil(math.log2(quantizer.cfg.num_codes))
    priors = prior_tables(quantizer, stages) if entropy else None
    model = {"codebook": codebook_fingerprint(quantizer, stages), "decoder": decoder_fingerprint(backbone)}
    payload = pack_indices(torch.cat([c.reshape(-1) for c in codes]).cpu().numpy(), bits)
    if priors is not None:
        ranged = range_encode([(stage.reshape(-1).cpu().numpy(), priors[s]) for c in codes for s, stage in enumerate(c)])
        # Indices unlike the training data can cost more than log2 K under the prior: keep the smaller.
        if len(ranged) < len(payload):
            payload, model["prior"] = ranged, prior_fingerprint(priors)
        else:
            priors = None
    header = {
        "codec": "codebook",
        "sample_rate": backbone.spec.sample_rate,
        "num_samples": int(num_samples),
        "layout": layout,
        "level": float(f"{level:.6g}"),
        "model": model,
        "codes": int(quantizer.cfg.num_codes),
        "coding": "fixed" if priors is None else "categorical",
        "stages": int(stages),
    }
    return Container(_with_overlap(header, overlap, source), payload)


def codebook_codes(container: Container, backbone, quantizer) -> list[Tensor]:
    """The per-segment index grids ``[stages, time, freq]`` of a ``codebook`` file."""
    header = container.header
    grids = [(header["stages"], *latent_grid(backbone, length)) for length in segments_of(container)]
    counts = [math.prod(grid) for grid in grids]
    if header["coding"] == "fixed":
        flat = torch.from_numpy(unpack_indices(container.payload, math.ceil(math.log2(header["codes"])), sum(counts)))
    elif header["coding"] == "categorical":
        priors = prior_tables(quantizer, header["stages"])
        blocks = [(t * f, priors[s]) for stages, t, f in grids for s in range(stages)]
        flat = torch.from_numpy(np.concatenate(range_decode(container.payload, blocks) or [np.zeros(0, np.int64)]))
    else:
        raise ValueError(f"unknown index coding {header['coding']!r}")
    if flat.numel() and int(flat.max()) >= header["codes"]:
        raise ValueError(f"index {int(flat.max())} outside a codebook of {header['codes']}")
    return [part.reshape(grid) for part, grid in zip(torch.split(flat, counts), grids)]


def _vocoded_groups(latent_groups: Iterable[tuple[list[int], Tensor]], segments: list[int], backbone) -> Iterator[tuple[list[int], Tensor]]:
    """(members, waveforms ``[B, samples]`` on the backbone's device) of each group of equal-length
    latents ``[B, 8, time, freq]``: one VAE decode and one vocoder forward per group."""
    device = next(backbone.parameters()).device
    for chunk, z in latent_groups:
        yield chunk, backbone.vocode(backbone.decode(z.to(device)), segments[chunk[0]]).float()


@torch.no_grad()
def decode_segments(latents: list[Tensor], segments: list[int], num_samples: int, backbone, batch_size: int = 4, overlap: int = 0) -> Tensor:
    """Decode and vocode per-segment latents ``[8, time, freq]``; segments of equal length share a
    forward pass (as in infer.py), and overlapping ones are crossfaded as infer.py joins them
    (recon.audio.crossfade_join). Returns the waveform ``[num_samples]`` on the backbone's device."""
    groups = ((chunk, torch.stack([latents[i] for i in chunk])) for chunk in length_chunks(segments, batch_size))
    wav: list[Tensor | None] = [None] * len(latents)
    for chunk, out in _vocoded_groups(groups, segments, backbone):
        for i, w in zip(chunk, out):
            wav[i] = w
    return crossfade_join(wav, overlap, num_samples)


def check_coding(container: Container, backbone, quantizer=None, path: str = "") -> None:
    """Refuse a file coded at another rate, in another segment layout or with another number of codes
    than the model's (``recon.container`` has checked the header's types and ranges): the header's
    sizes must be the model's before anything is allocated by them."""
    where, header = f"{path}: " if path else "", container.header
    if header["sample_rate"] != backbone.spec.sample_rate:
        raise ModelMismatch(f"{where}file at {header['sample_rate']} Hz, model at {backbone.spec.sample_rate} Hz")
    if header["layout"] != layout_of(backbone):
        raise ModelMismatch(f"{where}file coded in segments {header['layout']}; the model's are {layout_of(backbone)}")
    quantum = OVERLAP_QUANTUM_FRAMES * backbone.spec.hop_length
    if container.get("overlap") % quantum or container.get("overlap") > header["layout"][0] // 2:
        raise ModelMismatch(f"{where}windows overlap by {container.get('overlap')} samples; the model's overlaps are multiples of {quantum} up to half a segment")
    if container.codec == "codebook" and quantizer is not None and header["codes"] != quantizer.cfg.num_codes:
        raise ModelMismatch(f"{where}file coded with {header['codes']} codes; the codebook given has {quantizer.cfg.num_codes}")


def expected_model(container: Container, backbone, quantizer=None, diffusion=None) -> dict[str, str]:
    """The fingerprints the given models have, for the weights ``container`` says it needs."""
    expected = {"decoder": decoder_fingerprint(backbone)}
    if container.codec == "codebook":
        if quantizer is None:
            raise ValueError("a codebook file needs its codebook checkpoint (--ckpt)")
        stages = container.header["stages"]
        if stages > quantizer.num_stages:
            raise ModelMismatch(f"coded with {stages} residual stages; the codebook given has {quantizer.num_stages}")
        expected["codebook"] = codebook_fingerprint(quantizer, stages)
        if container.header["coding"] == "categorical":
            priors = prior_tables(quantizer, stages)
            expected["prior"] = prior_fingerprint(priors) if priors is not None else "none (the checkpoint kept no code frequencies)"
    elif container.codec == "ddcm":
        if diffusion is None:
            raise ValueError("a ddcm file needs the AudioLDM2 diffusion components (--diffusion)")
        expected["unet"] = unet_fingerprint(diffusion)
        expected["conditioning"] = conditioning_fingerprint(diffusion, container.header["prompt"], container.header["guidance_scale"])
    else:
        raise ValueError(f"codec {container.codec!r} is not one of {', '.join(CODECS)}")
    return expected


def decoded_windows(container: Container, backbone, quantizer=None, diffusion=None, path: str = "",
                    batch_size: int = 4) -> Iterator[Tensor]:
    """A file's window outputs ``[segment samples]`` (float32, on the backbone's device, at the
    model's peak-normalised level) one after the other in file order, for
    :class:`recon.audio.CrossfadeStream` (``overlap``: ``container.get("overlap")``) to join.

    The models are checked (as :func:`decode_container` does) when this is called, before anything
    is decoded. Windows are decoded at most ``batch_size`` consecutive equal-length ones per forward
    pass -- :func:`recon.audio.length_chunks` of one file, the forward passes of
    :func:`decode_container` -- so the joined windows equal its output exactly; only one group's
    latents and waveforms are held at a time (the codes are unpacked whole: a few kB per minute)."""
    check_coding(container, backbone, quantizer, path)
    check_model(container, expected_model(container, backbone, quantizer, diffusion), path)
    segments = segments_of(container)
    if container.codec == "codebook":
        codes = codebook_codes(container, backbone, quantizer)
        device = next(backbone.parameters()).device
        latent_groups = ((chunk, torch.stack([quantizer.decode_residual(codes[i][None].to(device))[0] for i in chunk]))
                         for chunk in length_chunks(segments, batch_size))
    else:
        latent_groups = ddcm_latent_groups(container, backbone, diffusion, batch_size)

    @torch.no_grad()
    def windows() -> Iterator[Tensor]:
        expected = 0
        for chunk, wav in _vocoded_groups(latent_groups, segments, backbone):
            # One file's windows never grow longer, so its length chunks come in file order.
            if chunk != list(range(expected, expected + len(chunk))):
                raise RuntimeError(f"windows {chunk} decoded out of order (expected {expected} next)")
            expected += len(chunk)
            yield from wav

    return windows()


@torch.no_grad()
def decode_container(container: Container, backbone, quantizer=None, diffusion=None, path: str = "", batch_size: int = 4) -> Tensor:
    """A file's waveform ``[num_samples]`` at the model's (peak-normalised) level, float32 on the
    backbone's device, after checking that the models are the ones it was encoded with: its
    :func:`decoded_windows` crossfaded whole (``recon decode`` joins them as they come instead)."""
    windows = list(decoded_windows(container, backbone, quantizer, diffusion, path, batch_size))
    return crossfade_join(windows, container.get("overlap"), container.header["num_samples"])


# ---------------------------------------------------------------------- the DDCM codec
def unet_fingerprint(diffusion) -> str:
    """The UNet's weights and the noise schedule the sampler follows."""

    def compute() -> str:
        schedule = diffusion.schedule
        named = [("alphas_cumprod", schedule.alphas_cumprod), ("final_alpha_cumprod", schedule.final_alpha_cumprod.reshape(1))]
        return tensors_fingerprint(named + [(f"unet.{k}", v) for k, v in diffusion.unet.state_dict().items()])

    return _memo(diffusion.unet, "unet", compute)


def conditioning_fingerprint(diffusion, prompt: str, guidance_scale: float) -> str:
    """The text conditioning: the prompt and the weights of the models that embed it (their outputs
    are floats that vary across machines; the weights and the text do not)."""
    pipe = diffusion.pipe
    encoders = {name: getattr(pipe, name) for name in ("text_encoder", "text_encoder_2", "projection_model", "language_model")}

    def compute() -> str:
        return tensors_fingerprint([(f"{n}.{k}", v) for n, m in encoders.items() for k, v in m.state_dict().items()])

    weights = _memo(pipe.text_encoder, "conditioning", compute)
    return hashlib.sha256(json.dumps([weights, prompt, guidance_scale]).encode()).hexdigest()[:16]


def ddcm_container(codes: list[Tensor], segments: list[int], num_samples: int, settings, diffusion, backbone, level: float = 1.0,
                   layout: list[int] | None = None, overlap: int = 0, source: dict | None = None) -> Container:
    """A file of per-segment DDCM codes ``codes[i]`` (``[coded_steps]``, or ``[coded_steps, 2P - 1]``
    with noise mixing: recon.ddcm.compress); ``settings`` holds steps, K, seed, prompt, guidance and
    the DDCM options (recon.variants.VariantSettings)."""
    layout = layout or layout_of(backbone)
    if segment_lengths(num_samples, *layout, overlap) != list(segments):
        raise ValueError(f"segments {segments} are not the layout {layout} of {num_samples} samples")
    steps, K, options = settings.ddcm_steps, settings.ddcm_k, settings.ddcm_options
    sizes = coded_sizes(diffusion.schedule, steps, K, options)
    shape = (len(sizes),) + ((options.code_width,) if options.code_width > 1 else ())
    if any(tuple(c.shape) != shape for c in codes):
        raise ValueError(f"DDCM codes must be {list(shape)} per segment, got {[tuple(c.shape) for c in codes]}")
    header = {
        "codec": "ddcm",
        "sample_rate": backbone.spec.sample_rate,
        "num_samples": int(num_samples),
        "layout": layout,
        "level": float(f"{level:.6g}"),
        "model": {"decoder": decoder_fingerprint(backbone), "unet": unet_fingerprint(diffusion),
                  "conditioning": conditioning_fingerprint(diffusion, settings.refine_prompt, settings.guidance_scale)},
        "steps": int(steps),
        "K": int(K),
        "seed": int(settings.seed),
        "prompt": settings.refine_prompt,
        "guidance_scale": float(settings.guidance_scale),
        "scaling_factor": diffusion.scaling_factor,
        "noise": NOISE_GENERATOR,
    }
    if options.to_header():  # plain DDCM files carry no options object
        header["ddcm"] = options.to_header()
    return Container(_with_overlap(header, overlap, source), pack_codes([c.cpu().numpy() for c in codes], sizes, options))


def ddcm_options_of(container: Container, diffusion) -> DDCMOptions:
    """The DDCM options a file records (plain DDCM without a ``ddcm`` object), checked against the schedule."""
    return DDCMOptions.from_header(container.header.get("ddcm"), diffusion.schedule.num_train_timesteps)


def ddcm_latent_groups(container: Container, backbone, diffusion, batch_size: int = 4) -> Iterator[tuple[list[int], Tensor]]:
    """Replay the sampler of a ``ddcm`` file group by group: (members, unscaled latents
    ``[B, 8, time, freq]``) of each :func:`recon.audio.length_chunks` group of its segments.

    A segment's result does not depend on its batch (shared per-step codebooks and x_T, per-item
    codes), up to float rounding of the UNet. The header is checked when this is called."""
    header = container.header
    if header["noise"] != NOISE_GENERATOR:
        raise ValueError(f"noise generator {header['noise']!r}; this recon has {NOISE_GENERATOR!r}")
    if abs(header["scaling_factor"] - diffusion.scaling_factor) > 1e-9:
        raise ModelMismatch(f"latent scaling {header['scaling_factor']} in the file vs {diffusion.scaling_factor} given")
    options = ddcm_options_of(container, diffusion)
    segments = segments_of(container)
    steps, K = header["steps"], header["K"]
    sizes = coded_sizes(diffusion.schedule, steps, K, options)
    codes = torch.from_numpy(unpack_codes(container.payload, len(segments), sizes, options))
    if options.code_width == 1:
        codes = codes[..., 0]
    denoiser = diffusion.denoiser(header["prompt"], header["guidance_scale"])

    def groups() -> Iterator[tuple[list[int], Tensor]]:
        for chunk in length_chunks(segments, batch_size):
            shape = (len(chunk), backbone.latent_channels, *latent_grid(backbone, segments[chunk[0]]))
            x0 = decompress(denoiser, codes[chunk], steps, K, header["seed"], shape, device=diffusion.device, options=options)
            yield chunk, x0 / header["scaling_factor"]

    return groups()


def ddcm_latents(container: Container, backbone, diffusion, batch_size: int = 4) -> list[Tensor]:
    """Replay the sampler of a ``ddcm`` file: per-segment unscaled latents ``[8, time, freq]``,
    segments of equal length replayed as one batch (:func:`ddcm_latent_groups`)."""
    latents: list[Tensor | None] = [None] * len(segments_of(container))
    for chunk, x0 in ddcm_latent_groups(container, backbone, diffusion, batch_size):
        for i, latent in zip(chunk, x0):
            latents[i] = latent
    return latents
