"""Train a recon codebook on your own audio.

    python train.py fit --config configs/tiny.yaml
    python train.py fit --config configs/trainer.yaml --config configs/backbone.yaml \
        --config configs/data.yaml --config configs/codebook_hard.yaml --data.root MY_AUDIO
    python train.py fit --config configs/tiny.yaml --ckpt_path checkpoints/tiny/last.ckpt --trainer.max_steps 120   # resume

A resumed run continues from the checkpoint's step up to --trainer.max_steps, so resuming a run
that finished needs a larger --trainer.max_steps. Every option has a --help entry
(`python train.py fit --help`); `python train.py --verbose fit ...` shows Lightning's own messages.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from recon.console import configure_output
from recon.data import AudioDataModule
from recon.lit import CodebookTrainer
from recon.progress import StepProgressBar

SUBCOMMANDS = tuple(LightningCLI.subcommands())


class TrainCLI(LightningCLI):
    """LightningCLI with recon's console: quiet by default, a step progress bar, a one-line result."""

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # On the main parser, before the subcommand: after it, validate and test have Trainer's own
        # --verbose. main() reads it before parsing; declared here for --help and validation.
        self.parser.add_argument("--verbose", action="store_true", help="also print Lightning's info messages and the warnings recon hides")

    def _section(self, config):
        """This subcommand's part of a parsed (or instantiated) configuration."""
        return config[self.subcommand] if self.subcommand else config

    def instantiate_trainer(self, **kwargs):
        trainer = self._section(self.config)["trainer"]
        callbacks = self._section(self.config_init)["trainer"]["callbacks"]
        callbacks = [] if callbacks is None else callbacks if isinstance(callbacks, list) else [callbacks]
        # Lightning's rich bar counts batches of the current epoch; ours counts steps of the run.
        wanted = trainer.get("enable_progress_bar") is not False and importlib.util.find_spec("rich") is not None
        if wanted and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        # Resuming a run that already reached max_steps trains nothing; say so instead of exiting quietly.
        ckpt_path, max_steps = self._section(self.config).get("ckpt_path"), self.trainer.max_steps
        if not ckpt_path or not Path(ckpt_path).is_file() or max_steps is None or max_steps < 0:
            return
        step = torch.load(ckpt_path, map_location="cpu", weights_only=True)["global_step"]
        if step >= max_steps:
            print(f"error: {ckpt_path} is at step {step} and --trainer.max_steps is {max_steps}: nothing left to train; "
                  f"pass a larger --trainer.max_steps (e.g. {2 * step}) to continue", file=sys.stderr)
            sys.exit(2)

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        saved = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback is not None else ""
        print(f"trained to step {trainer.global_step}" + (f"; last checkpoint: {saved}" if saved else ""))


def wants_verbose(args: list[str]) -> bool:
    """Whether ``--verbose`` comes before the subcommand (``train.py --verbose fit ...``)."""
    for arg in args:
        if arg in SUBCOMMANDS:
            return False
        if arg == "--verbose":
            return True
    return False


def main(args: list[str] | None = None) -> LightningCLI:
    # Before LightningCLI parses: it sets (and announces) the seed while parsing.
    configure_output(verbose=wants_verbose(sys.argv[1:] if args is None else list(args)))
    return TrainCLI(
        CodebookTrainer,
        AudioDataModule,
        seed_everything_default=0,
        # Lightning refuses to overwrite config.yaml in an existing run dir (#17168).
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
