"""The frozen AudioLDM2 VAE + HiFi-GAN vocoder, and offline random-weight stand-ins.

A backbone *source* is one of:

* a hub id, ``cvssp/audioldm2`` (the default): loaded with ``from_pretrained(id, subfolder=...)``;
* a local folder in the same layout (``vae/`` and ``vocoder/``, each with ``config.json`` and
  weights), e.g. a downloaded snapshot or one made by ``python -m recon.backbone make``;
* ``random:tiny`` / ``random:full``: random weights built in memory from the configs below,
  asked for explicitly. recon never substitutes one of these for a model it could not load.

The ``full`` configuration is architecture-identical to AudioLDM2 (values from diffusers'
``scripts/convert_original_audioldm2_to_diffusers.py``: VAE ``ch 128, ch_mult [1, 2, 4],
num_res_blocks 2, z_channels 8``; vocoder ``upsample_rates [5, 4, 2, 2, 2]``, kernels
``[16, 16, 8, 4, 4]``, 1024 initial channels, resblocks ``[3, 7, 11]`` x ``[1, 3, 5]``), so its
shapes, parameter counts and costs are those of the real model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor, nn
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from .audio import AudioSpec

HUB_ID = "cvssp/audioldm2"
RANDOM_PREFIX = "random:"
SCALING_FACTOR = 0.4110932946205139

_VAE_COMMON = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    latent_channels=8,
    sample_size=1024,
    scaling_factor=SCALING_FACTOR,
)
_VOCODER_COMMON = dict(model_in_dim=64, sampling_rate=16000, upsample_rates=[5, 4, 2, 2, 2], normalize_before=False)

# name -> (AutoencoderKL kwargs, SpeechT5HifiGanConfig kwargs)
RANDOM_CONFIGS: dict[str, tuple[dict, dict]] = {
    "full": (
        dict(_VAE_COMMON, block_out_channels=[128, 256, 512], layers_per_block=2, norm_num_groups=32),
        dict(
            _VOCODER_COMMON,
            upsample_initial_channel=1024,
            upsample_kernel_sizes=[16, 16, 8, 4, 4],
            resblock_kernel_sizes=[3, 7, 11],
            resblock_dilation_sizes=[[1, 3, 5]] * 3,
        ),
    ),
    # The trained stand-in (`python -m recon.backbone train-small`): the same classes and
    # downsampling at reduced widths; no attention in the VAE's mid block, so it is convolutional
    # end to end and trains on short crops.
    "small": (
        dict(_VAE_COMMON, block_out_channels=[16, 32, 64], layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False),
        dict(
            _VOCODER_COMMON,
            upsample_initial_channel=128,
            upsample_kernel_sizes=[10, 8, 4, 4, 4],
            resblock_kernel_sizes=[3, 7, 11],
            resblock_dilation_sizes=[[1, 3, 5]] * 3,
        ),
    ),
    # Same interfaces and the same 4x time/frequency downsampling, a few thousand parameters.
    "tiny": (
        dict(_VAE_COMMON, block_out_channels=[8, 16, 16], layers_per_block=1, norm_num_groups=4),
        dict(
            _VOCODER_COMMON,
            upsample_initial_channel=32,
            upsample_kernel_sizes=[10, 8, 4, 4, 4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1]],
            # At the default 0.01 a random vocoder this small outputs ~1e-10: too quiet for any
            # metric or loudness step to see; 0.1 gives ~1e-3 RMS noise.
            initializer_range=0.1,
        ),
    ),
}


class BackboneNotFoundError(FileNotFoundError):
    """The requested backbone could not be loaded; the message says what was looked for and how to get it."""


def how_to_provide(source: str) -> str:
    return (
        f"recon looked for '{source}' (subfolders vae/ and vocoder/). Either download the real weights on a "
        f"connected machine (`huggingface-cli download {HUB_ID} --include 'vae/*' 'vocoder/*' --local-dir DIR`) "
        "and pass --backbone DIR, or build an offline random-weight backbone for testing with "
        "`python -m recon.backbone make --size tiny|full --out DIR` (or pass random:tiny / random:full)."
    )


def describe_weights(source: str) -> str:
    """What the weights of a backbone source are, in words a report can show.

    ``random`` for ``random:<size>`` and folders made by ``make``; ``small`` for the stand-in that
    ``train-small`` trained; ``pretrained`` for a hub id or any other snapshot.
    """
    if source.startswith(RANDOM_PREFIX):
        return "random"
    record = Path(source).expanduser() / "recon_backbone.json"
    if record.is_file():
        info = json.loads(record.read_text())
        if "random_size" in info:
            return "random"
        if "trained_size" in info:
            return "small"
    return "pretrained"


def build_random(size: str, seed: int = 0) -> tuple[AutoencoderKL, SpeechT5HifiGan]:
    """Random-weight VAE and vocoder of a named configuration, deterministic in ``seed``."""
    if size not in RANDOM_CONFIGS:
        raise ValueError(f"unknown random backbone size '{size}'; choose one of {sorted(RANDOM_CONFIGS)}")
    vae_kwargs, vocoder_kwargs = copy.deepcopy(RANDOM_CONFIGS[size])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_kwargs)
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_kwargs))
    return vae.eval(), vocoder.eval()


def make_backbone_folder(size: str, out: str | Path, seed: int = 0) -> Path:
    """Save a random backbone in the hub layout (``out/vae``, ``out/vocoder``) for the normal loader."""
    out = Path(out)
    vae, vocoder = build_random(size, seed)
    vae.save_pretrained(out / "vae")
    vocoder.save_pretrained(out / "vocoder")
    (out / "recon_backbone.json").write_text(json.dumps({"random_size": size, "seed": seed}, indent=2) + "\n")
    return out


def _load_pretrained(source: str, local_files_only: bool) -> tuple[AutoencoderKL, SpeechT5HifiGan]:
    path = Path(source).expanduser()
    if path.exists():
        missing = [f"{sub}/config.json" for sub in ("vae", "vocoder") if not (path / sub / "config.json").is_file()]
        if missing:
            raise BackboneNotFoundError(f"{path} is not a backbone folder: missing {', '.join(missing)}. " + how_to_provide(source))
        source = str(path)
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise BackboneNotFoundError(f"no folder at {path}. " + how_to_provide(source))
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=local_files_only)
        vocoder = SpeechT5HifiGan.from_pretrained(source, subfolder="vocoder", local_files_only=local_files_only)
    except OSError as err:
        # Re-raised with the instructions a user needs; nothing is substituted.
        reason = " ".join(str(err).split())
        raise BackboneNotFoundError(f"could not load '{source}': {reason}. " + how_to_provide(source)) from err
    return vae, vocoder


def load_components(source: str = HUB_ID, local_files_only: bool = False) -> tuple[AutoencoderKL, SpeechT5HifiGan]:
    """Resolve a backbone source (hub id, local folder, or ``random:<size>``) into VAE and vocoder."""
    if source.startswith(RANDOM_PREFIX):
        return build_random(source[len(RANDOM_PREFIX) :])
    return _load_pretrained(source, local_files_only)


class FrozenAudioLDM2(nn.Module):
    """AudioLDM2's VAE and vocoder, frozen: always in eval mode, no parameter requires grad.

    Gradients still flow *through* :meth:`decode` and :meth:`vocode` (to a codebook before them);
    :meth:`encode` runs without autograd since nothing before the encoder is trainable.
    """

    def __init__(self, vae: AutoencoderKL, vocoder: SpeechT5HifiGan, source: str = "", spec: AudioSpec = AudioSpec()):
        super().__init__()
        self.vae = vae
        self.vocoder = vocoder
        self.source = source
        self.spec = spec
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_source(
        cls,
        source: str = HUB_ID,
        *,
        spec: AudioSpec = AudioSpec(),
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        local_files_only: bool = False,
    ) -> "FrozenAudioLDM2":
        vae, vocoder = load_components(source, local_files_only)
        return cls(vae, vocoder, source, spec).to(device=device, dtype=dtype)

    def train(self, mode: bool = True) -> "FrozenAudioLDM2":
        # Lightning (and users) call .train() on the whole model; the backbone stays in eval.
        return super().train(False)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, num_frames: int | None = None) -> tuple[int, int, int]:
        """``(channels, time, freq)`` of the latent of one segment: ``(8, 256, 16)`` for AudioLDM2."""
        frames = num_frames or self.spec.num_frames
        return (self.latent_channels, frames // self.downsample_factor, self.spec.n_mels // self.downsample_factor)

    def signature(self) -> dict:
        """What a trained codebook depends on; stored in checkpoints and compared on load."""
        return {
            "source": self.source,
            "latent_channels": self.latent_channels,
            "downsample_factor": self.downsample_factor,
            "vae_block_out_channels": list(self.vae.config.block_out_channels),
            "vocoder_upsample_initial_channel": int(self.vocoder.config.upsample_initial_channel),
        }

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, logmel: Tensor) -> DiagonalGaussianDistribution:
        """``[B, 1, T, F]`` log-mel -> posterior over ``[B, 8, T/4, F/4]`` (``.mean``, ``.std``, ``.sample()``)."""
        return self.vae.encode(logmel.to(self.dtype)).latent_dist

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latent ``[B, 8, T/4, F/4]`` -> log-mel ``[B, 1, T, F]``."""
        return self.vae.decode(z.to(self.dtype)).sample

    def vocode(self, logmel: Tensor, num_samples: int | None = None) -> Tensor:
        """Log-mel ``[B, 1, T, F]`` -> waveform ``[B, samples]``, trimmed to ``num_samples`` if given."""
        wav = self.vocoder(logmel.squeeze(1).to(self.dtype))
        return wav if num_samples is None else wav[..., :num_samples]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    # The command line (make, info, train-small) lives with the tooling, outside the runtime import graph.
    from recon.tools.backbone_cli import main

    main()
