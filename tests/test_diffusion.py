"""AudioLDM2 diffusion side on a tiny random pipeline saved in the hub layout and reloaded offline."""

from __future__ import annotations

import pytest
import torch

from recon.backbone import BackboneNotFoundError
from recon.ddcm import compress, decompress
from recon.diffusion import (
    AudioLDM2Denoiser,
    build_tiny_pipeline,
    load_diffusion_components,
    main,
    make_tiny_pipeline_folder,
    sdedit_refine,
    text_to_audio_latent,
)

PROMPT = "a hammer hitting a wooden surface"
LATENT = (1, 8, 256, 16)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    return make_tiny_pipeline_folder(tmp_path_factory.mktemp("diffusion") / "tiny", seed=0)


@pytest.fixture(scope="session")
def components(tiny_pipeline_dir):
    return load_diffusion_components(str(tiny_pipeline_dir), local_files_only=True)


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    return torch.randn(LATENT, generator=torch.Generator().manual_seed(0))


def test_folder_has_the_hub_layout_and_reloads_offline_with_the_same_weights(tiny_pipeline_dir, components):
    for name in ("unet", "scheduler", "vae", "vocoder", "text_encoder", "text_encoder_2", "projection_model",
                 "language_model", "tokenizer", "tokenizer_2", "feature_extractor"):
        assert (tiny_pipeline_dir / name).is_dir(), name
    assert (tiny_pipeline_dir / "model_index.json").is_file()
    assert type(components.pipe.language_model).__name__ == "GPT2LMHeadModel"
    assert type(components.scheduler).__name__ == "DDIMScheduler"
    in_memory = load_diffusion_components("random:tiny").pipe  # built explicitly, seed 0
    for name in ("unet", "vae", "vocoder", "text_encoder", "language_model"):
        a, b = getattr(in_memory, name).state_dict(), getattr(components.pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_components_are_frozen_and_in_eval(components):
    for name, module in components.pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not module.training, name
            assert not any(p.requires_grad for p in module.parameters()), name


def test_tiny_pipeline_is_deterministic_in_seed():
    first = lambda pipe: next(pipe.unet.parameters())  # noqa: E731
    assert torch.equal(first(build_tiny_pipeline(1)), first(build_tiny_pipeline(1)))
    assert not torch.equal(first(build_tiny_pipeline(1)), first(build_tiny_pipeline(2)))


def test_cli_make_writes_a_loadable_folder(tmp_path, capsys):
    main(["make", "--size", "tiny", "--out", str(tmp_path / "pipe"), "--seed", "3"])
    assert "tiny" in capsys.readouterr().out
    assert (tmp_path / "pipe" / "unet" / "config.json").is_file()


def test_missing_or_incomplete_sources_raise_backbone_not_found(tmp_path, tiny_pipeline_dir):
    with pytest.raises(BackboneNotFoundError, match="recon.diffusion make"):
        load_diffusion_components(str(tmp_path / "nowhere"), local_files_only=True)
    partial = tmp_path / "partial"
    (partial / "vae").mkdir(parents=True)
    (partial / "vae" / "config.json").write_text("{}")
    with pytest.raises(BackboneNotFoundError, match="unet/config.json"):
        load_diffusion_components(str(partial), local_files_only=True)
    with pytest.raises(BackboneNotFoundError, match="could not load"):
        load_diffusion_components("nobody/no-such-pipeline", local_files_only=True)
    with pytest.raises(ValueError, match="random:tiny"):
        load_diffusion_components("random:full")


def test_prompt_embeddings_are_computed_once_per_prompt(components):
    calls = []
    original = components.pipe.generate_language_model
    components.pipe.generate_language_model = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        first = components.prompt_embeddings("a fresh prompt", guidance_scale=3.5)
        assert components.prompt_embeddings("a fresh prompt", guidance_scale=3.5) is first
        assert len(calls) == 2  # cond and uncond, once
    finally:
        del components.pipe.generate_language_model
    assert first.guided and first.prompt_embeds.shape[0] == first.generated_prompt_embeds.shape[0] == 2
    assert not components.prompt_embeddings("a fresh prompt", guidance_scale=1.0).guided


def test_unet_called_by_hand_on_audioldm2_latents(components):
    embeddings = components.prompt_embeddings(PROMPT, guidance_scale=3.5)
    x = torch.randn(2, 8, 256, 16)
    with torch.no_grad():
        eps = components.unet(torch.cat([x, x]), 500, **embeddings.unet_kwargs(2)).sample
    assert eps.shape == (4, 8, 256, 16) and torch.isfinite(eps).all()
    denoiser = AudioLDM2Denoiser(components.unet, components.schedule, embeddings, guidance_scale=3.5)
    uncond, cond = eps.chunk(2)
    torch.testing.assert_close(denoiser.predict_eps(x, 500), uncond + 3.5 * (cond - uncond))


def test_text_to_audio_latent_is_the_pipeline_loop_and_deterministic(components):
    latent = text_to_audio_latent(components, PROMPT, steps=2, guidance_scale=3.5, seed=0, latent_shape=LATENT)
    assert latent.shape == LATENT
    reference = components.pipe(
        PROMPT, num_inference_steps=2, guidance_scale=3.5, audio_length_in_s=10.24, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).audios
    assert torch.equal(latent, reference)
    assert torch.equal(text_to_audio_latent(components, PROMPT, 2, 3.5, 0, LATENT), latent)
    assert not torch.equal(text_to_audio_latent(components, PROMPT, 2, 3.5, 1, LATENT), latent)


def test_sdedit_strength_zero_is_the_identity(components, latent):
    assert torch.equal(sdedit_refine(components, latent, 0.0, 4, 3.5, PROMPT, seed=0), latent)


def test_sdedit_is_deterministic_in_seed(components, latent):
    a = sdedit_refine(components, latent, 0.5, 4, 3.5, PROMPT, seed=0)
    assert a.shape == latent.shape and not torch.equal(a, latent)
    assert torch.equal(sdedit_refine(components, latent, 0.5, 4, 3.5, PROMPT, seed=0), a)
    assert not torch.equal(sdedit_refine(components, latent, 0.5, 4, 3.5, PROMPT, seed=1), a)


def test_sdedit_strength_one_starts_from_pure_noise(components, latent):
    refined = sdedit_refine(components, latent, 1.0, 2, 3.5, PROMPT, seed=5)
    assert torch.equal(refined, text_to_audio_latent(components, PROMPT, 2, 3.5, 5, LATENT))


def test_ddcm_through_the_audioldm2_denoiser_decodes_exactly(components, latent):
    denoiser = components.denoiser(PROMPT, guidance_scale=3.5)
    steps, K, seed = 3, 16, 11
    indices, reconstruction = compress(denoiser, latent, steps, K, seed)
    assert indices.shape == (1, 2) and reconstruction.shape == LATENT
    assert torch.equal(decompress(denoiser, indices, steps, K, seed, LATENT), reconstruction)


@pytest.mark.parametrize("name", ["codebook_sdedit", "ddcm_noise"])
def test_diffusion_variants_batch_segments_of_several_files_as_if_alone(name, components, tiny_backbone):
    """Segments of several files share one UNet batch; each segment's latent is what it gets alone
    (its noise is seeded per segment, DDCM's argmax is per item): equal up to batch-size rounding,
    and the DDCM indices identical."""
    from recon.audio import MelFrontEnd
    from recon.codebook import CodebookConfig, VectorQuantizer
    from recon.variants import VARIANTS, Models, VariantInput, VariantSettings

    torch.manual_seed(0)
    models = Models(tiny_backbone, MelFrontEnd(tiny_backbone.spec), VectorQuantizer(CodebookConfig(num_codes=64, kmeans_init=False)).eval(), components)
    wav = 0.1 * torch.randn(3, 163840, generator=torch.Generator().manual_seed(1))
    logmel = models.frontend(wav)
    posterior = tiny_backbone.encode(logmel)
    x = VariantInput(wav, logmel, posterior.mean, posterior.std, ["a.wav#0", "b.wav#0", "b.wav#1"])
    settings = VariantSettings(diffusion_steps=3, ddcm_steps=4, ddcm_k=16, refine_strength=0.6)
    with torch.no_grad():
        together = VARIANTS[name].fn(x, models, settings)
        alone = [VARIANTS[name].fn(x.select([i]), models, settings) for i in range(3)]
    if name == "ddcm_noise":
        assert torch.equal(together.codes, torch.cat([a.codes for a in alone]))
    # Batch-size rounding of the UNet, carried through the steps: measured up to 2e-5 here.
    torch.testing.assert_close(together.latent, torch.cat([a.latent for a in alone]), atol=1e-4, rtol=0)


def test_per_item_seeds_give_batch_independent_noise(components):
    """text2audio and SDEdit draw each item's noise from its own seed: an item's latent does not depend
    on the batch it is generated in."""
    shape = (2, *LATENT[1:])
    both = text_to_audio_latent(components, PROMPT, 2, 3.5, [11, 12], shape)
    for i, seed in enumerate([11, 12]):
        torch.testing.assert_close(both[i : i + 1], text_to_audio_latent(components, PROMPT, 2, 3.5, [seed], LATENT), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both[0], both[1])
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        text_to_audio_latent(components, PROMPT, 2, 3.5, [1, 2], (3, *LATENT[1:]))


def test_ddcm_input_is_an_old_name_of_codebook_sdedit_that_warns_once(caplog):
    """SDEdit refinement of the hard codes is not DDCM: the variant is codebook_sdedit; the old name
    still resolves to it (outputs carry the new name) and says so once per process."""
    import recon.variants as V

    V._warned_aliases.discard("ddcm_input")
    with caplog.at_level("WARNING", logger="recon.variants"):
        first = V.resolve("ddcm_input,vae_mode")
        again = V.resolve(["ddcm_input"])
    assert [v.name for v in first] == ["codebook_sdedit", "vae_mode"] and [v.name for v in again] == ["codebook_sdedit"]
    warnings = [r.getMessage() for r in caplog.records if "ddcm_input" in r.getMessage()]
    assert len(warnings) == 1 and "codebook_sdedit" in warnings[0] and "not DDCM" in warnings[0]
    assert "ddcm_input" not in V.VARIANTS and "ddcm_input" not in V.SWEEPS
    assert [v.name for v in V.sweep(first[:1], {"refine_strength": [0.0, 0.5]})] == ["codebook_sdedit@0", "codebook_sdedit@0.5"]


def test_full_size_unets_have_the_sizes_on_the_hub_cards():
    """cvssp/audioldm2 and -music: a 350M UNet; -large: 750M (hub cards, rounded). Built on the meta
    device: shapes only, no memory."""
    from recon.diffusion import unet_config
    from diffusers import AudioLDM2UNet2DConditionModel

    def millions(checkpoint):
        with torch.device("meta"):
            unet = AudioLDM2UNet2DConditionModel(**unet_config("full", checkpoint))
        return sum(p.numel() for p in unet.parameters()) / 1e6

    base, music, large = millions("audioldm2"), millions("audioldm2-music"), millions("audioldm2-large")
    assert base == music and 350 * 0.95 < base < 350 * 1.05
    assert 750 * 0.9 < large < 750 * 1.05


@pytest.mark.parametrize("checkpoint", ["audioldm2-music", "audioldm2-large"])
def test_music_and_large_snapshots_load_and_code_like_the_base(checkpoint, tmp_path, monkeypatch):
    """A snapshot in the hub layout with the checkpoint's UNet structure (tiny widths) loads through
    the same loader as cvssp/audioldm2, as a folder and by its hub id from the local hub cache, keeps
    that structure, and DDCM round-trips on it. A hub id with no snapshot says how to get that one."""
    import huggingface_hub.constants

    from recon.backbone import FrozenAudioLDM2
    from recon.diffusion import CHECKPOINT_UNETS

    # the local hub cache: models--cvssp--<name>/snapshots/<revision>, refs/main naming the revision
    revision = "0" * 40
    repo = tmp_path / "hub" / f"models--cvssp--{checkpoint}"
    folder = make_tiny_pipeline_folder(repo / "snapshots" / revision, seed=1, checkpoint=checkpoint)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    by_id = load_diffusion_components(f"cvssp/{checkpoint}", local_files_only=True)
    components = load_diffusion_components(str(folder), local_files_only=True)
    assert by_id.source == f"cvssp/{checkpoint}"
    assert all(torch.equal(a, b) for a, b in zip(by_id.unet.state_dict().values(), components.unet.state_dict().values()))
    other = "audioldm2-large" if checkpoint == "audioldm2-music" else "audioldm2-music"
    with pytest.raises(BackboneNotFoundError, match=f"huggingface-cli download cvssp/{other} "):
        load_diffusion_components(f"cvssp/{other}", local_files_only=True)
    shape = CHECKPOINT_UNETS[checkpoint]
    unet = components.unet
    assert unet.config.transformer_layers_per_block in (shape["transformer_layers_per_block"], [shape["transformer_layers_per_block"]] * 2)
    block = unet.down_blocks[1]  # a cross-attention block: one attention per slot and per layer
    assert len(block.attentions) == unet.config.layers_per_block * len(shape["slots"])
    assert len(block.attentions[0].transformer_blocks) == shape["transformer_layers_per_block"]
    assert not unet.training and not any(p.requires_grad for p in unet.parameters())
    backbone = FrozenAudioLDM2.from_source(str(folder))  # the VAE and vocoder of the same snapshot
    assert backbone.scaling_factor == components.scaling_factor
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    denoiser = components.denoiser(PROMPT, guidance_scale=2.0)
    indices, reconstruction = compress(denoiser, latent, 2, 4, 5)
    assert torch.equal(decompress(denoiser, indices, 2, 4, 5, tuple(latent.shape)), reconstruction)
