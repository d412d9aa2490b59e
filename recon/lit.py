"""LightningModule that trains a codebook on the latent of the frozen AudioLDM2 VAE."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from .audio import AudioSpec, MelFrontEnd
from .backbone import HUB_ID, FrozenAudioLDM2
from .codebook import CodebookConfig, QuantizerOutput, VectorQuantizer
from .loop_state import resumable_loop_state
from .metrics import latent_snr
from .precision import check_precision
from .strategy import CodebookDDPStrategy  # importing it registers "codebook_ddp"

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Checkpoints store these config dataclasses in their hyper-parameters; allow them under
# torch.load(weights_only=True), which Lightning uses when resuming.
torch.serialization.add_safe_globals([CodebookConfig, AudioSpec])
# Signature fields that decide whether a codebook fits a backbone's latent.
SHAPE_FIELDS = ("latent_channels", "downsample_factor", "vae_block_out_channels")


def latent_snr_db(z: Tensor, z_hat: Tensor) -> Tensor:
    """Batch mean of the per-item latent SNR (recon.metrics.latent_snr)."""
    return latent_snr(z.float(), z_hat.float()).mean()


class IdentityInitConv(nn.Conv2d):
    """1×1 convolution initialised to the identity: a no-op until training moves it."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
            self.bias.zero_()


class CodebookTrainer(L.LightningModule):
    """Trains a :class:`VectorQuantizer` on VAE latents; the backbone stays frozen and out of checkpoints.

    Loss = codebook term + ``commitment_weight`` (0.25) × commitment term
    (+ ``recon_weight`` × L1 between the decoded quantized latent's log-mel and the input log-mel;
    from the latent cache the target is the decoded *unquantized* latent). The reconstruction term
    reaches the codebook in soft mode, and in hard mode only through the optional identity-initialised
    1×1 ``adapters`` around the quantizer (off by default).

    Args:
        backbone: backbone source (hub id, local folder, ``random:tiny``/``random:full``).
        codebook: quantizer configuration (K = 1024, dim = 8, hard, grad update by default).
        latent: which latent is quantized: the posterior ``mean`` (default, what inference uses)
            or a posterior ``sample`` (a seeded draw per step: a data augmentation).
        scaled: quantize ``latent × scaling_factor`` (the diffusion UNet's scale) instead of the raw latent.
        recon_weight: weight of the L1 log-mel reconstruction term (0 = off; it costs a decode per step).
        adapters: add identity-initialised 1×1 convolutions before and after the quantizer, which the
            commitment and reconstruction terms can train (the frozen VAE cannot move).
        lr: Adam learning rate of whatever takes gradients (a grad codebook, the adapters).
        kmeans_init_batches: training batches whose latents seed the k-means initialisation.
        seed: seed of each step's random draws (posterior samples, dead-code restarts), combined with
            the step number so that a resumed run repeats an uninterrupted one.
        spec: audio parameters of the backbone (16 kHz, 10.24 s segments, 64 mel bins); must match ``data.spec``.
    """

    def __init__(
        self,
        backbone: str = HUB_ID,
        codebook: CodebookConfig = CodebookConfig(),
        latent: Literal["mean", "sample"] = "mean",
        scaled: bool = False,
        recon_weight: float = 0.0,
        adapters: bool = False,
        lr: float = 1e-3,
        kmeans_init_batches: int = 8,
        seed: int = 0,
        spec: AudioSpec = AudioSpec(),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = codebook
        self.backbone = FrozenAudioLDM2.from_source(backbone, spec=spec)
        self.frontend = MelFrontEnd(spec)
        self.quantizer = VectorQuantizer(codebook)
        dim = self.backbone.latent_channels
        if codebook.dim != dim:
            raise ValueError(f"codebook dim {codebook.dim} does not match the backbone's {dim} latent channels")
        self.adapter_in = IdentityInitConv(dim) if adapters else nn.Identity()
        self.adapter_out = IdentityInitConv(dim) if adapters else nn.Identity()
        # An EMA codebook without adapters updates itself in forward and has nothing for an
        # optimizer; Lightning then must not look for a loss to backpropagate.
        self.automatic_optimization = any(p.requires_grad for p in self.parameters())

    @property
    def leaves_parameters_unused(self) -> bool:
        """Whether a training step can leave trainable parameters out of the loss: the later stages of a
        residual codebook trained by gradient, which quantizer dropout skips on some steps. DDP must then
        look for unused parameters (``codebook_ddp`` does), or it fails on the next step."""
        cfg = self.cfg
        return cfg.update == "grad" and cfg.stages > 1 and cfg.quantizer_dropout > 0

    # ------------------------------------------------------------------ latents
    def posterior(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(mean, std) of the batch: from the latent cache, or by running the frozen encoder."""
        if "mean" in batch:
            return batch["mean"].float(), batch["std"].float()
        posterior = self.backbone.encode(self.frontend(batch["wav"]))
        return posterior.mean.float(), posterior.std.float()

    def select_latent(self, mean: Tensor, std: Tensor) -> Tensor:
        z = mean if self.hparams.latent == "mean" else mean + std * torch.randn_like(std)
        return z * self.backbone.scaling_factor if self.hparams.scaled else z

    def quantize(self, z: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Quantize a (selected) latent; returns the latent to decode and the quantizer's output."""
        out = self.quantizer(self.adapter_in(z))
        return self.adapter_out(out.z_q), out

    def decode(self, z: Tensor) -> Tensor:
        return self.backbone.decode(z / self.backbone.scaling_factor if self.hparams.scaled else z)

    # ------------------------------------------------------------------ lightning hooks
    def setup(self, stage: str) -> None:
        trainer = self.trainer
        check_precision(trainer.precision)
        if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError("train with `trainer.use_distributed_sampler: false`: recon's ResumableSampler shards the data itself")
        strategy = trainer.strategy
        # codebook_ddp turns find_unused_parameters on for such a model unless told otherwise.
        if (self.leaves_parameters_unused and isinstance(strategy, DDPStrategy)
                and not strategy._ddp_kwargs.get("find_unused_parameters", isinstance(strategy, CodebookDDPStrategy))):
            raise ValueError(
                "quantizer dropout leaves the skipped stages of a residual 'grad' codebook without gradients, which this "
                "DDP strategy refuses: train with `trainer.strategy: codebook_ddp`, which lets them go unused"
            )
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "spec", self.backbone.spec) != self.backbone.spec:
            raise ValueError(f"data spec {datamodule.spec} differs from the model's {self.backbone.spec}: set both to the same values")

    def on_fit_start(self) -> None:
        if not self.automatic_optimization and self.trainer.is_global_zero:
            # Lightning's model summary has just printed "Trainable params: 0", which reads like a bug.
            log.info("the EMA codebook is updated by moving averages, not by the optimiser: 0 trainable parameters is expected")
        # The backbone is on its device now (setup() runs before the strategy moves it): encode
        # the latent cache here, before the dataloaders and the k-means need it.
        datamodule = self.trainer.datamodule
        if datamodule is not None and getattr(datamodule, "cache_dir", None):
            datamodule.attach_latent_cache(self.backbone)
        # Explicit, data-dependent initialisation before the first step (never lazily in a sanity
        # check or predict); skipped when resuming, since the restored codebook is initialised.
        if not self.cfg.kmeans_init or bool(self.quantizer.initialized):
            return
        vectors = []
        if datamodule is not None:
            loader = datamodule.train_dataloader()
        else:
            # Loaders passed to fit() directly are only set up after on_fit_start.
            self.trainer.fit_loop.setup_data()
            loader = self.trainer.train_dataloader
        for i, batch in enumerate(loader):
            if i >= self.hparams.kmeans_init_batches:
                break
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            with torch.no_grad():
                z = self.adapter_in(self.select_latent(*self.posterior(batch)))
            vectors.append(z.transpose(0, 1).reshape(z.shape[1], -1).T)
        self.quantizer.init_from_latents(torch.cat(vectors))
        log.info("k-means initialised %d codes from %d latent vectors", self.cfg.num_codes, sum(len(v) for v in vectors))

    def on_train_start(self) -> None:
        # Lightning >= 2.2 does not put submodules in train mode for us (#18951).
        self.quantizer.train()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        # Every random draw of a step is a function of (seed, step): a resumed run repeats exactly.
        step_seed = self.hparams.seed * 1_000_003 + self.global_step
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            # Posterior-sample noise differs per rank; the quantizer's own draws (restarts) must not.
            torch.manual_seed(step_seed * 1009 + self.global_rank)
            self.quantizer.reseed(step_seed)
            loss, logs = self._step(batch)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=len(batch["index"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        if self.cfg.mode == "soft":
            self.log("train/temperature", self.quantizer.temperature_at(int(self.quantizer.step)))
        if self.automatic_optimization:
            return loss
        self._count_step_without_optimiser()
        return None

    def _count_step_without_optimiser(self) -> None:
        """Count a training step of a model with nothing to optimise (the EMA moved the codebook in forward).

        The count is the one Lightning's manual optimisation keeps of optimiser steps, which
        ``global_step``, ``max_steps``, checkpoint intervals and resumes read. Stepping Lightning's
        placeholder optimiser instead goes through the precision plugin, whose 16-mixed GradScaler
        then unscales gradients no loss produced and fails (``unscale_ but _scale is None``; a scaled
        zero loss only moves the failure to ``scaler.step``, which finds no parameters to check).
        """
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def _step(self, batch: dict) -> tuple[Tensor, dict]:
        mean, std = self.posterior(batch)
        z = self.select_latent(mean, std)
        z_dec, out = self.quantize(z)
        loss = out.loss
        logs = {
            "codebook_loss": out.codebook_loss,
            "commitment_loss": out.commitment_loss,
            "perplexity": out.perplexity,
            "usage": out.usage,
            "latent_snr_db": latent_snr_db(z, z_dec.detach()),
            "restarted_codes": self.quantizer.num_restarted.float(),
        }
        if self.hparams.recon_weight > 0:
            with torch.no_grad():
                target = self.frontend(batch["wav"]) if "wav" in batch else self.decode(z)
            recon = F.l1_loss(self.decode(z_dec).float(), target.float())
            loss = loss + self.hparams.recon_weight * recon
            logs["recon_l1"] = recon
        return loss, logs

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        mean, std = self.posterior(batch)
        z = self.select_latent(mean, std)
        z_dec, out = self.quantize(z)
        n = len(batch["index"])
        self.log_dict(
            {
                "val/latent_snr_db": latent_snr_db(z, z_dec),
                "val/usage": out.usage,
                "val/perplexity": out.perplexity,
                "val/commitment_loss": out.commitment_loss,
            },
            batch_size=n,
            sync_dist=True,
        )

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr) if params else None

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("backbone.")}
        resumable_loop_state(self.trainer, checkpoint)
        checkpoint["recon"] = {
            "format": CHECKPOINT_FORMAT,
            "backbone_signature": self.backbone.signature(),
            "spec": asdict(self.backbone.spec),
            "codebook": asdict(self.cfg),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("recon")
        if meta is None:
            raise ValueError("not a recon codebook checkpoint (no 'recon' section)")
        ours, theirs = self.backbone.signature(), meta["backbone_signature"]
        mismatched = {k: (theirs.get(k), ours.get(k)) for k in SHAPE_FIELDS if theirs.get(k) != ours.get(k)}
        if mismatched:
            details = ", ".join(f"{k}: checkpoint {a} vs backbone {b}" for k, (a, b) in mismatched.items())
            raise ValueError(
                f"this codebook was trained on backbone '{theirs['source']}' whose latent differs from "
                f"'{ours['source']}' ({details}); load it with the backbone it was trained on (backbone=...)"
            )
        expected = {k for k in self.state_dict() if not k.startswith("backbone.")}
        for key in expected - set(checkpoint["state_dict"]):
            if key.endswith("code_frequency"):
                # Written before recon kept code frequencies: no prior, indices are coded at log2 K bits.
                checkpoint["state_dict"][key] = torch.zeros_like(self.state_dict()[key])
        missing = expected - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(f"checkpoint lacks codebook weights: {sorted(missing)}")
        # The frozen backbone comes from its source, not the checkpoint: put its own weights in
        # place so the (strict) state-dict load sees every key.
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k.startswith("backbone.")})


def load_codebook_trainer(ckpt_path: str, backbone: str | None = None, map_location: str = "cpu") -> CodebookTrainer:
    """Load a trained codebook with its backbone (the one recorded in the checkpoint unless overridden)."""
    overrides = {} if backbone is None else {"backbone": backbone}
    return CodebookTrainer.load_from_checkpoint(ckpt_path, map_location=map_location, **overrides).eval()


def load_inference_codebook(ckpt_path: str, backbone: str | None = None):
    """The frozen backbone and the quantizer of a checkpoint, for inference and the codecs.

    Those quantize the raw posterior mean, so a codebook trained on scaled latents or with adapters
    is refused with the reason.
    """
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
    module = load_codebook_trainer(ckpt_path, backbone=backbone)
    if module.hparams.scaled or module.hparams.adapters:
        raise ValueError(
            f"{ckpt_path} was trained with scaled={module.hparams.scaled}, adapters={module.hparams.adapters}; "
            "the codebook variants and codecs quantize the raw posterior mean, so only codebooks trained with both off can be run"
        )
    return module.backbone, module.quantizer.eval()
