"""Lightning callbacks of recon's training runs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is always where the latest run ended.

    Two differences, both about the end of a run:

    * the final step is always saved, whatever ``every_n_train_steps``: as a step checkpoint (the
      ``filename`` pattern, when ``save_top_k`` keeps any) and as ``last.ckpt`` (with ``save_last``).
      Lightning's own class saves nothing at the end once an interval checkpoint exists, so
      ``max_steps`` 1500 with an interval of 1000 left ``last.ckpt`` at step 1000;
    * ``last.ckpt`` is overwritten by the next run into the same folder instead of being joined by
      ``last-v1.ckpt``: "the last checkpoint" names one file. What an earlier run ended with stays
      in its step checkpoint, since the final step is saved there too.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # _should_skip_saving_checkpoint is also true when this very step was saved already.
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is None:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        # Lightning versions the name (last-v1.ckpt) when last.ckpt exists and is not this run's.
        versioned, self._enable_version_counter = self._enable_version_counter, False
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._enable_version_counter = versioned


class SaveInitialCodebook(L.Callback):
    """Write the codebook as initialised (k-means, before any training step) to ``path``.

    It is the baseline a trained codebook is measured against: same data, same k-means, no
    training. Runs once, at the start of a fresh fit; a resumed run keeps the file it has.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            trainer.save_checkpoint(self.path)
