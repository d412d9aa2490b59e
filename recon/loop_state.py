"""The loop state a training checkpoint stores, made to resume like an uninterrupted run."""

from __future__ import annotations

import lightning as L


def resumable_loop_state(trainer: L.Trainer, checkpoint: dict) -> None:
    """Make the loop state of a checkpoint written after training ended resume like an uninterrupted run.

    The last checkpoint (``save_last``, written in ``on_train_end``) comes after Lightning closed
    the epoch that ``max_steps`` ended. Resuming as saved goes wrong in both cases:
    stopped mid-epoch, the next epoch would start, one epoch ahead; stopped at an epoch's last
    batch, the next epoch would start with that epoch's batch count and end after one batch. So an
    epoch cut short is reopened (as a checkpoint written after that batch inside the epoch would
    record it), and an epoch finished at its last batch leaves a fresh batch count for the next.
    """
    if trainer is None or "loops" not in checkpoint:
        return
    batches = trainer.fit_loop.epoch_loop.batch_progress
    epochs = trainer.fit_loop.epoch_progress.current
    closed = epochs.ready == epochs.processed == epochs.completed
    if not closed or batches.current.ready == 0:
        return
    loops = checkpoint["loops"]["fit_loop"]
    if batches.is_last_batch:
        loops["epoch_loop.batch_progress"]["current"] = {k: 0 for k in loops["epoch_loop.batch_progress"]["current"]}
        loops["epoch_loop.batch_progress"]["is_last_batch"] = False
        return
    for counts in (loops["epoch_progress"]["total"], loops["epoch_progress"]["current"]):
        counts["processed"] -= 1
        counts["completed"] -= 1
