"""DDCM core on the analytic Gaussian denoiser: rate-distortion behaviour, exact decoding, portable noise."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from diffusers import DDIMScheduler

from recon.ddcm import (
    AnalyticGaussianDenoiser,
    DiffusionSchedule,
    StepCodebook,
    compress,
    ddim_step,
    decompress,
    initial_noise,
    portable_normal,
    predict_x0,
)
from recon.diffusion import AUDIOLDM2_SCHEDULER_CONFIG

DIM, BATCH, SEED = 256, 8, 7


pytestmark = pytest.mark.usefixtures("single_thread")


def snr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    return 10 * math.log10(float(x.pow(2).mean() / (x - y).pow(2).mean()))


@pytest.fixture(scope="module")
def denoiser() -> AnalyticGaussianDenoiser:
    return AnalyticGaussianDenoiser(DiffusionSchedule.from_scheduler(DDIMScheduler(**AUDIOLDM2_SCHEDULER_CONFIG)))


@pytest.fixture(scope="module")
def x0() -> torch.Tensor:
    return torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_timesteps_match_diffusers(spacing):
    config = dict(AUDIOLDM2_SCHEDULER_CONFIG, timestep_spacing=spacing)
    scheduler = DDIMScheduler(**config)
    schedule = DiffusionSchedule.from_scheduler(scheduler)
    for steps in (1, 7, 50, 200):
        scheduler.set_timesteps(steps)
        assert schedule.timesteps(steps) == scheduler.timesteps.tolist()


def test_leading_spacing_cannot_take_all_1000_steps():
    schedule = DiffusionSchedule.from_scheduler(DDIMScheduler(**AUDIOLDM2_SCHEDULER_CONFIG))
    with pytest.raises(ValueError, match="trailing"):
        schedule.timesteps(1000)
    assert DiffusionSchedule.from_scheduler(DDIMScheduler(**AUDIOLDM2_SCHEDULER_CONFIG), "trailing").timesteps(1000)[0] == 999


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_ddim_step_equals_diffusers(eta):
    """Our step, fed the same eps and noise, is diffusers' DDIMScheduler.step on AudioLDM2's config (eta 1 and 0)."""
    scheduler = DDIMScheduler(**AUDIOLDM2_SCHEDULER_CONFIG)
    schedule = DiffusionSchedule.from_scheduler(scheduler)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 16, 4, generator=g)
    for t, t_prev in schedule.transitions(10):
        eps, noise = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        expected = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        ours = ddim_step(schedule, x, eps, t, t_prev, eta, noise)
        assert torch.equal(ours, expected)  # same arithmetic, bit for bit
        x = expected


def test_analytic_denoiser_is_the_posterior_mean(denoiser):
    """E[x0 | x_t] = sqrt(a) x_t for x0 ~ N(0, I): checked by regression on samples."""
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(20000, 4, generator=g), torch.randn(20000, 4, generator=g)
    t = 600
    a = denoiser.schedule.alpha_bar(t)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    slope = float((x0 * x_t).sum() / (x_t * x_t).sum())  # least-squares E[x0|x_t] = c x_t
    assert slope == pytest.approx(float(a.sqrt()), abs=0.01)
    torch.testing.assert_close(predict_x0(denoiser.schedule, x_t, denoiser.predict_eps(x_t, t), t), a.sqrt() * x_t)


def test_distortion_falls_as_K_grows(denoiser, x0):
    snrs = [snr_db(x0, compress(denoiser, x0, steps=30, K=K, seed=SEED)[1]) for K in (4, 32, 256)]
    assert snrs[0] < snrs[1] < snrs[2], snrs


def test_distortion_falls_as_steps_grow(denoiser, x0):
    snrs = [snr_db(x0, compress(denoiser, x0, steps=steps, K=16, seed=SEED)[1]) for steps in (10, 30, 100)]
    assert snrs[0] < snrs[1] < snrs[2], snrs


def test_chosen_indices_beat_random_indices(denoiser, x0):
    steps, K = 40, 64
    indices, reconstruction = compress(denoiser, x0, steps, K, SEED)
    random_indices = torch.randint(0, K, indices.shape, generator=torch.Generator().manual_seed(3))
    random_snr = snr_db(x0, decompress(denoiser, random_indices, steps, K, SEED, x0.shape))
    # Random indices decode to an independent N(0, I) sample: D = 2 per dimension, -3 dB.
    assert random_snr == pytest.approx(-3.0, abs=1.0)
    assert snr_db(x0, reconstruction) >= random_snr + 3.0


def test_decompress_reproduces_compress_exactly(denoiser, x0):
    indices, reconstruction = compress(denoiser, x0, steps=25, K=512, seed=SEED)  # K > one chunk of rows
    assert indices.shape == (BATCH, 24) and indices.dtype == torch.long
    assert int(indices.max()) >= 256  # rows from the second chunk are chosen too
    assert torch.equal(decompress(denoiser, indices, 25, 512, SEED, x0.shape), reconstruction)
    again, same = compress(denoiser, x0, steps=25, K=512, seed=SEED)
    assert torch.equal(again, indices) and torch.equal(same, reconstruction)
    other, _ = compress(denoiser, x0, steps=25, K=512, seed=SEED + 1)
    assert not torch.equal(other, indices)


def test_items_are_coded_independently_of_their_batch(denoiser, x0):
    """argmax is per sample and x_T is shared: an item codes the same alone or in a batch."""
    batch_indices, batch_rec = compress(denoiser, x0, steps=20, K=64, seed=SEED)
    alone_indices, alone_rec = compress(denoiser, x0[3:4], steps=20, K=64, seed=SEED)
    assert torch.equal(alone_indices, batch_indices[3:4])
    assert torch.equal(alone_rec, batch_rec[3:4])


def test_decompress_checks_its_arguments(denoiser):
    with pytest.raises(ValueError, match="do not fit"):
        decompress(denoiser, torch.zeros(2, 5, dtype=torch.long), 5, 16, 0, (2, DIM))
    with pytest.raises(ValueError, match="in \\[0, 16\\)"):
        decompress(denoiser, torch.full((2, 4), 16), 5, 16, 0, (2, DIM))
    with pytest.raises(ValueError, match="power of two"):
        compress(denoiser, torch.zeros(1, DIM), 5, 12, 0)


def test_portable_noise_is_a_function_of_seed_stream_and_position_only():
    """Any slice of a stream equals the same slice of the whole stream (so a decoder computes only
    the codebook rows it needs, in any chunking), and streams of other seeds or labels differ."""
    whole = portable_normal(SEED, "codebook:3:256", 0, 10_001)
    for first, count in ((0, 1), (1, 1), (5, 17), (256, 256), (9_999, 2)):
        assert torch.equal(portable_normal(SEED, "codebook:3:256", first, count), whole[first : first + count])
    assert not torch.equal(portable_normal(SEED + 1, "codebook:3:256", 0, 64), whole[:64])
    assert not torch.equal(portable_normal(SEED, "codebook:4:256", 0, 64), whole[:64])
    codebook = StepCodebook(SEED, 3, 512, 256, torch.device("cpu"))
    rows = torch.cat([chunk for _, chunk in codebook.chunks()])
    picks = torch.tensor([511, 0, 300, 300])
    assert torch.equal(codebook.rows(picks), rows[picks])
    assert torch.equal(rows.reshape(-1)[:10_001], whole)


def test_portable_noise_is_standard_normal_and_uncorrelated():
    x = portable_normal(0, "statistics", 0, 1 << 20).double()
    assert abs(float(x.mean())) < 5e-3 and abs(float(x.std()) - 1) < 5e-3
    assert abs(float((x[:-1] * x[1:]).mean())) < 5e-3  # neighbours (Box-Muller pairs included)
    assert abs(float((x[:-256] * x[256:]).mean())) < 5e-3  # the same column of adjacent codebook rows
    # Tails of a standard normal: P(|x| > 3) = 0.0027.
    assert float((x.abs() > 3).double().mean()) == pytest.approx(0.0027, rel=0.1)


def reference_normal(seed: int, label: str, count: int) -> list[float]:
    """recon-counter-v1 as the format defines it, in Python integers and floats."""
    digest = hashlib.blake2b(f"recon.ddcm:{seed}:{label}".encode(), digest_size=8).digest()
    keys, mask = (int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")), 0xFFFFFFFF

    def fmix32(x: int) -> int:
        x ^= x >> 16
        x = x * 0x85EBCA6B & mask
        x ^= x >> 13
        x = x * 0xC2B2AE35 & mask
        return x ^ (x >> 16)

    def uniform(n: int) -> float:
        return ((fmix32(fmix32((n & mask) ^ keys[0]) ^ (n >> 32) ^ keys[1]) >> 8) + 0.5) / 2**24

    values = []
    for m in range((count + 1) // 2):
        radius, theta = math.sqrt(-2 * math.log(uniform(2 * m))), 2 * math.pi * uniform(2 * m + 1)
        values += [radius * math.cos(theta), radius * math.sin(theta)]
    return values[:count]


def test_portable_noise_follows_its_definition():
    """The tensor implementation equals the format's definition written in plain Python: a file written
    by any recon, on any device, decodes with these values. Changing them is a new NOISE_GENERATOR."""
    for seed, label, count in ((0, "x_T:(8,)", 8), (7, "codebook:3:256", 257), (2**40, "codebook:0:32768", 5)):
        expected = torch.tensor(reference_normal(seed, label, count), dtype=torch.float32)
        torch.testing.assert_close(portable_normal(seed, label, 0, count), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(initial_noise(0, (2, 8)), torch.tensor([reference_normal(0, "x_T:(8,)", 8)] * 2), rtol=0, atol=1e-6)