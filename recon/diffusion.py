"""AudioLDM2's diffusion side: UNet, DDIM scheduler and text conditioning, for refinement and DDCM.

A diffusion *source* follows ``recon.backbone``'s convention:

* a hub id, ``cvssp/audioldm2`` (the default), ``cvssp/audioldm2-music`` or ``cvssp/audioldm2-large``,
  loaded with ``AudioLDM2Pipeline.from_pretrained`` (one loader: every official checkpoint has the
  same components and folder layout; they differ in the UNet, see :data:`CHECKPOINT_UNETS`);
* a local folder in the same layout (``model_index.json``, ``unet/``, ``scheduler/``, ``vae/``,
  ``vocoder/``, ``text_encoder/``, ``text_encoder_2/``, ``projection_model/``, ``language_model/``,
  ``tokenizer/``, ``tokenizer_2/``, ``feature_extractor/``), e.g. a downloaded snapshot or one made by
  ``python -m recon.diffusion make --size tiny --out DIR``;
* ``random:tiny``: a tiny random-weight pipeline built in memory, asked for explicitly. Its VAE and
  vocoder are ``recon.backbone.build_random("tiny")``, so latents are ``[B, 8, 256, 16]`` as for the
  real model. A source that cannot be loaded raises :class:`BackboneNotFoundError`; nothing is
  substituted.

Latents here are *scaled* UNet latents: ``vae.encode(mel).latent_dist.mean * scaling_factor``; the
decode path is ``latent / scaling_factor -> vae.decode -> vocoder``.

With transformers 5 the pipeline's ``language_model`` must be a ``GPT2LMHeadModel`` (a ``GPT2Model``
fails in generation, diffusers #12630), so it is always loaded as one and passed in explicitly.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, DDIMScheduler
from einops import repeat
from torch import Tensor
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .backbone import HUB_ID, RANDOM_PREFIX, BackboneNotFoundError, build_random, how_to_provide
from .ddcm import DiffusionSchedule, ddim_denoise

# cvssp/audioldm2's scheduler (diffusers' conversion script: DDIM, 1000 steps, scaled-linear betas
# 0.0015 -> 0.0195, "leading" spacing with steps_offset 1, alpha_bar_0 after the last step).
AUDIOLDM2_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0015,
    beta_end=0.0195,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)

# AudioLDM2's UNet, derived from diffusers' scripts/convert_original_audioldm2_to_diffusers.py
# (DEFAULT_CONFIG: model_channels 128, channel_mult [1, 2, 3, 5], num_res_blocks 2,
# attention_resolutions [8, 4, 2], num_head_channels 32, context_dim [768, 1024], in/out 8;
# create_unet_diffusers_config: extra_self_attn_layer -> a leading self-attention, None).
# Heads per block = channels / 32 (diffusers' legacy name for the head count is attention_head_dim).
FULL_UNET_CONFIG = dict(
    sample_size=256,
    in_channels=8,
    out_channels=8,
    block_out_channels=(128, 256, 384, 640),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=([None, 768, 1024],) * 4,  # self-attn, GPT2 (768) tokens, Flan-T5-large (1024) tokens
    attention_head_dim=(4, 8, 12, 20),
)

# The official checkpoints, as their hub cards describe them: text encoders, VAE and vocoder are
# shared, the UNet differs ("350M / 750M / 350M"). -large (audioldm2-full-large-1150k in the original
# release) has two transformer layers per attention block and a fourth attention slot, a
# self-attention after the Flan-T5 one (the release's context_dim [768, 1024, None] next to its extra
# self-attention layer): 718 M parameters by diffusers' count, against 347 M for the base UNet.
# -music (audioldm2-music-665k) is the base architecture trained on music. Overrides of the base
# config, in cross-attention slots (None: self-attention; then GPT2 tokens, Flan-T5 tokens).
CHECKPOINT_UNETS = {
    "audioldm2": dict(slots=(None, "gpt2", "t5"), transformer_layers_per_block=1),
    "audioldm2-music": dict(slots=(None, "gpt2", "t5"), transformer_layers_per_block=1),
    "audioldm2-large": dict(slots=(None, "gpt2", "t5", None), transformer_layers_per_block=2),
}
FULL_CONDITIONING_DIMS = {"gpt2": 768, "t5": 1024}

# Tiny stand-ins: the dims chain CLAP(16) + T5(32) -> projection -> GPT2(16) -> UNet cross-attention.
_TINY_CLAP_DIM, _TINY_T5_DIM, _TINY_GPT2_DIM = 16, 32, 16
TINY_UNET_CONFIG = dict(
    sample_size=256,
    in_channels=8,
    out_channels=8,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=([None, _TINY_GPT2_DIM, _TINY_T5_DIM],) * 2,
    attention_head_dim=2,
)

_PIPELINE_FILES = (
    "model_index.json",
    "unet/config.json",
    "scheduler/scheduler_config.json",
    "vae/config.json",
    "vocoder/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "projection_model/config.json",
    "language_model/config.json",
)


def how_to_provide_diffusion(source: str) -> str:
    # A hub id names its own snapshot (cvssp/audioldm2-music); a folder or anything else, the default.
    hub_id = source if source.count("/") == 1 and not source.startswith((".", "/", "~")) else HUB_ID
    return (
        f"recon looked for the AudioLDM2 diffusion pipeline '{source}' ({', '.join(_PIPELINE_FILES)}). Download the "
        f"whole snapshot on a connected machine (`huggingface-cli download {hub_id} --local-dir DIR`) and pass DIR, "
        "or build an offline random-weight pipeline with `python -m recon.diffusion make --size tiny --out DIR` "
        f"(or pass {RANDOM_PREFIX}tiny). For the VAE/vocoder alone: " + how_to_provide(source)
    )


# --------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------


def unet_config(size: str, checkpoint: str = "audioldm2") -> dict:
    """The UNet config of ``checkpoint`` (a name of :data:`CHECKPOINT_UNETS`) at ``size``: ``full`` is
    the checkpoint's architecture, ``tiny`` the same structure (attention slots, layers per block) at
    test widths."""
    configs = {"full": FULL_UNET_CONFIG, "tiny": TINY_UNET_CONFIG}
    if size not in configs:
        raise ValueError(f"unknown UNet size '{size}'; choose one of {sorted(configs)}")
    if checkpoint not in CHECKPOINT_UNETS:
        raise ValueError(f"unknown AudioLDM2 checkpoint '{checkpoint}'; choose one of {sorted(CHECKPOINT_UNETS)}")
    config = copy.deepcopy(configs[size])
    shape = CHECKPOINT_UNETS[checkpoint]
    dims = FULL_CONDITIONING_DIMS if size == "full" else {"gpt2": _TINY_GPT2_DIM, "t5": _TINY_T5_DIM}
    slots = [None if slot is None else dims[slot] for slot in shape["slots"]]
    config["cross_attention_dim"] = (slots,) * len(config["block_out_channels"])
    config["transformer_layers_per_block"] = shape["transformer_layers_per_block"]
    return config


def build_random_unet(size: str, seed: int = 0, checkpoint: str = "audioldm2") -> AudioLDM2UNet2DConditionModel:
    """A random-weight UNet of ``checkpoint``'s structure: ``full`` size, or ``tiny`` for tests."""
    config = unet_config(size, checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AudioLDM2UNet2DConditionModel(**config).eval()


def _tiny_tokenizers() -> tuple[RobertaTokenizer, T5Tokenizer]:
    """Offline tokenizers: byte-level BPE without merges (CLAP's RoBERTa) and a character unigram (T5)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + list(bytes_to_unicode().values()) + ["<mask>"])}
    roberta = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=77)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'-"]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=128)
    return roberta, t5


def build_tiny_pipeline(seed: int = 0, checkpoint: str = "audioldm2") -> AudioLDM2Pipeline:
    """A tiny random AudioLDM2 pipeline, deterministic in ``seed``, with recon's tiny VAE and vocoder
    and a UNet of ``checkpoint``'s structure (:func:`unet_config`)."""
    unet_kwargs = unet_config("tiny", checkpoint)
    vae, vocoder = build_random("tiny", seed)
    tokenizer, tokenizer_2 = _tiny_tokenizers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = AudioLDM2UNet2DConditionModel(**unet_kwargs)
        text_config = ClapTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            projection_dim=_TINY_CLAP_DIM,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        audio_config = ClapAudioConfig(
            spec_size=64,
            window_size=4,
            num_mel_bins=64,
            intermediate_size=32,
            depths=[1, 1],
            num_attention_heads=[2, 2],
            num_hidden_layers=2,
            hidden_size=32,
            projection_dim=_TINY_CLAP_DIM,
            patch_size=2,
            patch_stride=2,
            patch_embed_input_channels=4,
        )
        text_encoder = ClapModel(
            ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(), projection_dim=_TINY_CLAP_DIM)
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer_2), d_model=_TINY_T5_DIM, d_ff=32, d_kv=8, num_heads=2, num_layers=1)
        )
        language_model = GPT2LMHeadModel(
            GPT2Config(n_embd=_TINY_GPT2_DIM, n_head=2, n_layer=1, vocab_size=64, n_positions=256, bos_token_id=0, eos_token_id=0)
        )
        language_model.config.max_new_tokens = 8  # AudioLDM2's sequence_gen_length
        projection_model = AudioLDM2ProjectionModel(
            text_encoder_dim=_TINY_CLAP_DIM, text_encoder_1_dim=_TINY_T5_DIM, langauge_model_dim=_TINY_GPT2_DIM
        )
    pipe = AudioLDM2Pipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        projection_model=projection_model,
        language_model=language_model,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        feature_extractor=ClapFeatureExtractor(),
        unet=unet,
        scheduler=DDIMScheduler(**AUDIOLDM2_SCHEDULER_CONFIG),
        vocoder=vocoder,
    )
    return _freeze(pipe)


def make_tiny_pipeline_folder(out: str | Path, seed: int = 0, checkpoint: str = "audioldm2") -> Path:
    """Save :func:`build_tiny_pipeline` in the hub layout, loadable offline by :func:`load_diffusion_components`."""
    out = Path(out)
    build_tiny_pipeline(seed, checkpoint).save_pretrained(out)
    return out


def _freeze(pipe: AudioLDM2Pipeline) -> AudioLDM2Pipeline:
    # Fresh modules are in train mode (dropout); every component is inference-only here.
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_pretrained_pipeline(source: str, local_files_only: bool) -> AudioLDM2Pipeline:
    path = Path(source).expanduser()
    if path.exists():
        missing = [name for name in _PIPELINE_FILES if not (path / name).is_file()]
        if missing:
            raise BackboneNotFoundError(
                f"{path} is not an AudioLDM2 pipeline folder: missing {', '.join(missing)}. " + how_to_provide_diffusion(source)
            )
        source = str(path)
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise BackboneNotFoundError(f"no folder at {path}. " + how_to_provide_diffusion(source))
    try:
        language_model = GPT2LMHeadModel.from_pretrained(
            source, subfolder="language_model", local_files_only=local_files_only
        )
        pipe = AudioLDM2Pipeline.from_pretrained(
            source, language_model=language_model, local_files_only=local_files_only
        )
        # The scheduler is always DDIM from the source's own scheduler config (the sampler is ours).
        pipe.scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", local_files_only=local_files_only)
    except OSError as err:
        # Re-raised with the instructions a user needs; nothing is substituted.
        reason = " ".join(str(err).split())
        raise BackboneNotFoundError(f"could not load '{source}': {reason}. " + how_to_provide_diffusion(source)) from err
    return _freeze(pipe)


@dataclass
class DiffusionComponents:
    """A frozen AudioLDM2 pipeline (UNet, DDIM scheduler, conditioning stack, VAE, vocoder) and its source.

    Prompt embeddings are cached per (prompt, negative prompt, guided) so the language model runs
    once per prompt, not once per batch.
    """

    pipe: AudioLDM2Pipeline
    source: str
    _prompt_cache: dict = field(default_factory=dict, repr=False)

    @property
    def unet(self) -> AudioLDM2UNet2DConditionModel:
        return self.pipe.unet

    @property
    def scheduler(self) -> DDIMScheduler:
        return self.pipe.scheduler

    @property
    def schedule(self) -> DiffusionSchedule:
        return DiffusionSchedule.from_scheduler(self.pipe.scheduler)

    @property
    def scaling_factor(self) -> float:
        return float(self.pipe.vae.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def prompt_embeddings(self, prompt: str, guidance_scale: float, negative_prompt: str | None = None) -> "PromptEmbeddings":
        key = (prompt, negative_prompt, guidance_scale > 1.0)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = encode_prompt(self.pipe, prompt, guidance_scale, negative_prompt)
        return self._prompt_cache[key]

    def denoiser(self, prompt: str, guidance_scale: float, negative_prompt: str | None = None) -> "AudioLDM2Denoiser":
        """An :class:`AudioLDM2Denoiser` for ``prompt`` (for ``recon.ddcm.compress``/``decompress``)."""
        cached = self.prompt_embeddings(prompt, guidance_scale, negative_prompt)
        # Embeddings are computed once where the text encoders live (CPU); the UNet may have moved.
        embeddings = PromptEmbeddings(
            cached.prompt_embeds.to(self.device),
            cached.attention_mask.to(self.device),
            cached.generated_prompt_embeds.to(self.device),
            cached.guided,
        )
        return AudioLDM2Denoiser(self.unet, self.schedule, embeddings, guidance_scale)


def load_diffusion_components(source: str = HUB_ID, local_files_only: bool = False) -> DiffusionComponents:
    """Resolve a diffusion source (hub id, local folder, or ``random:tiny``) into frozen, eval components."""
    if source.startswith(RANDOM_PREFIX):
        size = source[len(RANDOM_PREFIX) :]
        if size != "tiny":
            raise ValueError(
                f"only {RANDOM_PREFIX}tiny is available as a random diffusion pipeline, got '{source}' "
                "(the full-size random UNet alone is recon.diffusion.build_random_unet('full'))"
            )
        return DiffusionComponents(build_tiny_pipeline(), source)
    return DiffusionComponents(_load_pretrained_pipeline(source, local_files_only), source)


# --------------------------------------------------------------------------------------------
# Conditioning and the denoiser
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEmbeddings:
    """The UNet's text conditioning for one prompt, from ``AudioLDM2Pipeline.encode_prompt``.

    ``guided``: rows are ``[uncond; cond]`` (classifier-free guidance), else ``[cond]``.
    ``generated_prompt_embeds`` (GPT2 tokens) feed ``encoder_hidden_states``; ``prompt_embeds``
    (Flan-T5) and ``attention_mask`` feed ``encoder_hidden_states_1`` / ``encoder_attention_mask_1``.
    """

    prompt_embeds: Tensor
    attention_mask: Tensor
    generated_prompt_embeds: Tensor
    guided: bool

    def unet_kwargs(self, batch: int) -> dict[str, Tensor]:
        """Conditioning for a UNet batch of ``batch`` latents (``2 * batch`` rows when guided)."""

        def expand(x: Tensor) -> Tensor:
            # row r of the stored [uncond; cond] repeated batch times each: [u]*B + [c]*B
            return repeat(x, "r ... -> (r b) ...", b=batch)

        return dict(
            encoder_hidden_states=expand(self.generated_prompt_embeds),
            encoder_hidden_states_1=expand(self.prompt_embeds),
            encoder_attention_mask_1=expand(self.attention_mask),
        )


@torch.no_grad()
def encode_prompt(
    pipe: AudioLDM2Pipeline, prompt: str, guidance_scale: float, negative_prompt: str | None = None
) -> PromptEmbeddings:
    """Run the conditioning stack (CLAP, Flan-T5, projection, GPT2 generation) once for ``prompt``."""
    guided = guidance_scale > 1.0  # the pipeline's rule
    # The token ids go where the text encoders are (they stay on the CPU), not where the UNet was moved.
    prompt_embeds, attention_mask, generated = pipe.encode_prompt(
        prompt, pipe.text_encoder.device, 1, guided, negative_prompt=negative_prompt
    )
    return PromptEmbeddings(prompt_embeds, attention_mask, generated, guided)


class AudioLDM2Denoiser:
    """AudioLDM2's UNet as a ``recon.ddcm.Denoiser``: eps-prediction with classifier-free guidance.

        eps = eps_u + w (eps_c - eps_u)      (UNet batch [x_t; x_t] against [uncond; cond] text)

    and ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` (``recon.ddcm.predict_x0``).
    Latents are scaled UNet latents ``[B, 8, 256, 16]``.
    """

    def __init__(self, unet: AudioLDM2UNet2DConditionModel, schedule: DiffusionSchedule, embeddings: PromptEmbeddings, guidance_scale: float):
        if not embeddings.guided and guidance_scale > 1.0:
            raise ValueError(f"guidance_scale {guidance_scale} needs embeddings made with guidance (uncond rows)")
        self.unet = unet
        self.schedule = schedule
        self.embeddings = embeddings
        self.guidance_scale = guidance_scale

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: int) -> Tensor:
        batch = x_t.shape[0]
        x_in = torch.cat([x_t, x_t]) if self.embeddings.guided else x_t
        eps = self.unet(x_in.to(self.unet.dtype), t, **self.embeddings.unet_kwargs(batch)).sample.to(x_t.dtype)
        if not self.embeddings.guided:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)


# --------------------------------------------------------------------------------------------
# Refinement and generation
# --------------------------------------------------------------------------------------------


def _seeded_noise(shape, seed: int | Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """As the pipeline's prepare_latents: randn from a generator on the target device. A sequence of
    seeds gives each batch item its own stream, so an item's noise does not depend on its batch."""
    if isinstance(seed, int):
        return torch.randn(tuple(shape), generator=torch.Generator(device=device).manual_seed(seed), device=device, dtype=dtype)
    if len(seed) != shape[0]:
        raise ValueError(f"{len(seed)} seeds for a batch of {shape[0]}")
    return torch.cat([_seeded_noise((1, *shape[1:]), s, device, dtype) for s in seed])


@torch.no_grad()
def sdedit_refine(
    components: DiffusionComponents,
    latent_scaled: Tensor,
    strength: float,
    steps: int,
    guidance_scale: float,
    prompt: str,
    seed: int | Sequence[int],
    negative_prompt: str | None = None,
) -> Tensor:
    """SDEdit (Meng et al. 2022): noise a scaled latent part-way, then DDIM-denoise (eta 0) to the end.

    Of the ``steps`` DDIM timesteps, the last ``n = int(steps * strength)`` are run (as diffusers'
    img2img). The start is ``x = sqrt(a_t0) z + sqrt(1 - a_t0) eps`` at their first timestep ``t0``;
    ``strength = 1`` starts from pure noise ``x = eps`` (then it equals :func:`text_to_audio_latent`
    with the same seed). ``n = 0`` (``strength = 0``) returns the input unchanged. ``eps`` comes from
    a generator seeded with ``seed`` (one seed per item: batch-independent noise), so the result is
    deterministic.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    schedule = components.schedule
    timesteps = schedule.timesteps(steps)
    n = min(int(steps * strength), steps)
    if n == 0:
        return latent_scaled
    timesteps = timesteps[steps - n :]
    z = latent_scaled.float()
    noise = _seeded_noise(z.shape, seed, z.device)
    if strength >= 1.0:
        x = noise
    else:
        a_t0 = schedule.alpha_bar(timesteps[0])
        x = a_t0**0.5 * z + (1 - a_t0) ** 0.5 * noise
    denoiser = components.denoiser(prompt, guidance_scale, negative_prompt)
    return ddim_denoise(denoiser, x, timesteps).to(latent_scaled.dtype)


@torch.no_grad()
def text_to_audio_latent(
    components: DiffusionComponents,
    prompt: str,
    steps: int,
    guidance_scale: float,
    seed: int | Sequence[int],
    latent_shape: tuple[int, ...] = (1, 8, 256, 16),
    negative_prompt: str | None = None,
) -> Tensor:
    """Plain DDIM (eta 0) text-to-audio generation of a scaled latent from seeded noise.

    The same loop as ``AudioLDM2Pipeline(..., output_type="latent", generator=Generator().manual_seed(seed))``.
    """
    x = _seeded_noise(latent_shape, seed, components.device)
    denoiser = components.denoiser(prompt, guidance_scale, negative_prompt)
    return ddim_denoise(denoiser, x, components.schedule.timesteps(steps))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recon.diffusion", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="save a random-weight AudioLDM2 pipeline in the cvssp/audioldm2 folder layout")
    make.add_argument("--size", choices=["tiny"], default="tiny")
    make.add_argument("--out", required=True, help="folder to create")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--checkpoint", choices=sorted(CHECKPOINT_UNETS), default="audioldm2",
                      help="whose UNet structure to give it (cvssp/<name>; default: %(default)s)")
    args = parser.parse_args(argv)
    out = make_tiny_pipeline_folder(args.out, args.seed, args.checkpoint)
    print(f"wrote random '{args.size}' AudioLDM2 pipeline shaped like cvssp/{args.checkpoint} (seed {args.seed}) to {out}")


if __name__ == "__main__":
    main()
