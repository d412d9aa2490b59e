"""Invariants of recon.codebook.VectorQuantizer, on small synthetic latents (CPU)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from einops import rearrange

from recon.codebook import CodebookConfig, QuantizerOutput, VectorQuantizer


def _vq(**kw) -> VectorQuantizer:
    return VectorQuantizer(CodebookConfig(**kw))


def _flat(z: torch.Tensor) -> torch.Tensor:
    return rearrange(z, "b d ... -> (b ...) d")


def _clusters(n_clusters: int, per: int, dim: int = 8, spread: float = 5.0, noise: float = 0.1, seed: int = 0):
    """[n_clusters * per, dim] points around well-separated centres, shuffled."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * spread
    pts = centres.repeat_interleave(per, 0) + noise * torch.randn(n_clusters * per, dim, generator=g)
    return pts[torch.randperm(len(pts), generator=g)]


def _as_latent(vectors: torch.Tensor, b: int) -> torch.Tensor:
    """[N, D] -> channel-first [b, D, N // b, 1]."""
    return rearrange(vectors, "(b t f) d -> b d t f", b=b, f=1)


def _snr_db(z: torch.Tensor, z_q: torch.Tensor) -> float:
    return float(10 * torch.log10(z.pow(2).sum() / (z - z_q).pow(2).sum()))


# 1. shapes and dtypes
def test_shapes_dtypes_and_fp32_math():
    torch.manual_seed(0)
    vq = _vq(num_codes=32, kmeans_init=False).eval()
    z = torch.randn(2, 8, 16, 4)
    out = vq(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == z.shape and out.z_q.dtype == torch.float32
    assert out.indices.shape == (2, 16, 4) and out.indices.dtype == torch.long
    for scalar in (out.loss, out.codebook_loss, out.commitment_loss, out.perplexity, out.usage):
        assert scalar.shape == () and scalar.dtype == torch.float32
    assert vq.bits_per_index == 5.0

    zb = z.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_b = vq(zb)
    assert out_b.z_q.dtype == torch.bfloat16 and out_b.loss.dtype == torch.float32
    ref = vq(zb.float())
    assert torch.equal(out_b.indices, ref.indices)
    assert torch.equal(out_b.z_q, ref.z_q.bfloat16())


def test_perplexity_and_usage_when_every_code_used_once():
    vq = _vq(num_codes=16, kmeans_init=False).eval()
    z = _as_latent(vq.codebook.detach().clone(), b=2)  # each code quantizes to itself
    out = vq(z)
    assert torch.equal(out.indices.flatten(), torch.arange(16))
    assert out.usage == 1.0
    assert torch.isclose(out.perplexity, torch.tensor(16.0))
    z_half = _as_latent(vq.codebook.detach()[:8].repeat(2, 1), b=2)
    out = vq(z_half)
    assert out.usage == 0.5 and torch.isclose(out.perplexity, torch.tensor(8.0))


# 2. straight-through estimator and codebook gradient
def test_hard_ste_gradient_and_codebook_grad():
    torch.manual_seed(0)
    vq = _vq(num_codes=64, kmeans_init=False).train()
    z = torch.randn(2, 8, 16, 4, requires_grad=True)
    out = vq(z)
    out.z_q.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z))
    assert vq.codebook.grad is None  # STE output carries no gradient to the codebook

    out.codebook_loss.backward()
    grad_rows = vq.codebook.grad.abs().sum(1) > 0
    used = torch.zeros(64, dtype=torch.bool)
    used[out.indices.flatten()] = True
    assert torch.equal(grad_rows, used)


def test_ema_codebook_is_a_buffer_without_codebook_loss():
    vq = _vq(num_codes=16, update="ema", kmeans_init=False).train()
    assert "codebook" in dict(vq.named_buffers()) and not list(vq.parameters())
    out = vq(torch.randn(2, 8, 4, 4))
    assert out.codebook_loss == 0 and out.commitment_loss > 0


def test_ema_step_follows_decay_and_laplace_smoothing():
    decay, eps, k = 0.9, 0.5, 4  # a large eps so the smoothing visibly moves the codes
    vq = _vq(num_codes=k, update="ema", kmeans_init=False, ema_decay=decay, ema_eps=eps).train()
    codes0 = vq.codebook.clone()
    z = torch.randn(2, 8, 8, 2)
    idx = vq(z).indices.flatten()
    x = _flat(z)
    counts = torch.bincount(idx, minlength=k).float()
    sums = torch.zeros(k, 8).index_add_(0, idx, x)
    size = decay * 1.0 + (1 - decay) * counts  # cluster_size starts at one observation per code
    embed = decay * codes0 + (1 - decay) * sums
    n = size.sum()
    expected = embed / ((size + eps) / (n + k * eps) * n)[:, None]
    torch.testing.assert_close(vq.cluster_size, size)
    torch.testing.assert_close(vq.embed_sum, embed)
    torch.testing.assert_close(vq.codebook, expected)
    vq.eval()(z)
    torch.testing.assert_close(vq.codebook, expected)  # eval leaves the codebook alone


# 3. nearest neighbour, chunked and not
def test_indices_are_true_nearest_and_chunking_is_exact():
    torch.manual_seed(1)
    z = torch.randn(2, 8, 4, 3)
    vq = _vq(num_codes=32, kmeans_init=False).eval()
    expected = torch.cdist(_flat(z), vq.codebook.detach()).argmin(1)
    assert torch.equal(vq(z).indices.flatten(), expected)
    assert torch.equal(vq.quantize_indices(z).flatten(), expected)

    big = torch.randn(4, 8, 64, 16)
    whole = vq.quantize_indices(big)
    vq.cfg.chunk_size = 7  # does not divide the 4096 rows, so the last chunk is short
    assert torch.equal(vq.quantize_indices(big), whole)
    assert torch.equal(vq(big).indices, whole)


# 4. soft mode
def test_soft_at_tiny_temperature_equals_hard():
    torch.manual_seed(2)
    z = torch.randn(2, 8, 16, 4)
    hard = _vq(num_codes=64, kmeans_init=False).eval()
    soft = _vq(num_codes=64, kmeans_init=False, mode="soft", temperature=1e-5, temperature_anneal_steps=0).eval()
    assert torch.equal(soft.codebook, hard.codebook)  # same seed, same random init
    out_h, out_s = hard(z), soft(z)
    assert torch.equal(out_s.indices, out_h.indices)
    torch.testing.assert_close(out_s.z_q, out_h.z_q, atol=1e-5, rtol=0)


def test_soft_at_large_temperature_is_codebook_mean_and_trains_codebook():
    torch.manual_seed(3)
    vq = _vq(num_codes=64, kmeans_init=False, mode="soft", temperature=1e6, temperature_anneal_steps=0).train()
    z = torch.randn(2, 8, 16, 4, requires_grad=True)
    out = vq(z)
    mean = vq.codebook.detach().mean(0)
    torch.testing.assert_close(out.z_q, mean.view(1, 8, 1, 1).expand_as(z), atol=1e-3, rtol=0)
    out.z_q.pow(2).sum().backward()
    assert vq.codebook.grad.abs().sum(1).gt(0).all()  # every code gets gradient through the weights
    assert z.grad.abs().sum() > 0


def test_temperature_anneals_with_training_steps_only():
    vq = _vq(num_codes=16, kmeans_init=False, mode="soft", temperature=1.0, temperature_min=0.01,
             temperature_anneal_steps=100)
    assert vq.temperature_at(0) == 1.0
    assert vq.temperature_at(50) == pytest.approx(0.1)
    assert vq.temperature_at(100) == pytest.approx(0.01) == vq.temperature_at(10_000)
    ts = [vq.temperature_at(s) for s in range(0, 101, 10)]
    assert all(a > b for a, b in zip(ts, ts[1:]))
    z = torch.randn(1, 8, 4, 4)
    vq.eval()(z)
    assert int(vq.step) == 0
    vq.train()(z)
    vq(z)
    assert int(vq.step) == 2


# 5. k-means init
def test_kmeans_init_fits_separated_clusters():
    data = _clusters(16, 64)
    z = _as_latent(data, b=4)
    fitted = _vq(num_codes=16)
    fitted.init_from_latents(data)
    assert bool(fitted.initialized)
    out = fitted.eval()(z)
    assert out.usage == 1.0
    snr_kmeans = _snr_db(z, out.z_q)
    assert snr_kmeans > 30  # noise 0.1 around centres of scale 5: ~34 dB when every cluster has a code

    random_init = _vq(num_codes=16, kmeans_init=False).eval()
    snr_random = _snr_db(z, random_init(z).z_q)
    assert snr_kmeans > snr_random + 20


def test_lazy_init_only_in_training():
    data = _clusters(16, 16)
    z = _as_latent(data, b=2)
    vq = _vq(num_codes=16).eval()
    before = vq.codebook.detach().clone()
    vq(z)
    assert not bool(vq.initialized) and torch.equal(vq.codebook, before)
    out = vq.train()(z)
    assert bool(vq.initialized) and out.usage == 1.0
    assert not torch.equal(vq.codebook, before)


# 6. training loops from a bad init, and dead-code restarts
def _train(update: str, dead_code_threshold: int, steps: int = 60) -> tuple[list[float], list[float], VectorQuantizer]:
    torch.manual_seed(4)
    vq = _vq(num_codes=64, update=update, kmeans_init=False, dead_code_threshold=dead_code_threshold,
             ema_decay=0.9).train()
    # A codebook far off the data: only a few codes are ever nearest at first.
    vq.set_codes(torch.arange(64), vq.codebook.detach() + 4.0)
    opt = torch.optim.Adam(vq.parameters(), lr=0.05) if update == "grad" else None
    losses, usages = [], []
    for _ in range(steps):
        out = vq(torch.randn(8, 8, 16, 4))
        if opt is not None:
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        # EMA mode has no codebook loss; the commitment error is the quantization error in both.
        losses.append(float(out.commitment_loss))
        usages.append(float(out.usage))
    return losses, usages, vq


@pytest.mark.parametrize("update", ["grad", "ema"])
def test_training_from_far_init_reduces_error_and_restarts_raise_usage(update):
    losses, usages, vq = _train(update, dead_code_threshold=3)
    assert sum(losses[-10:]) / 10 < 0.2 * losses[0]
    assert usages[0] < 0.25 and min(usages[-10:]) > 0.75
    assert int(vq.total_restarted) > 0
    _, usages_no_restart, vq0 = _train(update, dead_code_threshold=0)
    assert int(vq0.total_restarted) == 0
    assert min(usages[-10:]) > max(usages_no_restart[-10:])


@pytest.mark.parametrize("update", ["grad", "ema"])
def test_planted_dead_codes_are_restarted_and_stay_restarted(update):
    threshold = 3
    data = _clusters(16, 32)
    vq = _vq(num_codes=16, update=update, dead_code_threshold=threshold).train()
    vq.init_from_latents(data)
    planted = torch.tensor([3, 7])
    vq.set_codes(planted, torch.full((2, 8), 1e3))
    opt = torch.optim.SGD(vq.parameters(), lr=0.1) if update == "grad" else None
    g = torch.Generator().manual_seed(5)
    for step in range(1, threshold + 8):
        batch = data[torch.randperm(len(data), generator=g)[:128]]
        out = vq(_as_latent(batch, b=2))
        if opt is not None:
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        if step <= threshold:
            assert int(vq.num_restarted) == 0
            assert (vq.codebook[planted] > 900).all()
        if step == threshold + 1:
            assert int(vq.num_restarted) == 2 and int(vq.total_restarted) == 2
    assert int(vq.total_restarted) >= 2
    # A restart that left the EMA statistics stale would drag the codes back towards 1e3.
    assert vq.codebook.detach().abs().max() < 50
    if update == "ema":
        torch.testing.assert_close(vq.codebook, vq.embed_sum / vq.cluster_size[:, None], rtol=1e-3, atol=1e-3)


# 7. DDP on two CPU ranks
_DDP_STEPS, _DDP_PER_RANK = 7, 2


def _ddp_batches():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(16, 8, generator=g) * 5
    for _ in range(_DDP_STEPS):
        pts = centres[torch.randint(16, (_DDP_PER_RANK * 2 * 32,), generator=g)]
        pts = pts + 0.1 * torch.randn(pts.shape, generator=g)
        yield _as_latent(pts, b=_DDP_PER_RANK * 2)  # [4, 8, 32, 1]; rank r takes rows 2r, 2r + 1


def _ema_run(rows: slice) -> VectorQuantizer:
    vq = _vq(num_codes=16, update="ema", dead_code_threshold=2, ema_decay=0.8).train()
    for step, z in enumerate(_ddp_batches()):
        vq(z[rows])  # the first call runs k-means on this batch, gathered over ranks
        if step == 0:
            vq.set_codes(torch.tensor([5]), torch.full((1, 8), 1e3))  # same plant on every rank
    return vq


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        vq = _ema_run(slice(rank * _DDP_PER_RANK, (rank + 1) * _DDP_PER_RANK))
        torch.save({k: v.clone() for k, v in vq.state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_agree_and_match_single_process(tmp_path):
    ctx = mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 60 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert bool(r0["initialized"])
    assert int(r0["total_restarted"]) >= 1
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran single-threaded; keep reductions comparable
    try:
        single = _ema_run(slice(None)).state_dict()
    finally:
        torch.set_num_threads(threads)
    for key in ("initialized", "steps_unused", "total_restarted", "cluster_size"):
        assert torch.equal(single[key], r0[key]), key
    for key in ("codebook", "embed_sum"):
        torch.testing.assert_close(single[key], r0[key], rtol=1e-5, atol=1e-5)


# 8. indices round trip
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_decode_of_quantize_is_hard_z_q(mode):
    torch.manual_seed(7)
    z = torch.randn(2, 8, 16, 4)
    vq = _vq(num_codes=64, mode=mode, kmeans_init=False).eval()
    idx = vq.quantize_indices(z)
    assert idx.shape == (2, 16, 4)
    decoded = vq.decode_indices(idx)
    assert decoded.shape == z.shape
    hard = _vq(num_codes=64, kmeans_init=False).eval()
    hard.load_state_dict(vq.state_dict())
    assert torch.equal(decoded, hard(z).z_q)


# 8. residual stages
def test_each_residual_stage_lowers_the_error_and_indices_decode_to_forward():
    torch.manual_seed(0)
    z = torch.randn(4, 8, 32, 4)
    vq = _vq(num_codes=32, stages=3)
    vq.init_from_latents(_flat(z))
    assert bool(vq.initialized) and all(bool(stage.initialized) for stage in vq.residual)
    vq.eval()
    errors = []
    for n in (1, 2, 3):
        out = vq(z, stages=n)
        indices = vq.residual_indices(z, n)
        assert indices.shape == (4, n, 32, 4)
        torch.testing.assert_close(vq.decode_residual(indices), out.z_q, rtol=0, atol=1e-6)
        errors.append(float((z - out.z_q).pow(2).mean()))
    assert errors[0] > errors[1] > errors[2]
    # One stage is the one-stage quantizer: its indices and codes.
    assert torch.equal(vq.residual_indices(z, 1)[:, 0], vq.quantize_indices(z))
    assert torch.equal(vq(z, stages=1).z_q, vq.forward_stage(z).z_q)
    with pytest.raises(ValueError, match="stages must lie in \\[1, 3\\]"):
        vq(z, stages=4)
    with pytest.raises(ValueError, match="residual stages need mode 'hard'"):
        _vq(stages=2, mode="soft")


def _train_ladder(stages: int, dropout: float, steps: int = 12) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = _vq(num_codes=32, update="ema", kmeans_init=True, dead_code_threshold=3, stages=stages, quantizer_dropout=dropout).train()
    for step in range(steps):
        vq.reseed(step)
        vq(torch.randn(4, 8, 16, 4, generator=torch.Generator().manual_seed(step)) * (1 + step % 3))
    return vq


def test_stage_one_of_a_ladder_trains_exactly_as_a_one_stage_quantizer():
    """Stage 1 of a ladder is codebook_hard: later stages and quantizer dropout draw from their own
    generators and never touch what stage 1 sees, so its codebook and statistics are bit-identical."""
    single, ladder = _train_ladder(1, 0.0), _train_ladder(3, 0.5)
    for name, value in single.state_dict().items():
        assert torch.equal(ladder.state_dict()[name], value), name
    assert int(ladder.total_restarted) == int(single.total_restarted)
    # The ladder's extra keys are its stages; a one-stage state dict loads into a one-stage quantizer.
    assert set(ladder.state_dict()) - set(single.state_dict()) == {k for k in ladder.state_dict() if k.startswith("residual.")}
    _vq(num_codes=32, update="ema", dead_code_threshold=3).load_state_dict(single.state_dict())


def test_quantizer_dropout_trains_prefixes_of_the_ladder():
    full, dropped = _train_ladder(3, 0.0, steps=40), _train_ladder(3, 1.0, steps=40)
    assert [int(s.step) for s in (full, *full.residual)] == [40, 40, 40]
    counts = [int(s.step) for s in (dropped, *dropped.residual)]
    # Depth uniform in 1..3 every step: stage 2 runs about 2/3 of the steps, stage 3 about 1/3.
    assert counts[0] == 40 and 40 > counts[1] > counts[2] > 0


def test_a_ladder_pickles_with_its_generators():
    import pickle

    vq = _train_ladder(2, 0.5, steps=2)
    copy = pickle.loads(pickle.dumps(vq))
    for a, b in ((vq, copy), (vq.residual[0], copy.residual[0])):
        assert torch.equal(a._gen.get_state(), b._gen.get_state())
    assert torch.equal(vq._dropout_gen.get_state(), copy._dropout_gen.get_state())
