"""Denoiser wrappers, guidance hooks: exact recovery with analytic networks."""

import pytest
import torch

from meddiffcore.diffusion import (
    AnalyticVPNet,
    ClassifierFreeGuidance,
    DataConsistency,
    GaussianDenoiser,
    VEDenoiser,
    VPDenoiser,
    clip_x0,
    cosine_schedule,
    dps_gradient,
    linear_schedule,
    predict,
    sr3_linear_schedule,
)
from meddiffcore.errors import ConfigError

GAUSS = GaussianDenoiser(0.3, 0.4)


def _x_sigma(schedule, b=6, shape=(2, 3, 3, 3)):
    gen = torch.Generator().manual_seed(0)
    sigma = schedule.train_sigmas[torch.randint(0, schedule.num_timesteps, (b,), generator=gen)]
    sigma = torch.cat([sigma[:-1], torch.tensor([0.7], dtype=torch.float64)])  # one off-grid sigma
    x = 0.3 + 0.4 * torch.randn(b, *shape, generator=gen, dtype=torch.float64)
    return x + sigma.reshape(-1, 1, 1, 1, 1) * torch.randn(x.shape, generator=gen, dtype=torch.float64), sigma


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule,time_input", [(cosine_schedule(1000), "discrete"), (sr3_linear_schedule(), "noise_level")])
def test_vp_wrapper_recovers_analytic_denoiser(prediction, schedule, time_input):
    net = AnalyticVPNet(GAUSS, schedule, prediction=prediction, time_input=time_input)
    den = VPDenoiser(net, schedule, prediction=prediction)  # time input follows the schedule
    assert den.time_input == time_input
    x, sigma = _x_sigma(schedule)
    out = den.predict(x, sigma)
    assert torch.allclose(out.x0, GAUSS(x, sigma), atol=1e-8)
    s = sigma.reshape(-1, 1, 1, 1, 1)
    assert torch.allclose(out.eps, (x - out.x0) / s, atol=1e-8) and out.var_interp is None


def test_vp_wrapper_gives_network_scaled_input_and_time():
    sch = linear_schedule(1000)
    seen = {}

    def net(x_in, t_in, y=None):
        seen.update(x_in=x_in, t_in=t_in, y=y)
        return torch.zeros_like(x_in)

    x, sigma = torch.ones(2, 1, 4, 4), sch.train_sigmas[[10, 500]].float()
    VPDenoiser(net, sch)(x, sigma, y=torch.ones(2))
    assert torch.allclose(seen["x_in"][:, 0, 0, 0], 1 / torch.sqrt(1 + sigma**2))
    assert torch.allclose(seen["t_in"], torch.tensor([10.0, 500.0]), atol=1e-3) and seen["y"] is not None


def test_learned_variance_plumbing():
    sch = cosine_schedule(100)
    net = AnalyticVPNet(GAUSS, sch, learned_variance=True, var_value=0.5)
    x, sigma = _x_sigma(sch)
    out = VPDenoiser(net, sch, learned_variance=True).predict(x, sigma)
    assert torch.allclose(out.var_interp, torch.full_like(x, 0.75)) and torch.allclose(out.x0, GAUSS(x, sigma), atol=1e-8)
    with pytest.raises(ConfigError, match="2C channels"):
        VPDenoiser(AnalyticVPNet(GAUSS, sch), sch, learned_variance=True)(x, sigma)


@pytest.mark.parametrize("scaling", ["direct", "divide_by_sigma"])
def test_ve_wrapper_tweedie(scaling):
    x, sigma = _x_sigma(cosine_schedule(100))
    s = sigma.reshape(-1, 1, 1, 1, 1)

    def score_net(x_in, sigma_in):
        score = (GAUSS(x_in, sigma_in) - x_in) / s**2
        return score * s if scaling == "divide_by_sigma" else score

    out = VEDenoiser(score_net, scaling).predict(x, sigma)
    assert torch.allclose(out.x0, GAUSS(x, sigma), atol=1e-10)
    assert torch.allclose(out.eps, (x - out.x0) / s, atol=1e-10)


def test_clip_and_data_consistency_recompute_eps():
    x, sigma = torch.full((2, 1, 3), 5.0), torch.tensor([1.0, 2.0])
    clipped = clip_x0(lambda x, s: x * 0.9).predict(x, sigma)
    assert torch.all(clipped.x0 == 1.0)
    assert torch.allclose(clipped.eps, (x - 1.0) / sigma.reshape(-1, 1, 1))
    dc = DataConsistency(GAUSS, lambda x0, x, s: torch.where(torch.arange(3) == 0, torch.tensor(-2.0), x0))
    out = predict(dc, x, sigma)
    assert torch.all(out.x0[..., 0] == -2.0) and torch.allclose(out.x0[..., 1:], GAUSS(x, sigma)[..., 1:])


class CondNet:
    """x0 = shift * y (broadcast), counts calls and batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, y):
        self.batches.append(x.shape[0])
        return y.reshape(-1, 1, 1) * torch.ones_like(x)


def test_cfg_scales():
    x, sigma, y = torch.zeros(3, 1, 2), torch.ones(3), torch.tensor([1.0, 2.0, 3.0])
    net = CondNet()
    cond = ClassifierFreeGuidance(net, 1.0, {"y": torch.zeros_like})(x, sigma, y=y)
    assert torch.allclose(cond[:, 0, 0], y) and net.batches == [3]  # scale 1: one conditional call
    net.batches.clear()
    unc = ClassifierFreeGuidance(net, 0.0, {"y": torch.zeros(1)})(x, sigma, y=y)
    assert torch.all(unc == 0) and net.batches == [3]  # scale 0: unconditional, batch-1 uncond expanded
    net.batches.clear()
    two = ClassifierFreeGuidance(net, 2.0, {"y": torch.zeros_like}).predict(x, sigma, y=y)
    assert torch.allclose(two.x0[:, 0, 0], 2 * y) and net.batches == [6]  # one batched call
    assert torch.allclose(two.eps, (x - two.x0) / 1.0)
    with pytest.raises(ConfigError):
        ClassifierFreeGuidance(net, 2.0, {"z": torch.zeros_like})(x, sigma, y=y)


def test_cfg_passes_learned_variance_from_conditional_branch():
    sch = cosine_schedule(100)

    def net(x_in, t_in, y):
        return torch.cat([torch.zeros_like(x_in), y.reshape(-1, 1, 1).expand_as(x_in)], dim=1)

    den = ClassifierFreeGuidance(VPDenoiser(net, sch, learned_variance=True), 3.0, {"y": lambda y: -torch.ones_like(y)})
    out = den.predict(torch.zeros(2, 1, 4), torch.ones(2), y=torch.tensor([1.0, 1.0]))
    assert torch.all(out.var_interp == 1.0)


def test_dps_gradient_through_network():
    # x0(x) = a x (a Gaussian denoiser with mu=0): grad of ||x0 - y|| w.r.t. x is a (x0 - y)/||x0 - y||.
    den = GaussianDenoiser(0.0, 1.0)
    x = torch.randn(4, 1, 5, dtype=torch.float64)
    sigma = torch.full((4,), 1.0, dtype=torch.float64)
    y = torch.randn(4, 1, 5, dtype=torch.float64)
    with torch.no_grad():
        x0, grad = dps_gradient(den, x, sigma, lambda x0: x0 - y)
    a = 0.5
    r = a * x - y
    expected = a * r / r.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    assert torch.allclose(x0, a * x) and torch.allclose(grad, expected) and not x0.requires_grad
