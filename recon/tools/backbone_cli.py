"""``python -m recon.backbone``: save a random backbone (``make``), describe one (``info``), or train the
small stand-in (``train-small``)."""

from __future__ import annotations

import argparse
import json

from ..backbone import HUB_ID, RANDOM_CONFIGS, FrozenAudioLDM2, count_parameters, make_backbone_folder
from .backbone_training import SmallRecipe, train_small


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
    small.add_argument("--stages", default="vae,vocoder", help="what trains: vae, vocoder or both (default: %(default)s); "
                       "'--init DIR --stages vocoder' continues DIR's vocoder and keeps its VAE")
    info = sub.add_parser("info", help="load a backbone source and print its shapes and parameter counts")
    info.add_argument("source", nargs="?", default=HUB_ID)
    args = parser.parse_args(argv)
    if args.command == "train-small":
        recipe = SmallRecipe(vae_steps=args.vae_steps, vocoder_steps=args.vocoder_steps, seed=args.seed)
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        if not stages or set(stages) - {"vae", "vocoder"}:
            parser.error(f"--stages takes vae, vocoder or both, not {args.stages!r}")
        out = train_small(args.data, args.out, recipe, args.device, init=args.init, stages=stages)
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

