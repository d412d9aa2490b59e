"""The frozen backbone: the same from_pretrained path for hub ids, local folders and random stand-ins."""

from __future__ import annotations

import json

import pytest
import torch

from recon.backbone import (
    HUB_ID,
    RANDOM_CONFIGS,
    BackboneNotFoundError,
    FrozenAudioLDM2,
    build_random,
    count_parameters,
)
from recon.tools.backbone_cli import main
from recon.audio import MelFrontEnd


def test_tiny_round_trip_shapes(tiny_backbone):
    wav = torch.randn(2, 163840) * 0.1
    logmel = MelFrontEnd()(wav)
    posterior = tiny_backbone.encode(logmel)
    assert posterior.mean.shape == posterior.std.shape == (2, 8, 256, 16)
    assert (posterior.std > 0).all()
    mel_hat = tiny_backbone.decode(posterior.mean)
    assert mel_hat.shape == (2, 1, 1024, 64)
    out = tiny_backbone.vocode(mel_hat, num_samples=163840)
    assert out.shape == (2, 163840) and torch.isfinite(out).all()
    assert tiny_backbone.vocode(mel_hat[:, :, :100], num_samples=1000).shape == (2, 1000)


def test_backbone_is_frozen_and_stays_in_eval(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.training and not tiny_backbone.vae.training and not tiny_backbone.vocoder.training


def test_gradients_flow_through_decoder_to_a_latent(tiny_backbone):
    z = torch.randn(1, 8, 256, 16, requires_grad=True)
    tiny_backbone.decode(z).mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_saved_folder_loads_through_the_same_path_with_identical_weights(tiny_backbone_dir, tiny_backbone):
    assert (tiny_backbone_dir / "vae" / "config.json").is_file()
    assert (tiny_backbone_dir / "vocoder" / "config.json").is_file()
    in_memory = FrozenAudioLDM2.from_source("random:tiny")
    for a, b in zip(in_memory.state_dict().values(), tiny_backbone.state_dict().values()):
        assert torch.equal(a, b)
    assert tiny_backbone.source == str(tiny_backbone_dir)


def test_random_builders_are_deterministic_in_seed():
    a, _ = build_random("tiny", seed=1)
    b, _ = build_random("tiny", seed=1)
    c, _ = build_random("tiny", seed=2)
    first = lambda m: next(m.parameters())  # noqa: E731
    assert torch.equal(first(a), first(b)) and not torch.equal(first(a), first(c))


def test_dtype_is_settable(tiny_backbone_dir):
    backbone = FrozenAudioLDM2.from_source(str(tiny_backbone_dir), dtype=torch.bfloat16)
    assert backbone.dtype == torch.bfloat16
    assert backbone.decode(torch.randn(1, 8, 256, 16)).dtype == torch.bfloat16


def test_full_config_is_audioldm2_architecture():
    """Parameter counts of AudioLDM2's VAE (55.4 M) and vocoder (55.3 M), built on the meta device."""
    vae_kwargs, vocoder_kwargs = RANDOM_CONFIGS["full"]
    assert vae_kwargs["block_out_channels"] == [128, 256, 512] and vae_kwargs["layers_per_block"] == 2
    assert vocoder_kwargs["upsample_rates"] == [5, 4, 2, 2, 2] and vocoder_kwargs["upsample_initial_channel"] == 1024
    with torch.device("meta"):
        vae, vocoder = build_random("full")
    assert count_parameters(vae) == pytest.approx(55.4e6, rel=2e-3)
    assert count_parameters(vocoder) == pytest.approx(55.3e6, rel=2e-3)
    backbone = FrozenAudioLDM2(vae, vocoder, "random:full")
    assert backbone.latent_shape() == (8, 256, 16)
    assert backbone.scaling_factor == pytest.approx(0.4110932946)
    with torch.device("meta"):
        assert backbone.encode(torch.empty(1, 1, 1024, 64)).mean.shape == (1, 8, 256, 16)


def test_missing_local_folder_says_what_and_how(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="python -m recon.backbone make") as info:
        FrozenAudioLDM2.from_source(str(tmp_path / "nowhere"))
    assert "nowhere" in str(info.value)


def test_incomplete_folder_names_the_missing_files(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(BackboneNotFoundError, match="vae/config.json, vocoder/config.json"):
        FrozenAudioLDM2.from_source(str(tmp_path))


def test_unreachable_hub_is_an_error_not_a_fallback():
    with pytest.raises(BackboneNotFoundError, match=HUB_ID):
        FrozenAudioLDM2.from_source(HUB_ID, local_files_only=True)


def test_unknown_random_size():
    with pytest.raises(ValueError, match="unknown random backbone size"):
        FrozenAudioLDM2.from_source("random:huge")


def test_make_command_writes_hub_layout(tmp_path, capsys):
    main(["make", "--size", "tiny", "--out", str(tmp_path / "bb"), "--seed", "3"])
    assert json.loads((tmp_path / "bb" / "recon_backbone.json").read_text()) == {"random_size": "tiny", "seed": 3}
    main(["info", str(tmp_path / "bb")])
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["latent_shape"] == [8, 256, 16]
