"""DDCM core on the analytic Gaussian denoiser: rate-distortion behaviour, exact decoding, the bitstream."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from recon.ddcm import (
    AnalyticGaussianDenoiser,
    BitstreamError,
    DDCMHeader,
    DiffusionSchedule,
    bits_per_item,
    compress,
    ddim_step,
    decompress,
    pack,
    predict_x0,
    unpack,
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


def _header(steps: int = 25, K: int = 512) -> DDCMHeader:
    return DDCMHeader(steps=steps, K=K, seed=SEED, shape=(8, 256, 16), dtype="float32", device="cpu", model_id="random:tiny")


def test_pack_unpack_round_trip_and_size(denoiser, x0):
    steps, K = 25, 512
    indices, reconstruction = compress(denoiser, x0, steps, K, SEED)
    data = pack(indices, _header(steps, K))
    got, header = unpack(data)
    assert torch.equal(got, indices) and header == _header(steps, K)
    assert bits_per_item(steps, K) == 24 * 9
    payload = math.ceil(BATCH * bits_per_item(steps, K) / 8)
    assert payload < len(data) < payload + 80  # header + CRC are a few dozen bytes
    decoded = decompress(denoiser, got, header.steps, header.K, header.seed, x0.shape)
    assert torch.equal(decoded, reconstruction)


@pytest.mark.parametrize("K", [2, 8, 1024, 4096])
def test_pack_unpack_exact_for_any_bit_width(K):
    indices = torch.randint(0, K, (3, 11), generator=torch.Generator().manual_seed(K))
    indices[0, 0], indices[-1, -1] = K - 1, 0
    got, header = unpack(pack(indices, _header(steps=12, K=K)))
    assert torch.equal(got, indices) and header.K == K


def test_every_flipped_byte_and_every_truncation_is_rejected():
    data = pack(torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4)), _header(steps=10, K=64))
    for position in range(len(data)):
        corrupted = bytearray(data)
        corrupted[position] ^= 0x5A
        with pytest.raises(BitstreamError):
            unpack(bytes(corrupted))
    for length in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:length])
    with pytest.raises(BitstreamError, match="trailing"):
        unpack(data + b"\0")


def test_bitstream_errors_say_what_is_wrong():
    data = pack(torch.zeros(1, 4, dtype=torch.long), _header(steps=5, K=16))
    with pytest.raises(BitstreamError, match="magic"):
        unpack(b"RIFF" + data[4:])
    with pytest.raises(BitstreamError, match="version"):
        unpack(data[:4] + bytes([99]) + data[5:])
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(data[:-3])
    corrupted = bytearray(data)
    corrupted[-5] ^= 1  # last payload byte
    with pytest.raises(BitstreamError, match="CRC"):
        unpack(bytes(corrupted))


def test_pack_rejects_indices_that_do_not_fit_the_header():
    with pytest.raises(ValueError):
        pack(torch.zeros(1, 3, dtype=torch.long), _header(steps=5, K=16))
    with pytest.raises(ValueError):
        pack(torch.full((1, 4), 16), _header(steps=5, K=16))
