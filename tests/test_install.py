"""The installed dependency set works together: every runtime requirement imports, and the pairs that
must match (torch and torchaudio are built against one exact release) do."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re

import pytest
import torch

# Distribution name -> module it provides, for every runtime requirement in pyproject.toml.
MODULES = {
    "torch": "torch",
    "torchaudio": "torchaudio",
    "lightning": "lightning",
    "jsonargparse": "jsonargparse",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "librosa": "librosa",
    "soundfile": "soundfile",
    "wandb": "wandb",
    "einops": "einops",
    "torchmetrics": "torchmetrics",
    "constriction": "constriction",
    "pesq": "pesq",
    "pystoi": "pystoi",
    "visqol-python": "visqol",
    "pillow": "PIL",
    "numpy": "numpy",
    "tqdm": "tqdm",
}


def runtime_requirements() -> list[str]:
    requirements = metadata.requires("recon") or []
    names = [re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements if "extra ==" not in r]
    assert names, "recon is not installed (pip install -e .)"
    return names


def test_every_runtime_requirement_imports():
    names = runtime_requirements()
    assert sorted(set(names) - set(MODULES)) == [], "a new requirement needs its module name here"
    for name in names:
        importlib.import_module(MODULES[name])


def test_torchaudio_matches_torch_and_its_kernels_load():
    import torchaudio
    import torchaudio.functional as AF

    release = lambda version: version.split("+")[0]  # noqa: E731
    assert release(torchaudio.__version__) == release(torch.__version__)
    # A mismatched pair imports but fails on the first native call (undefined symbol).
    y = AF.lfilter(torch.zeros(1, 8), torch.tensor([1.0, -0.5]), torch.tensor([1.0, 0.0]))
    assert y.shape == (1, 8)


@pytest.mark.parametrize("name", ["torch", "torchaudio"])
def test_the_pinned_pair_is_what_is_installed(name):
    pinned = [r for r in metadata.requires("recon") if re.match(rf"{name}\s*==", r)]
    assert len(pinned) == 1, f"{name} must be pinned exactly"
    assert metadata.version(name).split("+")[0] == pinned[0].split("==")[1].strip()
