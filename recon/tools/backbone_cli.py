"""``python -m recon.backbone``: save a random backbone (``make``), describe one (``info``), or train the
small stand-in (``train-small``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..backbone import HUB_ID, RANDOM_CONFIGS, FrozenAudioLDM2, count_parameters, make_backbone_folder
from .backbone_training import STAGES, SmallRecipe, train_small
from .gan_training import TrainingInterrupted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recon.backbone", description="The frozen AudioLDM2 VAE + HiFi-GAN vocoder, and offline random-weight stand-ins."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="save a random-weight backbone in the cvssp/audioldm2 folder layout")
    make.add_argument("--size", choices=sorted(RANDOM_CONFIGS), default="tiny")
    make.add_argument("--out", required=True, help="folder to create (vae/ and vocoder/ inside)")
    make.add_argument("--seed", type=int, default=0)
    small = sub.add_parser(
        "train-small",
        help="train the small stand-in backbone (VAE + vocoder, about 40 minutes on 2 idle CPU cores) and save it in the hub layout",
        description="Train an AudioLDM2-shaped VAE and HiFi-GAN at reduced widths on the audio under --data "
        "(e.g. made by `python -m recon.tools.corpus --out DIR`) and save them under --out (vae/, vocoder/, recon_backbone.json).",
    )
    small.add_argument("--data", required=True, help="folder of training audio (searched recursively)")
    small.add_argument("--out", required=True, help="folder to create (vae/ and vocoder/ inside)")
    small.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    small.add_argument("--vae-steps", type=int, default=SmallRecipe.vae_steps, help="VAE optimiser steps (default: %(default)s)")
    small.add_argument("--vocoder-steps", type=int, default=SmallRecipe.vocoder_steps, help="vocoder optimiser steps (default: %(default)s)")
    small.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the crops (default: %(default)s)")
    small.add_argument("--init", help="start from this saved backbone folder instead of random weights")
    small.add_argument("--stages", default="vae,vocoder", help="what trains, in order: vae, vocoder, gan, comma-separated (default: %(default)s); "
                       "'--init DIR --stages vocoder' continues DIR's vocoder and keeps its VAE; "
                       "'--init DIR --stages gan' continues it adversarially (multi-period + multi-resolution STFT discriminators)")
    small.add_argument("--gan-steps", type=int, default=SmallRecipe.gan_steps,
                       help="total steps of the adversarial round, counting those of resumed sessions (default: %(default)s)")
    small.add_argument("--checkpoint-every", type=int, default=SmallRecipe.checkpoint_every,
                       help="steps between the round's saved states in --out/gan_state.pt, also written at the end and on "
                       "SIGTERM/SIGINT: what a kill -9 can lose at most (default: %(default)s)")
    small.add_argument("--resume", action="store_true", help="continue the adversarial round saved in --out/gan_state.pt "
                       "(same --data, --init and --seed; --gan-steps may grow)")
    info = sub.add_parser("info", help="load a backbone source and print its shapes and parameter counts")
    info.add_argument("source", nargs="?", default=HUB_ID)
    args = parser.parse_args(argv)
    if args.command == "train-small":
        recipe = SmallRecipe(vae_steps=args.vae_steps, vocoder_steps=args.vocoder_steps, gan_steps=args.gan_steps,
                             checkpoint_every=args.checkpoint_every, seed=args.seed)
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        if not stages or set(stages) - set(STAGES):
            parser.error(f"--stages takes vae, vocoder, gan or several, not {args.stages!r}")
        stages = tuple(s for s in STAGES if s in stages)
        if args.resume and stages != ("gan",):
            parser.error("--resume continues the adversarial round only: use it with --stages gan")
        if args.checkpoint_every < 1:
            parser.error("--checkpoint-every must be at least 1")
        try:
            out = train_small(args.data, args.out, recipe, args.device, init=args.init, stages=stages, resume=args.resume)
        except TrainingInterrupted as stopped:
            print(stopped, file=sys.stderr)
            sys.exit(128 + stopped.signum)
        except (FileExistsError, FileNotFoundError, ValueError) as error:
            parser.exit(1, f"train-small: {error}\n")
        print(f"wrote the trained small backbone to {out}")
    elif args.command == "make":
        out = make_backbone_folder(args.size, args.out, args.seed)
        print(f"wrote random '{args.size}' backbone (seed {args.seed}) to {out}")
    else:
        backbone = FrozenAudioLDM2.from_source(args.source)
        print(
            json.dumps(
                {
                    **backbone.signature(),
                    "latent_shape": backbone.latent_shape(),
                    "vae_parameters": count_parameters(backbone.vae),
                    "vocoder_parameters": count_parameters(backbone.vocoder),
                },
                indent=2,
            )
        )

