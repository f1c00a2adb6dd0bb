"""Noise schedules: closed forms, respacing, VE endpoints, time inputs, JSON round trip."""

import json
import math

import pytest
import torch

from meddiffcore.diffusion import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    sr3_linear_schedule,
    ve_geometric_schedule,
)
from meddiffcore.errors import ConfigError


def test_linear_matches_guided_diffusion_closed_form():
    for T in (1000, 250):
        sch = linear_schedule(T)
        scale = 1000 / T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
        assert torch.allclose(sch.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-12)
    explicit = linear_schedule(2000, 0.00085, 0.012)
    assert explicit.betas[0].item() == pytest.approx(0.00085) and explicit.betas[-1].item() == pytest.approx(0.012)


def test_cosine_matches_closed_form():
    T, s = 1000, 0.008
    sch = cosine_schedule(T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 10, 500, 900, 990):  # unclipped region: ab_t = f(t + 1) / f(0)
        assert sch.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sch.betas.max().item() == pytest.approx(0.999)
    assert torch.all(sch.train_sigmas[1:] > sch.train_sigmas[:-1])


def test_sr3_linear_seed_values():
    sch = sr3_linear_schedule()
    assert sch.num_timesteps == 1500 and sch.continuous
    assert sch.betas[0].item() == pytest.approx(1e-6) and sch.betas[-1].item() == pytest.approx(1e-2)


@pytest.mark.parametrize("spacing", ["uniform", "trailing", "karras"])
@pytest.mark.parametrize("steps", [1, 10, 37, 1000])
def test_sampling_sigmas_descending_and_end_at_zero(spacing, steps):
    sch = cosine_schedule(1000)
    sig = sch.sampling_sigmas(steps, spacing)
    assert sig.shape == (steps + 1,) and sig[-1].item() == 0.0
    assert torch.all(sig[1:] < sig[:-1])
    assert sig[0].item() == pytest.approx(sch.sigma_max_train)


def test_respacing_picks_training_sigmas():
    sch = cosine_schedule(1000)
    train = sch.train_sigmas
    uni = sch.sampling_sigmas(10, "uniform")[:-1]
    assert torch.equal(uni, train[torch.tensor([999, 888, 777, 666, 555, 444, 333, 222, 111, 0])])
    trail = sch.sampling_sigmas(10, "trailing")[:-1]
    assert torch.equal(trail, train[torch.arange(999, 0, -100)])
    assert torch.equal(sch.sampling_sigmas(1000, "uniform")[:-1], train.flip(0))
    with pytest.raises(ConfigError):
        sch.sampling_sigmas(1001, "uniform")
    with pytest.raises(ConfigError, match="spacing"):
        sch.sampling_sigmas(10, "bogus")


def test_ve_geometric_endpoints():
    sch = ve_geometric_schedule(0.01, 378.0, 2000)
    assert sch.train_sigmas[0].item() == pytest.approx(0.01) and sch.train_sigmas[-1].item() == pytest.approx(378.0)
    ratios = sch.train_sigmas[1:] / sch.train_sigmas[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    sig = sch.sampling_sigmas(50, "uniform")
    assert sig[0].item() == pytest.approx(378.0) and sig[-2].item() == pytest.approx(0.01) and sig[-1] == 0
    with pytest.raises(ConfigError):
        _ = sch.alphas_cumprod


def test_sigma_to_t_exact_at_nodes_and_inverse():
    sch = linear_schedule(1000)
    t = torch.tensor([0.0, 1.0, 17.0, 999.0], dtype=torch.float64)
    assert torch.allclose(sch.sigma_to_t(sch.train_sigmas[t.long()]), t, atol=1e-9)
    tf = torch.tensor([0.25, 10.5, 998.75], dtype=torch.float64)
    assert torch.allclose(sch.sigma_to_t(sch.t_to_sigma(tf)), tf, atol=1e-9)
    s = torch.tensor([0.3, 2.0])
    assert torch.allclose(sch.sigma_to_noise_level(s), 1 / torch.sqrt(1 + s**2))
    assert torch.allclose(sch.noise_level_to_sigma(sch.sigma_to_noise_level(s)), s)


def test_training_sigma_draws():
    gen = torch.Generator().manual_seed(0)
    disc = cosine_schedule(100).sample_training_sigmas(1000, gen)
    assert torch.isin(disc.double(), cosine_schedule(100).train_sigmas.float().double()).all()
    sr3 = sr3_linear_schedule()
    gamma = sr3.sigma_to_noise_level(sr3.sample_training_sigmas(5000, gen).double())
    lo = sr3.alphas_cumprod[-1].sqrt().item()
    assert gamma.min().item() >= lo - 1e-6 and gamma.max().item() <= 1.0
    ve = ve_geometric_schedule().sample_training_sigmas(5000, gen)
    assert ve.min() >= 0.01 and ve.max() <= 378.0
    assert abs(ve.log().mean().item() - (math.log(0.01) + math.log(378)) / 2) < 0.3


def test_json_round_trip_and_validation():
    for sch in (cosine_schedule(1000), linear_schedule(2000, 0.00085, 0.012), sr3_linear_schedule(), ve_geometric_schedule()):
        again = NoiseSchedule.from_dict(json.loads(json.dumps(sch.to_dict())))
        assert again == sch and torch.equal(again.train_sigmas, sch.train_sigmas)
    with pytest.raises(ConfigError, match="Unknown noise schedule keys"):
        NoiseSchedule.from_dict({"kind": "cosine", "num_timesteps": 10, "bogus": 1})
    with pytest.raises(ConfigError):
        NoiseSchedule("quadratic", 10)


@pytest.mark.parametrize("schedule", [cosine_schedule(1000), sr3_linear_schedule(), ve_geometric_schedule(),
                                      linear_schedule(2000, 0.00085, 0.012)], ids=lambda s: s.kind)
@pytest.mark.parametrize("spacing", ["karras", "uniform", "trailing"])
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 50])
def test_sampling_sigmas_strictly_decrease(schedule, spacing, steps):
    """A repeated sigma is a zero-length step, which multistep solvers divide by (SR3's sigma_max 43 is below 80)."""
    sigmas = schedule.sampling_sigmas(steps, spacing)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
