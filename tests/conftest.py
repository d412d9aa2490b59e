"""Shared fixtures: offline tiny backbones in the hub layout, synthetic audio files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

# Nothing in the tests may reach a model hub or a W&B server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
FRONTEND_REFERENCE = DATA / "audioldm2_frontend"


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny tensors: intra-op threads gain nothing there, and on a busy machine two
    OpenMP threads wait on each other at every op (measured 10x slower). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    from recon.backbone import make_backbone_folder

    return make_backbone_folder("tiny", tmp_path_factory.mktemp("backbone") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_backbone_dir):
    from recon.backbone import FrozenAudioLDM2

    return FrozenAudioLDM2.from_source(str(tiny_backbone_dir))


@pytest.fixture(scope="module")
def models(tiny_backbone):
    """The tiny backbone, its front-end and a random 64-code quantizer, as the variants take them."""
    from recon.audio import MelFrontEnd
    from recon.codebook import CodebookConfig, VectorQuantizer
    from recon.variants import Models

    torch.manual_seed(0)
    quantizer = VectorQuantizer(CodebookConfig(num_codes=64, kmeans_init=False)).eval()
    return Models(tiny_backbone, MelFrontEnd(tiny_backbone.spec), quantizer)


@pytest.fixture(scope="module")
def batch(models):
    """Two 10.24 s segments (a 440 Hz tone, noise), encoded once: a VariantInput."""
    from recon.variants import VariantInput

    t = torch.arange(163840) / 16000
    wav = torch.stack([0.4 * torch.sin(2 * math.pi * 440 * t), 0.1 * torch.randn(163840, generator=torch.Generator().manual_seed(0))])
    logmel = models.frontend(wav)
    posterior = models.backbone.encode(logmel)
    return VariantInput(wav, logmel, posterior.mean, posterior.std, ["a.wav#0", "b.wav#0"])


def write_tone(path: Path, seconds: float, sr: int = 16000, freq: float = 440.0, channels: int = 1, seed: int = 0) -> Path:
    """A tone plus a little seeded noise, written with soundfile."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    data = np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1) if channels > 1 else mono
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sr)
    return path


def child_env() -> dict:
    """The environment of an infer.py run in a child process: offline, no launcher's rank variables,
    and one thread (the thread count changes float sums in the last bits, so a test that compares
    a child's outputs with this process's runs both on one thread)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "WANDB_SERVICE")}
    clean.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return clean
