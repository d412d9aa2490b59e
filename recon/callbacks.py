"""Lightning callbacks of recon's training runs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L


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
