"""DDCM's options: each one's definition, its exact bits in the file, and its round trip from the file alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from recon import ddcm
from recon.ddcm import AnalyticGaussianDenoiser, CodedStep, DiffusionSchedule, StepCodebook, atoms_noise, coded_sizes, compress, decompress
from recon.ddcm_options import (
    PLAIN,
    DDCMOptions,
    bits_of_codes,
    max_bits_per_item,
    mixing_levels,
    pack_codes,
    step_plan,
    unpack_codes,
)
from recon.diffusion import AUDIOLDM2_SCHEDULER_CONFIG
from tests.conftest import write_tone  # at import: importing conftest again sets the thread count, a test must not

pytestmark = pytest.mark.usefixtures("single_thread")

SEED = 5
# One option set per option (and a mix of all), each coded, written, read back and decoded.
OPTION_SETS = {
    "plain": PLAIN,
    "mixing P2 CB4 blend": DDCMOptions(atoms=2, level_bits=4, score="blend", blend_lambda=0.5),
    "mixing P3 CB2, range, late K": DDCMOptions(atoms=3, level_bits=2, t_range=(900, 100), k_late=4, k_switch=500),
    "eta schedule to 0": DDCMOptions(eta=0.9, eta_late=0.0, eta_switch=300),
    "cosine, late dot, rerank": DDCMOptions(score="cosine", score_late="dot", score_switch=400, rerank=3, rerank_every=2),
    "turbo M4": DDCMOptions(turbo=4),
}


@pytest.fixture(scope="module")
def schedule() -> DiffusionSchedule:
    return DiffusionSchedule.from_scheduler(DDIMScheduler(**AUDIOLDM2_SCHEDULER_CONFIG))


@pytest.fixture(scope="module")
def analytic(schedule) -> AnalyticGaussianDenoiser:
    return AnalyticGaussianDenoiser(schedule)


def coded_step(schedule, K: int, dim: int, batch: int, seed: int = 1, options: DDCMOptions = PLAIN, t: int = 600, t_prev: int = 500):
    """A coded step's state for a batch of random targets, and the targets."""
    g = torch.Generator().manual_seed(seed)
    x_t, target = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
    eps = (1 - schedule.alpha_bar(t)) ** 0.5 * x_t  # the analytic denoiser's
    x0_hat = ddcm.predict_x0(schedule, x_t, eps, t)
    plan = step_plan([t, t_prev], K, options)[0]
    return CodedStep(plan, StepCodebook(SEED, 3, K, dim, torch.device("cpu")), x_t, eps, x0_hat), target


def explicit_score(mode: str, rows: torch.Tensor, residual: torch.Tensor, stats_rows: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Scores of ``rows [N, dim]`` against one residual, z-statistics (blend) from ``stats_rows``: the definitions, in float64."""
    rows, residual, stats_rows = rows.double(), residual.double(), stats_rows.double()
    dot = lambda m: m @ residual  # noqa: E731
    cos = lambda m: m @ residual / (m.norm(dim=1) * residual.norm())  # noqa: E731
    if mode == "dot":
        return dot(rows)
    if mode == "cosine":
        return cos(rows)
    z = lambda v, ref: (v - ref.mean()) / ref.std()  # noqa: E731
    return z(dot(rows), dot(stats_rows)) + lam * z(cos(rows), cos(stats_rows))


@pytest.mark.parametrize("mode", ["dot", "cosine", "blend"])
def test_first_atom_maximises_the_score_as_defined(schedule, mode):
    # K over one chunk of rows; a small dim so that row norms differ and the modes choose differently
    options = DDCMOptions(score=mode, blend_lambda=4.0)  # a lambda large enough that blend is not dot
    step, target = coded_step(schedule, K=300, dim=6, batch=8, options=options)
    codes = ddcm._choose_atoms(step, target, options, None)
    rows = torch.cat([chunk for _, chunk in step.codebook.chunks()])
    for b in range(8):
        assert int(codes[b, 0]) == int(explicit_score(mode, rows, target[b] - step.x0_hat[b], rows, lam=4.0).argmax())
    other = DDCMOptions(score="dot" if mode != "dot" else "cosine")
    assert (codes[:, 0] != ddcm._choose_atoms(coded_step(schedule, 300, 6, 8, options=other)[0], target, other, None)[:, 0]).any()


@pytest.mark.parametrize("mode", ["dot", "blend"])
def test_mixing_rounds_equal_a_brute_force_search_over_levels_and_atoms(schedule, mode):
    """The closed-form mixing scores pick what scoring every explicit mix sqrt(c) b + sqrt(1-c) n_k,
    renormalised, picks; an atom is kept only if it raises the score; the noise is the explicit mix."""
    options = DDCMOptions(atoms=3, level_bits=3, score=mode)
    step, target = coded_step(schedule, K=64, dim=40, batch=4, seed=2, options=options)
    codes = ddcm._choose_atoms(step, target, options, None)
    rows = torch.cat([chunk for _, chunk in step.codebook.chunks()])
    for b in range(4):
        residual = target[b] - step.x0_hat[b]
        best = rows[codes[b, 0]]
        best_score = explicit_score(mode, best[None], residual, rows)[0]
        for slot in (1, 2):
            mixes = torch.stack([math.sqrt(c) * best + math.sqrt(1 - c) * rows for c in mixing_levels(3)])  # [L, K, dim]
            mixes = mixes / mixes.std(dim=2, keepdim=True)
            scores = explicit_score(mode, mixes.reshape(-1, 40), residual, rows).reshape(7, 64)
            level, k = divmod(int(scores.argmax()), 64)
            if scores.max() <= best_score * (1 + 1e-4):
                assert int(codes[b, 2 * slot - 1]) == 0 and int(codes[b, 2 * slot]) == 0  # a level code 0 ends the step
                assert (codes[b, 2 * slot - 1 :] == 0).all()
                break
            assert (int(codes[b, 2 * slot - 1]), int(codes[b, 2 * slot])) == (level + 1, k)
            best, best_score = mixes[level, k], scores.max()
        torch.testing.assert_close(atoms_noise(step.codebook, codes[b : b + 1], options)[0], best, rtol=0, atol=1e-5)
    assert (codes[:, 1] > 0).any()  # some atoms are kept


def test_turbo_takes_the_M_largest_inner_products_with_their_signs_and_ranks_subsets_one_to_one(schedule):
    import itertools

    from recon.ddcm_options import turbo_bits, turbo_rank, turbo_unrank

    options = DDCMOptions(turbo=5)
    step, target = coded_step(schedule, K=40, dim=16, batch=3, options=options)
    codes = ddcm._choose_atoms(step, target, options, None)
    rows = torch.cat([c for _, c in step.codebook.chunks()])
    for b in range(3):
        dots = rows @ (target[b] - step.x0_hat[b])
        top = sorted(dots.abs().argsort(descending=True)[:5].tolist())
        assert codes[b, :5].tolist() == top and codes[b, 5:].tolist() == [int(dots[k] < 0) for k in top]
        signed = sum((1 - 2 * int(dots[k] < 0)) * rows[k] for k in top)
        torch.testing.assert_close(atoms_noise(step.codebook, codes[b : b + 1], options)[0], signed / signed.std(), rtol=0, atol=1e-6)
    for K, M in ((7, 3), (6, 6), (9, 1)):
        subsets = list(itertools.combinations(range(K), M))
        assert sorted(turbo_rank(c) for c in subsets) == list(range(len(subsets)))  # a bijection onto 0 .. C(K, M) - 1
        assert all(turbo_unrank(turbo_rank(c), K, M) == list(c) for c in subsets)
        assert turbo_bits(K, M) == math.ceil(math.log2(len(subsets))) + M
    codes = np.array([[[2, 5, 9, 0, 1, 1], [0, 1, 2, 0, 0, 0]]])
    payload = pack_codes(list(codes), [16, 16], DDCMOptions(turbo=3))
    assert len(payload) == math.ceil(2 * (math.ceil(math.log2(math.comb(16, 3))) + 3) / 8)
    np.testing.assert_array_equal(unpack_codes(payload, 1, [16, 16], DDCMOptions(turbo=3)), codes)


def test_rerank_takes_the_top_candidate_with_the_smallest_next_error(schedule, analytic):
    step, target = coded_step(schedule, K=32, dim=24, batch=2, seed=3)
    options = DDCMOptions(rerank=5)
    rows = torch.cat([c for _, c in step.codebook.chunks()])
    scores = torch.stack([explicit_score("dot", rows, target[b] - step.x0_hat[b], rows).float() for b in range(2)])
    picked = ddcm._lookahead(analytic, options, ddcm._latent_error(target))(step, scores)
    for b in range(2):
        top = scores[b].argsort(descending=True)[:5]
        errors = []
        for k in top:
            x_next = ddcm.ddim_step(schedule, step.x_t[b : b + 1], step.eps[b : b + 1], 600, 500, 1.0, rows[k][None])
            x0_next = ddcm.predict_x0(schedule, x_next, analytic.predict_eps(x_next, 500), 500)
            errors.append(float((x0_next[0] - target[b]).pow(2).sum()))
        assert int(picked[b]) == int(top[int(np.argmin(errors))])


def test_coded_range_eta_and_late_K_set_which_steps_cost_what(schedule, analytic):
    timesteps = schedule.timesteps(20)  # 951, 901, ..., 1
    plan = step_plan(timesteps, 64, DDCMOptions(t_range=(800, 200), eta_late=0.0, eta_switch=300, k_late=8, k_switch=500))
    coded = [(p.t, p.K) for p in plan if p.K is not None]
    assert coded == [(t, 64 if t > 500 else 8) for t in timesteps[:-1] if 800 >= t > 300]
    x0 = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
    # An eta schedule that does not switch, and a range holding every step, are plain DDCM exactly.
    plain_codes, plain_rec = compress(analytic, x0, 20, 64, SEED)
    for same in (DDCMOptions(eta_late=1.0, eta_switch=500), DDCMOptions(t_range=(999, 0))):
        codes, rec = compress(analytic, x0, 20, 64, SEED, same)
        assert torch.equal(codes, plain_codes) and torch.equal(rec, plain_rec)
    # Outside the range a step takes row 0 of its codebook: replaying with index 0 there is the same decode.
    options = DDCMOptions(t_range=(600, 300))
    codes, rec = compress(analytic, x0, 20, 64, SEED, options)
    inside = [i for i, t in enumerate(timesteps[:-1]) if 600 >= t >= 300]
    full = torch.zeros(2, 19, dtype=torch.long)
    full[:, inside] = codes
    assert torch.equal(decompress(analytic, full, 20, 64, SEED, x0.shape), rec)


@pytest.mark.parametrize("P, CB, K_list", [(1, 4, [16, 16, 4]), (2, 4, [16, 16, 16]), (3, 2, [64, 8]), (4, 1, [2, 2, 2])])
def test_payload_is_exactly_the_stated_bits(P, CB, K_list):
    """Each coded step: log2 K_s, then per further slot CB bits of level and, if the level is not 0,
    log2 K_s bits of index; a level 0 ends the step. Random codes with every kept count round-trip
    through bytes of exactly ceil(bits / 8)."""
    options = DDCMOptions(atoms=P, level_bits=CB)
    rng = np.random.default_rng(P * 10 + CB)
    items = []
    for _ in range(5):
        codes = np.zeros((len(K_list), 2 * P - 1), dtype=np.int64)
        for s, K in enumerate(K_list):
            codes[s, 0] = rng.integers(K)
            kept = rng.integers(P)  # further atoms kept at this step
            for slot in range(1, kept + 1):
                codes[s, 2 * slot - 1], codes[s, 2 * slot] = rng.integers(1, 1 << CB), rng.integers(K)
            expected = (1 + kept) * math.log2(K) + CB * min(kept + 1, P - 1)
            assert bits_of_codes(codes[s : s + 1], [K], options) == expected
        items.append(codes)
    total = sum(bits_of_codes(c, K_list, options) for c in items)
    assert max_bits_per_item(K_list, options) == sum(P * math.log2(K) + (P - 1) * CB for K in K_list)
    payload = pack_codes(items, K_list, options)
    assert len(payload) == math.ceil(total / 8)
    np.testing.assert_array_equal(unpack_codes(payload, 5, K_list, options), np.stack(items))
    with pytest.raises(ValueError, match="payload of"):
        unpack_codes(payload + b"\x00", 5, K_list, options)


def test_plain_ddcm_payload_is_the_fixed_width_index_layout_of_earlier_files():
    """Files written before the options existed (no ``ddcm`` header object) hold log2 K-bit indices
    packed by recon.codec.pack_indices: plain DDCM still writes and reads exactly those bytes."""
    from recon.codec import pack_indices

    indices = np.random.default_rng(0).integers(0, 64, (3, 11))
    payload = pack_codes(list(indices), [64] * 11, PLAIN)
    assert payload == pack_indices(indices.reshape(-1), 6)
    np.testing.assert_array_equal(unpack_codes(payload, 3, [64] * 11, PLAIN)[..., 0], indices)


def test_bit_layout_is_msb_first_and_a_stop_costs_its_level_code():
    # P = 2, CB = 2, K = 8: step 1 keeps an atom (k1=5, j=3, k=1), step 2 stops (k1=6, j=0).
    codes = np.array([[5, 3, 1], [6, 0, 0]])
    payload = pack_codes([codes], [8, 8], DDCMOptions(atoms=2, level_bits=2))
    assert payload == bytes([0b101_11_001, 0b110_00_000])  # 13 bits, zero-padded


def test_header_holds_the_non_plain_options_and_rejects_bad_ones_in_one_line():
    assert PLAIN.to_header() == {} and DDCMOptions(level_bits=6).to_header() == {}  # CB means nothing with P = 1
    for options in OPTION_SETS.values():
        assert DDCMOptions.from_header(options.to_header(), 1000) == options
    bad = {
        "unknown DDCM option(s) beta": {"beta": 1},
        "unknown score mode 'max'": {"score": "max"},
        "atoms (P) must be an integer in [1, 16]": {"atoms": 0},
        "level_bits (CB) must be an integer in [1, 8]": {"atoms": 2, "level_bits": 9},
        "outside the schedule's timesteps 0 .. 999": {"t_range": [1200, 0]},
        "t_range (t0, t1) needs t0 >= t1 >= 0": {"t_range": [100, 200]},
        "eta_late and eta_switch go together": {"eta_late": 0.3},
        "k_late must be a power of two": {"k_late": 12, "k_switch": 100},
        "eta must lie in [0, 1]": {"eta": 1.5},
        "turbo chooses its atoms by the dot score alone": {"turbo": 8, "atoms": 2},
        "must be a JSON object": [1],
    }
    for message, header in bad.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")) as err:
            DDCMOptions.from_header(header, 1000)
        assert "\n" not in str(err.value)


def test_portable_noise_is_computed_on_the_cpu_for_a_device_without_float64(monkeypatch):
    """Apple's MPS has no float64: the stream is computed on the CPU and only the float32 result moves."""
    seen = []
    original = ddcm._uniform
    monkeypatch.setattr(ddcm, "_uniform", lambda counter, key: seen.append(counter.device.type) or original(counter, key))
    monkeypatch.setattr(ddcm, "supports_float64", lambda device: device.type not in ("meta",))
    out = ddcm.portable_normal(3, "codebook:0:8", 5, 11, device="meta")  # stands in for a device without float64
    assert out.device.type == "meta" and out.dtype == torch.float32 and set(seen) == {"cpu"}
    seen.clear()
    ddcm.portable_normal(3, "codebook:0:8", 5, 11, device="cpu")
    assert set(seen) == {"cpu"}
    monkeypatch.undo()
    assert not ddcm.supports_float64(torch.device("mps")) and ddcm.supports_float64(torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny():
    from recon.backbone import FrozenAudioLDM2
    from recon.diffusion import load_diffusion_components

    diffusion = load_diffusion_components("random:tiny")
    return diffusion, FrozenAudioLDM2(diffusion.pipe.vae, diffusion.pipe.vocoder, source="random:tiny").eval()


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_every_option_round_trips_from_the_file_alone(tiny, name):
    """Encode with the tiny AudioLDM2 stand-in, write the container, read it back and decode with no
    options given: the latent is the encoder's reconstruction, the payload is the codes' exact bits,
    variants' nominal bitrate is their worst case (exact for P = 1), and an item codes alone as in a batch."""
    from recon.codec import ddcm_latents, ddcm_container, latent_grid
    from recon.container import dumps, loads
    from recon.variants import VariantSettings

    diffusion, backbone = tiny
    options = OPTION_SETS[name]
    settings = VariantSettings(seed=SEED, ddcm_steps=8, ddcm_k=16, guidance_scale=1.0,
                               **{f"ddcm_{field}": value for field, value in vars(options).items()})
    assert settings.ddcm_options == options
    segments = [20480, 20480]  # a 2.56 s file: one 1.28 s segment after another (layout [20480, 20480])
    shape = (2, backbone.latent_channels, *latent_grid(backbone, segments[0]))
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    denoiser = diffusion.denoiser("", 1.0)
    codes, reconstruction = compress(denoiser, x0, 8, 16, SEED, options)
    container = ddcm_container(list(codes), segments, 40960, settings, diffusion, backbone, layout=[20480, 20480])
    read = loads(dumps(container))
    assert read.header.get("ddcm", {}) == options.to_header()
    latents = ddcm_latents(read, backbone, diffusion, batch_size=2)
    assert torch.equal(torch.stack(latents), reconstruction / diffusion.scaling_factor)
    sizes = coded_sizes(diffusion.schedule, 8, 16, options)
    bits = sum(bits_of_codes(c.numpy(), sizes, options) for c in codes)
    assert len(read.payload) == math.ceil(bits / 8)
    nominal = settings.ddcm_bitrate_bps * 10.24
    assert nominal == pytest.approx(max_bits_per_item(sizes, options))
    if options.atoms == 1:
        assert bits == 2 * nominal
    alone, _ = compress(denoiser, x0[1:], 8, 16, SEED, options)
    assert torch.equal(alone, codes[1:])


def test_audio_rerank_picks_the_index_whose_decoded_log_mel_is_closest(tiny):
    """ddcm_noise re-ranks by the VAE-decoded log-mel against the input's: with one coded step and
    every candidate re-ranked, the index it writes is the one whose decoded output is closest."""
    from recon.audio import MelFrontEnd
    from recon.variants import VARIANTS, Models, VariantInput, VariantSettings

    diffusion, backbone = tiny
    models = Models(backbone, MelFrontEnd(backbone.spec), None, diffusion)
    wav = 0.1 * torch.randn(1, 20480, generator=torch.Generator().manual_seed(7))
    logmel = models.frontend(wav)
    posterior = backbone.encode(logmel)
    x = VariantInput(wav, logmel, posterior.mean, posterior.std, ["a.wav#0"])
    settings = VariantSettings(seed=SEED, ddcm_steps=2, ddcm_k=8, ddcm_rerank=8, guidance_scale=1.0)
    with torch.no_grad():
        chosen = VARIANTS["ddcm_noise"].fn(x, models, settings).codes
        denoiser, scale = diffusion.denoiser("", 1.0), diffusion.scaling_factor
        errors = [float((backbone.decode(decompress(denoiser, torch.tensor([[k]]), 2, 8, SEED, posterior.mean.shape) / scale) - logmel).pow(2).mean())
                  for k in range(8)]
    assert int(chosen[0, 0]) == int(np.argmin(errors))
    assert int(np.argmin(errors)) != int(VARIANTS["ddcm_noise"].fn(x, models, VariantSettings(seed=SEED, ddcm_steps=2, ddcm_k=8, guidance_scale=1.0)).codes[0, 0])


def test_sweep_columns_are_named_by_what_varies_and_carry_their_own_bitrate():
    from recon.variants import VARIANTS, VariantSettings, sweep

    points = sweep([VARIANTS["ddcm_noise"]], {"ddcm_steps": [11], "ddcm_k": [16], "ddcm_atoms": [1, 2], "ddcm_level_bits": [3],
                                              "ddcm_t_range": [None, (900, 0)]})
    names = [v.name for v in points]
    assert names == ["ddcm_noise@T11-K16-P1-tall", "ddcm_noise@T11-K16-P1-t900_0", "ddcm_noise@T11-K16-P2-tall", "ddcm_noise@T11-K16-P2-t900_0"]
    rates = {v.name: v.bitrate(VariantSettings()) * 10.24 for v in points}
    # AudioLDM2's 11 leading steps are 901, 811, ..., 1: ten noisy steps, nine of them at t <= 900.
    assert rates["ddcm_noise@T11-K16-P1-tall"] == pytest.approx(10 * 4)
    assert rates["ddcm_noise@T11-K16-P1-t900_0"] == pytest.approx(9 * 4)
    assert rates["ddcm_noise@T11-K16-P2-tall"] == pytest.approx(10 * (2 * 4 + 3))
    # A late option can be swept on and off against a fixed switch step.
    on_off = sweep([VARIANTS["ddcm_noise"]], {"ddcm_eta_late": [None, 0.35], "ddcm_eta_switch": [200]})
    assert [v.name for v in on_off] == ["ddcm_noise@T50-K1024-etaLoff", "ddcm_noise@T50-K1024-etaL0.35"]
    assert [v.settings(VariantSettings()).ddcm_options.eta_at(100) for v in on_off] == [1.0, 0.35]


def test_infer_sweeps_an_option_and_recon_decodes_each_file_with_no_flags(tmp_path, capsys):
    import infer
    import soundfile as sf

    from recon import cli

    write_tone(tmp_path / "in" / "a.wav", 1.0)
    out = tmp_path / "out"
    assert infer.main(["--backbone", "random:tiny", "--diffusion", "random:tiny", "--input", str(tmp_path / "in"), "--output", str(out),
                       "--variants", "ddcm_noise", "--ddcm-steps", "5", "--ddcm-k", "16", "--ddcm-atoms", "1,2", "--ddcm-level-bits", "3",
                       "--ddcm-eta-late", "0.5", "--ddcm-eta-switch", "500", "--seed", "2", "--batch-size", "1", "--wandb", "off",
                       "--no-perceptual", "--accelerator", "cpu"]) == 0
    import csv

    rows = {r["variant"]: r for r in csv.DictReader(open(out / "metrics.csv"))}
    assert set(rows) == {"ddcm_noise@T5-K16-P1", "ddcm_noise@T5-K16-P2"}
    assert float(rows["ddcm_noise@T5-K16-P1"]["bitrate_bps"]) == pytest.approx(4 * 4 / 10.24)
    assert float(rows["ddcm_noise@T5-K16-P2"]["bitrate_bps"]) == pytest.approx(4 * (2 * 4 + 3) / 10.24)
    # Each file decodes with the models alone: its options come from its header.
    from recon.backbone import FrozenAudioLDM2
    from recon.codec import decode_container
    from recon.container import loads
    from recon.diffusion import load_diffusion_components

    diffusion = load_diffusion_components("random:tiny")
    backbone = FrozenAudioLDM2(diffusion.pipe.vae, diffusion.pipe.vocoder, source="random:tiny")
    for name in rows:
        container = loads((out / name / "a.recn").read_bytes())
        assert container.header.get("ddcm") == {"eta_late": 0.5, "eta_switch": 500, **({"atoms": 2, "level_bits": 3} if name.endswith("P2") else {})}
        written, _ = sf.read(str(out / name / "a.wav"), dtype="float32")
        np.testing.assert_allclose(decode_container(container, backbone, diffusion=diffusion).numpy(), written, atol=1e-4)
    # recon encode with the same options writes the same file as infer.py's point of the sweep.
    assert cli.main(["encode", str(tmp_path / "in"), "--codec", "ddcm", "--diffusion", "random:tiny", "--device", "cpu",
                     "--out", str(tmp_path / "coded"), "--ddcm-steps", "5", "--ddcm-k", "16", "--ddcm-atoms", "2", "--ddcm-level-bits", "3",
                     "--ddcm-eta-late", "0.5", "--ddcm-eta-switch", "500", "--seed", "2", "--batch-size", "1", "--quiet"]) == 0
    assert loads((tmp_path / "coded" / "a.recn").read_bytes()) == loads((out / "ddcm_noise@T5-K16-P2" / "a.recn").read_bytes())
    code = cli.main(["encode", str(tmp_path / "in"), "--codec", "ddcm", "--diffusion", "random:tiny", "--device", "cpu",
                     "--out", str(tmp_path / "bad"), "--ddcm-eta-late", "0.3", "--quiet"])
    assert code == 2 and "error: DDCM options: eta_late and eta_switch go together" in capsys.readouterr().err
