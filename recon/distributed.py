"""The process group as recon sees it: this process's rank, the world, and an object gather.

Everything here also works without a process group (one process: rank 0 of a world of 1), so the
same code runs on one device and on many.
"""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """A process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_to_all(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
