"""Training losses: oracle networks, the hybrid VLB term against torch.distributions, gradient routing."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from meddiffcore.diffusion import (
    LossConfig,
    cosine_schedule,
    linear_schedule,
    sr3_linear_schedule,
    training_loss,
    ve_geometric_schedule,
)
from meddiffcore.diffusion.losses import discretized_gaussian_log_likelihood
from meddiffcore.errors import ConfigError

SCH = cosine_schedule(100)


def _batch(b=8, shape=(1, 4, 4)):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(b, *shape, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(b, *shape, generator=gen, dtype=torch.float64)
    t = torch.randint(0, SCH.num_timesteps, (b,), generator=gen)
    return x0, eps, t


class Oracle:
    """Knows x0 and eps: returns the exact target of its prediction type."""

    def __init__(self, schedule, x0, eps, prediction, continuous=False):
        self.schedule, self.x0, self.eps, self.prediction, self.continuous = schedule, x0, eps, prediction, continuous
        self.t_in = None

    def __call__(self, x_vp, t_in):
        self.t_in = t_in
        gamma = t_in if self.continuous else self.schedule.alphas_cumprod[t_in.long()].sqrt()
        a = gamma.reshape(-1, 1, 1, 1).to(x_vp)
        b = (1 - a**2).sqrt()
        assert torch.allclose(x_vp, a * self.x0 + b * self.eps)  # the net sees the VP input
        return {"eps": self.eps, "x0": self.x0, "v": a * self.eps - b * self.x0}[self.prediction]


@pytest.mark.parametrize("kind,prediction", [("eps_mse", "eps"), ("eps_l1", "eps"), ("x0_mse", "x0"), ("v_mse", "v")])
def test_oracle_has_zero_loss_and_others_do_not(kind, prediction):
    x0, eps, t = _batch()
    loss, terms = training_loss(kind, Oracle(SCH, x0, eps, prediction), x0, SCH, noise=eps, t=t)
    assert loss.item() < 1e-20 and terms["loss"] == loss.item()
    wrong, _ = training_loss(kind, lambda x, t: torch.zeros_like(x), x0, SCH, noise=eps, t=t)
    assert wrong.item() > 0.01


def test_sr3_continuous_noise_level_training():
    sch = sr3_linear_schedule()
    x0, eps, _ = _batch()
    oracle = Oracle(sch, x0, eps, "eps", continuous=True)
    loss, _ = training_loss("eps_l1", oracle, x0, sch, noise=eps, generator=torch.Generator().manual_seed(1))
    assert loss.item() < 1e-12
    assert torch.all((oracle.t_in > 0) & (oracle.t_in <= 1)) and not torch.allclose(oracle.t_in, oracle.t_in.round())


def test_fixed_sigmas_set_the_noise_level_of_each_item():
    sch = sr3_linear_schedule()
    x0, eps, _ = _batch(b=3)
    sigma = torch.tensor([0.1, 1.0, 40.0], dtype=torch.float64)
    oracle = Oracle(sch, x0, eps, "v", continuous=True)
    loss, _ = training_loss("v_mse", oracle, x0, sch, noise=eps, sigma=sigma)
    assert loss.item() < 1e-20
    torch.testing.assert_close(oracle.t_in, (1 + sigma**2).rsqrt())  # SR3 noise level sqrt(alpha_bar)
    with pytest.raises(ConfigError, match="continuous"):
        training_loss("v_mse", oracle, x0, SCH, noise=eps, sigma=sigma)


def _brute_force_vlb(schedule, x0, x_t, t, eps_hat, v):
    """Per-sample L_t in bits/dim from torch.distributions, one sample at a time."""
    ab = schedule.alphas_cumprod.tolist()
    betas = schedule.betas.tolist()
    out = []
    for i, ti in enumerate(t.tolist()):
        ab_t, ab_p, beta = ab[ti], (ab[ti - 1] if ti > 0 else 1.0), betas[ti]
        coef0 = beta * math.sqrt(ab_p) / (1 - ab_t)
        coeft = (1 - ab_p) * math.sqrt(1 - beta) / (1 - ab_t)
        var_tilde = lambda k: betas[k] * (1 - (ab[k - 1] if k > 0 else 1.0)) / (1 - ab[k])  # noqa: E731
        log_min = math.log(var_tilde(ti) if ti > 0 else var_tilde(1))
        x0_hat = (x_t[i] - math.sqrt(1 - ab_t) * eps_hat[i]) / math.sqrt(ab_t)
        f = (v[i] + 1) / 2
        model = Normal(coef0 * x0_hat + coeft * x_t[i], torch.exp(0.5 * (f * math.log(beta) + (1 - f) * log_min)))
        if ti == 0:
            lo, hi = x0[i] - 1 / 255, x0[i] + 1 / 255
            p = model.cdf(hi) - model.cdf(lo)
            p = torch.where(x0[i] < -0.999, model.cdf(hi), torch.where(x0[i] > 0.999, 1 - model.cdf(lo), p))
            out.append(-p.log().mean() / math.log(2))
        else:
            true = Normal(coef0 * x0[i] + coeft * x_t[i], math.sqrt(var_tilde(ti)))
            out.append(kl_divergence(true, model).mean() / math.log(2))
    return torch.stack(out)


def test_hybrid_vlb_matches_brute_force_and_routes_gradients():
    x0, eps, t = _batch()
    t[0], t[1] = 0, 1  # include the decoder term
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0  # and both edge bins
    eps_hat = (eps + 0.1 * torch.randn_like(eps)).requires_grad_(True)
    v = (torch.rand_like(eps) * 2 - 1).requires_grad_(True)
    seen = {}

    def net(x_vp, t_in):
        seen["x_vp"] = x_vp
        return torch.cat([eps_hat, v], dim=1)

    lam = 0.001
    loss, terms = training_loss("hybrid", net, x0, SCH, noise=eps, t=t, vlb_weight=lam)
    expected_vlb = _brute_force_vlb(SCH, x0, seen["x_vp"], t, eps_hat.detach(), v.detach())
    mse = ((eps_hat.detach() - eps) ** 2).flatten(1).mean(1)
    assert terms["vlb"] == pytest.approx(expected_vlb.mean().item(), rel=1e-6)
    assert loss.item() == pytest.approx((mse + lam * SCH.num_timesteps * expected_vlb).mean().item(), rel=1e-6)
    loss.backward()
    # The VLB trains only the variance: the eps channels get exactly the MSE gradient.
    assert torch.allclose(eps_hat.grad, 2 * (eps_hat.detach() - eps) / eps.numel())
    assert v.grad.abs().sum() > 0


def test_discretized_likelihood_sums_to_one_over_bins():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    ll = discretized_gaussian_log_likelihood(bins, torch.tensor(0.1, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64))
    assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_denoising_score_matching():
    sch = ve_geometric_schedule(0.01, 378.0)
    x0, eps, _ = _batch()
    # An oracle score network in divide_by_sigma form returns sigma * score = -eps.
    loss, terms = training_loss("dsm", lambda x, s: -eps, x0, sch, noise=eps, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-20 and "dsm" in terms
    loss, _ = training_loss("dsm", lambda x, s: torch.zeros_like(x), x0, sch, noise=eps)
    assert loss.item() == pytest.approx((eps**2).mean().item())
    with pytest.raises(ConfigError):
        training_loss("dsm", lambda x, s: x, x0, linear_schedule(10))
    with pytest.raises(ConfigError):
        training_loss("eps_mse", lambda x, s: x, x0, sch)


def test_weights_and_config():
    x0, eps, t = _batch()
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    plain, _ = training_loss("eps_mse", zero, x0, SCH, noise=eps, t=t)
    doubled, _ = training_loss("eps_mse", zero, x0, SCH, noise=eps, t=t, weight=lambda s: torch.full_like(s, 2.0))
    assert doubled.item() == pytest.approx(2 * plain.item())
    cfg_loss, _ = LossConfig("eps_mse")(zero, x0, SCH, generator=torch.Generator().manual_seed(0))
    assert cfg_loss.item() > 0
    with pytest.raises(ConfigError, match="Unknown loss kind"):
        LossConfig("l2")
    with pytest.raises(ConfigError, match="2C"):
        training_loss("hybrid", zero, x0, SCH, noise=eps, t=t)
