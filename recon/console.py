"""What recon's command lines print: their own messages and the warnings that matter.

By default ``infer.py``, ``train.py`` and ``recon`` leave out the libraries' chatter: Lightning's
banners ("GPU available: ...", "TPU available: ..."), its "💡 Tip" adverts and "Seed set to" lines,
deprecation notices that libraries raise about each other, and the Lightning warnings that recon's
set-up triggers on purpose (a frozen backbone in eval mode, no optimiser for an EMA codebook).
``--verbose`` brings all of it back. Warnings about the user's data, settings or results (recon's
own, Lightning's about the run) are shown either way.
"""

from __future__ import annotations

import logging
import os
import warnings

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Lightning gives these loggers their own level (INFO) and handler, so the root level does not reach them.
LIBRARY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_utilities")
# Warnings recon's own set-up causes by design; each says something recon explains or handles itself.
EXPECTED_WARNINGS = (
    # The frozen VAE and vocoder stay in eval mode while the codebook trains.
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # An EMA codebook has nothing for an optimiser; recon.lit says so in one line.
    r"`LightningModule.configure_optimizers` returned `None`",
    # Lightning counts logging steps over the whole run, not per epoch, so short epochs lose no logs.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # An EMA codebook steps a placeholder optimiser by hand; its state is complete after the step.
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
)


def configure_output(verbose: bool = False) -> None:
    """Set what a command line prints (process-wide: call it from an entry point, not a library)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("recon").setLevel(logging.INFO)  # recon's own progress lines, either way
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    model_loading_chatter(shown=verbose)
    if verbose:
        return
    # W&B's banners and run history; it still says where an offline run is saved.
    os.environ.setdefault("WANDB_QUIET", "true")
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # Deprecations between libraries (torch's pytree under Lightning, ...): nothing a user can act on.
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"^(?!recon\b)")


def model_loading_chatter(shown: bool) -> None:
    """diffusers' and transformers' loading chatter (accelerate hints, weight-loading bars): their
    default warning level and bars when ``shown``, errors only otherwise."""
    import diffusers
    import transformers

    for library in (diffusers.utils.logging, transformers.utils.logging):
        if shown:
            library.set_verbosity_warning()
            library.enable_progress_bar()
        else:
            library.set_verbosity_error()
            library.disable_progress_bar()
