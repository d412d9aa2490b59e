"""Train a recon codebook on your own audio.

    python train.py fit --config configs/tiny.yaml
    python train.py fit --config configs/trainer.yaml --config configs/backbone.yaml \
        --config configs/data.yaml --config configs/codebook_hard.yaml --data.root MY_AUDIO
    python train.py fit --config configs/tiny.yaml --ckpt_path checkpoints/tiny/last.ckpt   # resume

Every option has a --help entry (`python train.py fit --help`).
"""

from lightning.pytorch.cli import LightningCLI

from recon.data import AudioDataModule
from recon.lit import CodebookTrainer


def main(args=None) -> LightningCLI:
    return LightningCLI(
        CodebookTrainer,
        AudioDataModule,
        seed_everything_default=0,
        # Lightning refuses to overwrite config.yaml in an existing run dir (#17168).
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
