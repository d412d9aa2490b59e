"""``--compile``: the networks are compiled in place, their weights and names untouched, their outputs
those of the eager modules. On the CPU the graph capture runs with the eager backend (the wiring);
Inductor's code generation on the CPU, and on CUDA in tests/test_gpu.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import infer
from recon.audio import MelFrontEnd
from recon.compile import compile_networks, networks
from recon.inputs import InferenceFiles, collate_files
from recon.predict import VariantRunner
from recon.variants import VARIANTS, Models, VariantSettings
from tests.conftest import write_tone


@pytest.fixture()
def fresh_models(tiny_backbone):
    backbone = copy.deepcopy(tiny_backbone)
    return Models(backbone, MelFrontEnd(backbone.spec))


def run_vae_mode(models, folder, compile_mode, backend="inductor"):
    runner = VariantRunner(models, [VARIANTS["vae_mode"]], VariantSettings(), segment_batch=2,
                           compile_mode=compile_mode, compile_backend=backend)
    runner.setup("predict")
    files = InferenceFiles([folder])
    results = runner.predict_step(collate_files([files[i] for i in range(len(files))]), 0)
    return [r.variants[0].wav for r in results]


def test_off_compiles_nothing_and_unknown_modes_are_refused(fresh_models):
    assert compile_networks(fresh_models, "off") == []
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in networks(fresh_models).values())
    with pytest.raises(ValueError, match="not one of off, default"):
        compile_networks(fresh_models, "fastest")
    with pytest.raises(SystemExit):
        infer.parse_args(["--input", "x", "--compile", "fastest"])


def test_compiled_networks_keep_their_weights_and_outputs(fresh_models, tmp_path):
    write_tone(tmp_path / "a.wav", 1.0, freq=220)
    write_tone(tmp_path / "b.wav", 12.0, freq=440)  # a full segment and a tail: two shapes
    keys = list(fresh_models.backbone.state_dict())
    eager = run_vae_mode(fresh_models, tmp_path, "off")
    torch._dynamo.reset()
    compiled = run_vae_mode(fresh_models, tmp_path, "default", backend="eager")
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in networks(fresh_models).values())
    assert list(fresh_models.backbone.state_dict()) == keys
    for a, b in zip(eager, compiled):
        np.testing.assert_array_equal(a, b)
