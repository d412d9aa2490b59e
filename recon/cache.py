"""On-disk cache of VAE posteriors, so a frozen encoder runs once per segment, not once per epoch.

Layout: ``<root>/<backbone fingerprint>/<file content hash>_<segment>.npy``, each a float32 array
``[2, 8, T/4, F/4]`` (posterior mean and std): 2 x 8 x 256 x 16 x 4 bytes = 256 KiB per 10.24 s,
i.e. 90 MiB per hour of audio. Entries are written one by one (atomically), so an interrupted build
keeps what it finished; they are read memory-mapped, so training memory does not grow with the
dataset. A changed file has another content hash and a changed backbone another fingerprint:
stale entries are simply never read again. Checking that a cache is complete reads no audio when
the files' sizes and modification times are those recorded with their hashes (``digests.json``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .audio import MelFrontEnd
from .backbone import FrozenAudioLDM2
from .codec import tensors_fingerprint
from .files import write_npy, write_text
from .windows import encode_windows


class SegmentDataset(Protocol):
    """What the cache needs of a dataset of segments (a :class:`recon.data.AudioFolder`): each
    item's file and segment number in ``segments[i].path`` / ``.index``, and items
    ``{"wav": [samples], "index": i}``."""

    segments: list
    root: Path | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:20]


def backbone_fingerprint(backbone: FrozenAudioLDM2) -> str:
    """Hash of the encoder's weights, its architecture and the front-end spec: what a latent depends on."""
    encoder = tensors_fingerprint((k, v) for k, v in backbone.vae.state_dict().items() if k.startswith(("encoder.", "quant_conv.")))
    described = {"signature": backbone.signature(), "spec": asdict(backbone.spec), "encoder": encoder}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


class LatentCache:
    """Entries are keyed by the content hash of their file. Hashing a corpus reads all of it, so the
    hashes are kept in ``<dir>/digests.json`` (``{absolute path: [size, mtime_ns, digest]}``): a file
    whose size and modification time are those recorded is not read again; any other is re-hashed."""

    INDEX = "digests.json"

    def __init__(self, root: str | Path, fingerprint: str):
        self.dir = Path(root) / fingerprint
        self._digests: dict[Path, str] = {}
        self._index = self._read_index()
        self._dirty = False

    def _read_index(self) -> dict[str, list]:
        try:
            return json.loads((self.dir / self.INDEX).read_text())
        except (OSError, ValueError):
            return {}  # none yet, or damaged: the files are hashed again

    def save_index(self) -> None:
        """Record the hashes computed since the last save, with those other ranks recorded meanwhile."""
        if not self._dirty:
            return
        merged = {**self._read_index(), **self._index}
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / self.INDEX, json.dumps(merged))
        self._dirty = False

    def digest(self, path: Path) -> str:
        if path not in self._digests:
            stat = path.stat()
            key = str(path.resolve())
            known = self._index.get(key)
            if known is not None and known[:2] == [stat.st_size, stat.st_mtime_ns]:
                self._digests[path] = known[2]
            else:
                self._digests[path] = file_digest(path)
                self._index[key] = [stat.st_size, stat.st_mtime_ns, self._digests[path]]
                self._dirty = True
        return self._digests[path]

    def entry(self, dataset: SegmentDataset, index: int) -> Path:
        seg = dataset.segments[index]
        return self.dir / f"{self.digest(seg.path)}_{seg.index}.npy"

    def missing(self, dataset: SegmentDataset, indices: list[int] | None = None) -> list[int]:
        indices = range(len(dataset)) if indices is None else indices
        absent = [i for i in indices if not self.entry(dataset, i).is_file()]
        if self.dir.is_dir():
            self.save_index()
        return absent

    @torch.no_grad()
    def build(
        self, dataset: SegmentDataset, backbone: FrozenAudioLDM2, batch_size: int = 4, progress: bool = True, shard: tuple[int, int] = (0, 1)
    ) -> int:
        """Encode the segments not yet cached of this rank's share; returns how many.

        ``shard = (rank, world)``: the rank owns segments ``rank, rank + world, ...`` of the dataset,
        a split every rank computes alike whatever is already cached (each rank listing what is
        missing at a different moment and then splitting that list would drop segments).
        """
        rank, world = shard
        todo = self.missing(dataset, list(range(len(dataset)))[rank::world])
        if not todo:
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        device = next(backbone.parameters()).device
        frontend = MelFrontEnd(backbone.spec).to(device)
        loader = DataLoader(torch.utils.data.Subset(dataset, todo), batch_size=batch_size)
        for batch in tqdm(loader, desc="caching latents", unit="batch", disable=not progress):
            _, posterior = encode_windows(frontend, backbone, batch["wav"].to(device))
            stacked = torch.stack([posterior.mean, posterior.std], dim=1).float().cpu().numpy()
            for index, array in zip(batch["index"].tolist(), stacked):
                write_npy(self.entry(dataset, index), array)
        self.save_index()
        return len(todo)


class LatentDataset(Dataset):
    """Cached posteriors of a :class:`SegmentDataset`: items ``{"mean", "std", "index"}``, memory-mapped."""

    def __init__(self, dataset: SegmentDataset, cache: LatentCache):
        missing = cache.missing(dataset)
        if missing:
            raise FileNotFoundError(f"{len(missing)} segments of {dataset.root} are not in the latent cache {cache.dir}; build it first")
        self.paths = [cache.entry(dataset, i) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        array = np.load(self.paths[index], mmap_mode="r")
        return {"mean": torch.from_numpy(np.array(array[0])), "std": torch.from_numpy(np.array(array[1])), "index": index}
