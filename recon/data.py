"""Audio folders as datasets of fixed-length segments, and the Lightning DataModule over them."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .audio import AudioLoadError, AudioSpec, audio_duration, load_waveform
from . import distributed
from .cache import LatentCache, LatentDataset, backbone_fingerprint
from .inputs import AUDIO_EXTENSIONS, find_audio_files

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Segment:
    path: Path
    relpath: str
    index: int
    offset: float


@dataclass(frozen=True)
class Rejected:
    path: Path
    reason: str


class AudioFolder(Dataset):
    """Every ``spec.duration`` segment of every audio file under ``root``.

    A file of duration d gives ``ceil(d / spec.duration)`` segments, the last zero-padded, but a
    trailing piece shorter than ``min_duration`` is dropped (unless it is the whole file). Files
    shorter than ``min_duration`` or unreadable are listed in :attr:`rejected` with the reason.
    Items: ``{"wav": [samples], "index": int, "path": str, "segment": int}``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        spec: AudioSpec = AudioSpec(),
        *,
        files: list[Path] | None = None,
        min_duration: float = 1.0,
        max_segments_per_file: int | None = None,
    ):
        if root is None and files is None:
            raise ValueError("give a root folder, a list of files, or both (root then names files relatively)")
        self.root = Path(root) if root is not None else None
        self.spec = spec
        self.min_duration = min_duration
        self.segments: list[Segment] = []
        self.rejected: list[Rejected] = []
        paths = find_audio_files(root) if files is None else list(files)
        for path in paths:
            self._add_file(path, max_segments_per_file)
        for item in self.rejected:
            log.warning("skipping %s: %s", item.path, item.reason)

    def _relpath(self, path: Path) -> str:
        if self.root is not None and self.root.is_dir():
            return path.relative_to(self.root).as_posix()
        return path.name

    def _add_file(self, path: Path, max_segments: int | None) -> None:
        try:
            duration = audio_duration(path)
        except AudioLoadError as err:
            self.rejected.append(Rejected(path, err.reason))
            return
        if duration < self.min_duration:
            self.rejected.append(Rejected(path, f"too short: {duration:.3f} s < min_duration {self.min_duration} s"))
            return
        seg = self.spec.duration
        count = max(1, math.ceil(duration / seg))
        if count > 1 and duration - (count - 1) * seg < self.min_duration:
            count -= 1
        if max_segments is not None:
            count = min(count, max_segments)
        rel = self._relpath(path)
        self.segments.extend(Segment(path, rel, i, i * seg) for i in range(count))

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> dict:
        seg = self.segments[index]
        wav = load_waveform(seg.path, self.spec, offset=seg.offset)[0]
        return {"wav": wav, "index": index, "path": seg.relpath, "segment": seg.index}


def split_files(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Split by file (never by segment, so no file leaks across), deterministic in ``seed``."""
    if not files:
        return [], []
    shuffled = list(files)
    random.Random(seed).shuffle(shuffled)
    n_val = int(round(len(files) * val_fraction))
    if val_fraction > 0 and len(files) > 1:
        n_val = min(max(n_val, 1), len(files) - 1)
    val = set(shuffled[:n_val])
    return [f for f in files if f not in val], [f for f in files if f in val]


class ResumableSampler(Sampler[int]):
    """The training order as a pure function of (seed, batches taken), sharded over DDP ranks.

    Epoch ``e`` visits ``randperm(size, seed + e)``; each rank takes every ``world``-th index of it,
    padded by wrapping so all ranks run the same number of batches (uneven shares would hang DDP
    training). The sampler keeps its own epoch count, one per pass, instead of Lightning's epoch
    number: a checkpoint written when ``max_steps`` stops training mid-epoch counts that epoch as
    finished in Lightning's loop state, while the data stream must go on where it stopped.

    ``start_batches`` places the stream after that many batches of this rank, so a resumed run (or a
    reloaded dataloader) sees exactly the batches an uninterrupted run would have. ``epoch_length``
    gives the batches Lightning takes per epoch (fewer than a full pass under ``limit_train_batches``);
    it is asked at the first pass, once Lightning knows it.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, batch_size: int = 1,
                 start_batches: int = 0, epoch_length: Callable[[], int | None] | None = None):
        self.size, self.seed, self.shuffle, self.batch_size = size, seed, shuffle, batch_size
        self.epoch = 0
        self._skip = 0
        self._start: int | None = start_batches
        self._epoch_length = epoch_length

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        return distributed.rank(), distributed.world_size()

    def _place(self, batches: int) -> None:
        full_pass = math.ceil(len(self) / self.batch_size)
        per_epoch = min(self._epoch_length() or full_pass, full_pass) if self._epoch_length else full_pass
        self.epoch, within = divmod(batches, max(per_epoch, 1))
        self._skip = within * self.batch_size

    def _order(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        rank, world = self._rank_world()
        per_rank = math.ceil(self.size / world)
        order = (order * math.ceil(per_rank * world / max(self.size, 1)))[: per_rank * world]
        return order[rank::world]

    def __iter__(self):
        # One call per pass over the data: the rest of the current epoch, then the next epoch.
        if self._start is not None:
            self._place(self._start)
            self._start = None
        order = self._order()[self._skip :]
        self._skip = 0
        self.epoch += 1
        return iter(order)

    def __len__(self) -> int:
        return math.ceil(self.size / self._rank_world()[1])


class AudioDataModule(L.LightningDataModule):
    """Train/validation segments of one audio folder, split by file.

    With ``cache_dir`` set, a trainer that owns the frozen encoder calls :meth:`attach_latent_cache`
    and the loaders then yield cached posteriors (``mean``, ``std``) instead of waveforms.
    Training batches come from a :class:`ResumableSampler` placed after the batches Lightning's
    restored loop state says were taken, so ``--ckpt_path`` resumes mid-epoch exactly.
    Lightning must not replace that sampler: train with ``use_distributed_sampler: false``.

    Args:
        root: folder of audio files, searched recursively.
        batch_size: 10.24 s segments per training step (per device).
        val_fraction: share of the files held out for validation (split by file, seeded).
        num_workers: data loading workers per device.
        min_duration: seconds; shorter files are skipped and shorter trailing pieces of longer files dropped.
        max_segments_per_file: at most this many segments of each file (None: all of them).
        seed: seed of the train/validation split and of the order of training batches.
        cache_dir: folder of the latent cache (None: encode every batch with the frozen VAE).
        spec: audio parameters of the backbone; must match ``model.spec``.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 4,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        min_duration: float = 1.0,
        max_segments_per_file: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        spec: AudioSpec = AudioSpec(),
    ):
        super().__init__()
        self.cache_dir = cache_dir
        self.latents: tuple[Dataset, Dataset] | None = None
        self.root = root
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.min_duration = min_duration
        self.max_segments_per_file = max_segments_per_file
        self.seed = seed
        self.spec = spec
        self.train_set: AudioFolder | None = None
        self.val_set: AudioFolder | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files = find_audio_files(self.root)
        if not files:
            raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {self.root}")
        train_files, val_files = split_files(files, self.val_fraction, self.seed)
        kwargs = dict(spec=self.spec, min_duration=self.min_duration, max_segments_per_file=self.max_segments_per_file)
        self.train_set = AudioFolder(self.root, files=train_files, **kwargs)
        self.val_set = AudioFolder(self.root, files=val_files, **kwargs)
        if len(self.train_set) == 0:
            raise ValueError(f"no usable training audio under {self.root}: {[(str(r.path), r.reason) for r in self.train_set.rejected]}")

    def attach_latent_cache(self, backbone) -> None:
        """Encode every segment not yet cached (each DDP rank its share), then serve latents from the cache."""
        self.setup("fit")
        cache = LatentCache(self.cache_dir, backbone_fingerprint(backbone))
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        problem = None
        try:
            for dataset in (self.train_set, self.val_set):
                # Each rank encodes the missing segments of its share; entries are written atomically.
                cache.build(dataset, backbone, batch_size=self.batch_size, shard=(rank, world))
        except Exception as err:  # raised below on every rank together, never only on this one
            log.error("encoding the latent cache failed", exc_info=err)
            problem = f"rank {rank} failed to encode its share ({type(err).__name__}: {err})"
        if trainer is not None:
            trainer.strategy.barrier("latent-cache")
        if problem is None:
            try:
                missing = [(d, i) for d in (self.train_set, self.val_set) for i in cache.missing(d)]
            except OSError as err:
                missing, problem = [], f"rank {rank} cannot read the cache or the audio ({err})"
            if missing:
                named = ", ".join(f"{d.segments[i].relpath}#{d.segments[i].index}" for d, i in missing[:5])
                problem = f"rank {rank} cannot see {len(missing)} segment(s) ({named}{', ...' if len(missing) > 5 else ''})"
        complete = trainer.strategy.reduce_boolean_decision(problem is None, all=True) if trainer is not None else problem is None
        if not complete:
            # Every rank stops here together; a rank that sees everything names no segment.
            raise RuntimeError(
                f"the latent cache {cache.dir} is incomplete after every rank encoded its share"
                + (f": {problem}" if problem else "")
                + "; data.cache_dir must be on a file system shared by all nodes"
            )
        self.latents = (LatentDataset(self.train_set, cache), LatentDataset(self.val_set, cache))

    def _batches_taken(self) -> int:
        """Training batches this rank has taken so far: Lightning's count, restored with its loops
        from a checkpoint before any dataloader is built (0 outside a fit)."""
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.total.ready if trainer is not None else 0

    def _epoch_length(self) -> int | None:
        batches = self.trainer.num_training_batches if self.trainer is not None else None
        return int(batches) if batches is not None and math.isfinite(batches) and batches > 0 else None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        sampler = ResumableSampler(
            len(dataset), seed=self.seed, shuffle=shuffle, batch_size=self.batch_size,
            start_batches=self._batches_taken() if shuffle else 0, epoch_length=self._epoch_length,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.latents[0] if self.latents else self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.latents[1] if self.latents else self.val_set, shuffle=False)
