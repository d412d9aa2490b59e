"""Which Lightning precisions recon runs under, and the fp32 islands inside them.

recon runs its frozen networks (VAE, vocoder, UNet) under autocast and keeps everything whose
result must not depend on the precision in float32: the log-mel front-end, the quantizer, the
metrics, the waveform filters and Griffin-Lim (torchaudio's ``lfilter`` and ``griffinlim`` refuse
bfloat16 on CPU and CUDA alike). ``*-true`` precisions cast every module, the quantizer's codebook
and the mel filterbank included, so they are refused up front instead of failing mid-run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

SUPPORTED_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
# Lightning's spellings of the same settings.
ALIASES = {"32": "32-true", 32: "32-true", "bf16": "bf16-mixed", "16": "16-mixed", 16: "16-mixed"}


class UnsupportedPrecision(ValueError):
    pass


def check_precision(precision: str | int | None) -> str:
    """The canonical name of a supported precision; one-line error for anything else."""
    if precision is None:
        return "32-true"
    name = ALIASES.get(precision, precision)
    if name not in SUPPORTED_PRECISIONS:
        raise UnsupportedPrecision(
            f"precision {precision!r} is not supported: use one of {', '.join(SUPPORTED_PRECISIONS)} "
            "(the quantizer, front-end, filters and metrics must stay float32, which *-true precisions cast away)"
        )
    return name


@contextmanager
def fp32_island(device: torch.device | str) -> Iterator[None]:
    """Disable autocast on ``device`` for the enclosed code; inputs still need an explicit ``.float()``."""
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, enabled=False):
        yield
