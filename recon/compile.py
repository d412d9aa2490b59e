"""Optional ``torch.compile`` of the frozen networks (``infer.py --compile``).

Off by default: compiling costs start-up time (seconds to minutes per network and input shape)
that pays back only on long runs, and what it gains depends on the device. ``reduce-overhead``
also captures CUDA graphs, which remove the kernel-launch cost that dominates small batches (the
diffusion UNet at batch 1). Modules are compiled in place (``nn.Module.compile``), so parameter
names, state dicts and checkpoints do not change. The front-end, quantizer, filters and metrics
are never compiled: they are the float32 islands whose results must not move.
"""

from __future__ import annotations

from torch import nn

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def networks(models) -> dict[str, nn.Module]:
    """The modules that carry the compute: VAE encoder and decoder, vocoder, and the UNet if loaded."""
    found = {"vae.encoder": models.backbone.vae.encoder, "vae.decoder": models.backbone.vae.decoder, "vocoder": models.backbone.vocoder}
    if models.diffusion is not None:
        found["unet"] = models.diffusion.unet
    return found


def compile_networks(models, mode: str, backend: str = "inductor") -> list[str]:
    """Compile the networks of ``models`` in place; returns their names ([] for ``off``).

    Shapes vary (a file's last segment is shorter, the last batch smaller): each new shape compiles
    once, then torch.compile treats the varying sizes as dynamic.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return []
    options = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
    found = networks(models)
    for module in found.values():
        module.compile(backend=backend, **options)
    return list(found)
