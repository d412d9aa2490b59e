"""``codebook_ddp``: the DDP strategy of multi-device codebook training."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class CodebookDDPStrategy(DDPStrategy):
    """DDP that leaves the model unwrapped when nothing in it takes gradients.

    An EMA codebook without adapters has no trainable parameter, and torch's
    DistributedDataParallel refuses such a module; the quantizer synchronises its own statistics.
    Registered as ``codebook_ddp``: ``--trainer.strategy codebook_ddp`` for multi-device training.
    """

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in model.parameters()):
            return model
        return super()._setup_model(model)

    def _register_ddp_hooks(self) -> None:
        # Lightning asserts a DistributedDataParallel wrapper here on CUDA; a bare module has no
        # gradients to communicate, hence no hooks to register.
        if isinstance(self.model, DistributedDataParallel):
            super()._register_ddp_hooks()


StrategyRegistry.register("codebook_ddp", CodebookDDPStrategy, description="DDP that skips wrapping a model with nothing to train")
