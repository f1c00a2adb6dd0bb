"""Samplers against analytic denoisers: distributions, reproducibility, inversion, plumbing."""

import math

import pytest
import torch

from meddiffcore.diffusion import (
    SAMPLERS,
    AnalyticVPNet,
    GaussianDenoiser,
    PointSetDenoiser,
    VPDenoiser,
    cosine_schedule,
    get_sampler,
    initial_noise,
    network_evaluations,
    sample_ancestral,
    sample_ddim,
    ve_geometric_schedule,
)
from meddiffcore.diffusion.samplers import ancestral_variances
from meddiffcore.errors import ConfigError

VP = cosine_schedule(1000)
MU = torch.tensor([0.7, -0.2, 0.1]).reshape(3, 1, 1)  # three channels of a (B, 3, 1, 1) "image"
STD = torch.tensor([0.3, 0.5, 0.1]).reshape(3, 1, 1)

# (name, options, steps, schedule, spacing): enough steps for ~1% accuracy with each sampler.
CASES = [
    ("ancestral", {}, 1000, VP, "uniform"),  # first order in the step: the seeds' 1000 steps
    ("ddim", {"eta": 0.0}, 500, VP, "trailing"),
    ("ddim", {"eta": 1.0}, 1000, VP, "uniform"),
    ("euler", {}, 500, VP, "karras"),
    ("euler", {"s_churn": 10.0}, 500, VP, "karras"),
    ("heun", {}, 30, VP, "karras"),
    ("dpmpp_2m", {}, 30, VP, "karras"),
    ("dpmpp_3m", {}, 30, VP, "karras"),
    ("pc", {"snr": 0.16, "n_corrector": 1}, 300, ve_geometric_schedule(0.01, 50.0, 1000), "uniform"),
]


@pytest.fixture(autouse=True)
def _one_thread():
    # Elementwise work on small tensors: threads only add contention on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IDS = [f"{c[0]}-{'-'.join(f'{k}{v}' for k, v in c[1].items())}" for c in CASES]


def _run(name, options, steps, schedule, spacing, denoiser, shape, seed=0):
    sigmas = schedule.sampling_sigmas(steps, spacing)
    gen = torch.Generator().manual_seed(seed)
    x = initial_noise(shape, sigmas, gen, dtype=torch.float64)
    return get_sampler(name)(denoiser, x, sigmas, generator=gen, **options)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gaussian_moments(case):
    out = _run(*case, GaussianDenoiser(MU, STD), (10000, 3, 1, 1))
    mean, std = out.mean(0), out.std(0)
    assert torch.allclose(mean, MU.double(), atol=0.02), mean.flatten()
    assert torch.allclose(std, STD.double(), rtol=0.06), std.flatten()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_point_set_support_and_frequencies(case):
    points = torch.tensor([[-0.8, 0.5], [0.6, 0.6], [0.1, -0.7]]).reshape(3, 1, 2, 1)  # 3 points, (C=1, 2, 1)
    weights = torch.tensor([0.5, 0.3, 0.2])
    out = _run(*case, PointSetDenoiser(points, weights), (2000, 1, 2, 1)).float()
    dist = torch.cdist(out.flatten(1), points.flatten(1))
    nearest = dist.min(1)
    assert nearest.values.quantile(0.99) < 0.05
    freq = torch.bincount(nearest.indices, minlength=3).float() / out.shape[0]
    assert torch.allclose(freq, weights, atol=0.04), freq


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_reproducible_bit_for_bit(name):
    sch = ve_geometric_schedule(0.01, 50.0, 1000) if name == "pc" else VP
    den = GaussianDenoiser(0.5, 0.2)
    a = _run(name, {}, 12, sch, "karras", den, (16, 1, 3, 3, 3), seed=3)  # 3D volumes
    b = _run(name, {}, 12, sch, "karras", den, (16, 1, 3, 3, 3), seed=3)
    assert torch.equal(a, b) and a.shape == (16, 1, 3, 3, 3)
    if name in ("ancestral", "pc", "ddim"):
        c = _run(name, {"eta": 1.0} if name == "ddim" else {}, 12, sch, "karras", den, (16, 1, 3, 3, 3), seed=4)
        assert not torch.equal(a, c)


def test_ddim_eta0_inverts():
    den = GaussianDenoiser(MU, STD)
    sigmas = VP.sampling_sigmas(1000, "karras")[:-1]  # stop at the smallest training sigma
    x_start = initial_noise((256, 3, 1, 1), sigmas, torch.Generator().manual_seed(0), dtype=torch.float64)
    x_low = sample_ddim(den, x_start, sigmas)
    x_noise = sample_ddim(den, x_low, sigmas.flip(0))  # encode: ascending sigmas
    x_back = sample_ddim(den, x_noise, sigmas)
    assert (x_back - x_low).abs().max() < 1e-2


def test_ancestral_variances_closed_form():
    # The sigma-space bounds equal the DDPM posterior beta_tilde and beta after rescaling by 1/ab_prev.
    ab = VP.alphas_cumprod
    for t in (1, 10, 500, 998):
        s, sn = VP.train_sigmas[t].item(), VP.train_sigmas[t - 1].item()
        beta = VP.betas[t].item()
        beta_tilde = beta * (1 - ab[t - 1].item()) / (1 - ab[t].item())
        lo, hi = ancestral_variances(s, sn)
        assert lo == pytest.approx(beta_tilde / ab[t - 1].item(), rel=1e-9)
        assert hi == pytest.approx(beta / ab[t - 1].item(), rel=1e-9)


def test_learned_variance_uses_interpolated_variance():
    # A denoiser whose x0 is exactly 0 and var_interp = 1 makes the one stochastic step's spread the upper bound.
    schedule = VP
    net = AnalyticVPNet(GaussianDenoiser(0.0, 1e-8), schedule, learned_variance=True, var_value=1.0)
    den = VPDenoiser(net, schedule, learned_variance=True)
    s, sn = 2.0, 1.0
    x = torch.zeros(50000, 1, 1, 1, dtype=torch.float64)
    out = sample_ancestral(den, x, torch.tensor([s, sn]), generator=torch.Generator().manual_seed(0))
    lo, hi = ancestral_variances(s, sn)
    assert out.var().item() == pytest.approx(hi, rel=0.03) and abs(hi - lo) / lo > 0.2
    net.var_value = -1.0
    out = sample_ancestral(den, x, torch.tensor([s, sn]), generator=torch.Generator().manual_seed(0))
    assert out.var().item() == pytest.approx(lo, rel=0.03)


def test_callback_dicts_and_cancel():
    den = GaussianDenoiser(0.0, 0.5)
    sigmas = VP.sampling_sigmas(7, "karras")
    x = initial_noise((4, 1, 2, 2), sigmas, torch.Generator().manual_seed(0))
    seen = []
    get_sampler("dpmpp_2m")(den, x, sigmas, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(7)) and all(d["total"] == 7 for d in seen)
    assert set(seen[0]) == {"i", "total", "sigma", "sigma_next", "x", "denoised"} and seen[-1]["sigma_next"] == 0

    class Cancelled(Exception):
        pass

    def cancel(info):
        if info["i"] == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        get_sampler("ancestral")(den, x, sigmas, callback=cancel)


def test_network_evaluations_match_calls():
    for name in sorted(SAMPLERS):
        sch = ve_geometric_schedule(0.01, 50.0, 1000) if name == "pc" else VP
        calls = []

        def counting(x, sigma, **cond):
            calls.append(1)
            return GaussianDenoiser(0.0, 0.5)(x, sigma)

        get_sampler(name)(counting, torch.randn(2, 1, 2), sch.sampling_sigmas(9, "karras"))
        assert len(calls) == network_evaluations(name, 9), name


def test_unknown_sampler_lists_names():
    with pytest.raises(ConfigError) as err:
        get_sampler("plms")
    assert "dpmpp_2m" in str(err.value) and "ancestral" in str(err.value)


def test_runs_without_grad_and_cond_passthrough():
    seen = {}

    def den(x, sigma, **cond):
        seen.update(cond)
        assert not torch.is_grad_enabled()
        return torch.zeros_like(x)

    y = torch.ones(2, 4)
    get_sampler("heun")(den, torch.randn(2, 1, 3), VP.sampling_sigmas(3, "karras"), cond={"y": y})
    assert seen["y"] is y
    assert math.isfinite(VP.sampling_sigmas(3)[0].item())
