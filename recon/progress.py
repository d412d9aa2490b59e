"""The training progress bar: optimiser steps of the run, not batches of the epoch."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme


class StepProgressBar(RichProgressBar):
    """Training progress in optimiser steps out of ``max_steps``; metrics to 4 significant digits.

    recon trains for a number of steps, and an epoch is whatever the data makes it (a few batches
    for a small folder), so Lightning's per-epoch bar ("Epoch 7/-2  1/3") tells a user little.
    This bar reads "Training 40/60 ... epoch: 14 train/loss: 0.001234" and continues from the
    checkpoint's step when a run resumes. Without ``max_steps`` it is Lightning's per-epoch bar.
    """

    def __init__(self, **kwargs):
        # Lightning's default ".3f" shows a codebook loss of 0.0004 as 0.000 for the whole run.
        super().__init__(theme=RichProgressBarTheme(metrics_format=".4g"), **kwargs)

    @staticmethod
    def _by_step(trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def _step_task(self, trainer) -> None:
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(trainer.max_steps, "Training")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._by_step(trainer):
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        self._step_task(trainer)
        self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._by_step(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_disabled or self.progress is None:
            return
        self._step_task(trainer)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's run id, not a measurement
        # Counted from 1 like the steps: "epoch: 20" once the 20th pass over the data is under way.
        return {"epoch": trainer.current_epoch + 1, **metrics} if self._by_step(trainer) else metrics
