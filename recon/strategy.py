"""``codebook_ddp``: the DDP strategy of multi-device codebook training."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class CodebookDDPStrategy(DDPStrategy):
    """DDP fitted to what a codebook model trains.

    * An EMA codebook without adapters has no trainable parameter, and torch's
      DistributedDataParallel refuses such a module: it stays unwrapped, and the quantizer
      synchronises its own statistics.
    * A model whose steps can leave parameters out of the loss (``leaves_parameters_unused``: a
      residual grad codebook with quantizer dropout) is wrapped with ``find_unused_parameters``,
      unless the strategy was given that setting explicitly. Every rank skips the same stages (the
      dropout draws depend on the step, not the rank), so a skipped stage has no gradient anywhere
      and keeps none, as in a one-process run.

    Registered as ``codebook_ddp``: ``--trainer.strategy codebook_ddp`` for multi-device training.
    """

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in model.parameters()):
            return model
        if getattr(model, "leaves_parameters_unused", False):
            self._ddp_kwargs.setdefault("find_unused_parameters", True)
        return super()._setup_model(model)

    def _register_ddp_hooks(self) -> None:
        # Lightning asserts a DistributedDataParallel wrapper here on CUDA; a bare module has no
        # gradients to communicate, hence no hooks to register.
        if isinstance(self.model, DistributedDataParallel):
            super()._register_ddp_hooks()


StrategyRegistry.register("codebook_ddp", CodebookDDPStrategy, description="DDP fitted to codebook training (no wrapper without trainable parameters, unused stages allowed)")
