"""TPDM and fast samplers on a small volume with an analytic Gaussian prior: they fit the data and beat FBP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiffcore.metrics import psnr
from meddiffcore.physics import ParallelBeam
from meddiffcore.tasks.recon.fast import sample_fast
from meddiffcore.tasks.recon.phantoms import make_phantom
from meddiffcore.tasks.recon.planes import from_slices, to_slices
from meddiffcore.tasks.recon.priors import VolumePrior, choose_prior
from meddiffcore.tasks.recon.problems import CTProblem, ZSRProblem, operator_norm
from meddiffcore.tasks.recon.tpdm import geometric_sigmas, sample_tpdm


def test_choose_prior_integer_and_fractional_K():
    assert [choose_prior(i, 3, None) for i in range(6)] == ["primary", "primary", "auxiliary"] * 2
    assert [choose_prior(i, 2, None) for i in range(4)] == ["primary", "auxiliary"] * 2
    assert all(choose_prior(i, 1, None) == "auxiliary" for i in range(3))
    g = torch.Generator().manual_seed(0)
    picks = [choose_prior(i, 2.7, g) for i in range(4000)]
    frac = picks.count("primary") / len(picks)
    assert abs(frac - (1 - 1 / 2.7)) < 0.03


def test_planes_round_trip():
    v = torch.randn(4, 5, 6)
    for plane in ("axial", "coronal", "sagittal"):
        assert torch.equal(from_slices(to_slices(v, plane), plane), v)
    assert torch.equal(to_slices(v, "coronal")[2], v[:, 2, :])


class WienerDenoiser:
    """Exact denoiser of a stationary Gaussian image prior with power spectrum ``power`` (H, W):
    ``E[x0 | x] = mu + F^-1[P / (P + sigma^2) F(x - mu)]`` with the orthonormal FFT."""

    def __init__(self, mu: float, power: torch.Tensor) -> None:
        self.mu, self.power = mu, power

    def __call__(self, x, sigma, **cond):
        p = self.power.to(x)
        gain = p / (p + sigma.view(-1, 1, 1, 1).to(x) ** 2)
        return self.mu + torch.fft.ifft2(gain * torch.fft.fft2(x - self.mu, norm="ortho"), norm="ortho").real


def _prior(gt: np.ndarray, plane: str) -> VolumePrior:
    slices = to_slices(torch.from_numpy(gt).double(), plane)
    mu = float(slices.mean())
    power = (torch.fft.fft2(slices - mu, norm="ortho").abs() ** 2).mean(0).float()
    return VolumePrior(WienerDenoiser(mu, power), plane, chunk=8)


def _gaussian_priors(gt: np.ndarray):
    """Oracle stationary-Gaussian priors fitted to the volume's own axial and coronal slices (a smoothness prior)."""
    return _prior(gt, "axial"), _prior(gt, "coronal")


@pytest.fixture(scope="module")
def ct_case():
    gt = (make_phantom("ct", "organ", (8, 32, 32), seed=90001) + 1000) / 2000
    problem = CTProblem(ParallelBeam.uniform(32, 4))
    x = torch.from_numpy(gt.astype(np.float32))
    y = problem.forward(x)
    fbp = problem.baseline(y).numpy()
    return gt, problem, y, fbp


def test_fast_sampler_fits_data_and_beats_fbp(ct_case):
    gt, problem, y, fbp = ct_case
    primary, aux = _gaussian_priors(gt)
    sigmas = [float(s) for s in torch.logspace(1, -2, 20)] + [0.0]
    res = sample_fast(primary, aux, problem, y, gt.shape, sigmas, cg_iters=5, generator=torch.Generator().manual_seed(0))
    assert res.nfe == 20 and primary.evaluations > 0 and aux.evaluations > 0
    rel = float((problem.forward(res.x) - y).norm() / y.norm())
    assert rel < 0.05
    assert psnr(gt, res.x.numpy(), 1.0) > psnr(gt, fbp, 1.0) + 1.0


def test_tpdm_sampler_reduces_residual_and_beats_fbp(ct_case):
    gt, problem, y, fbp = ct_case
    primary, aux = _gaussian_priors(gt)
    lip = operator_norm(problem, gt.shape, "cpu")
    sigmas = geometric_sigmas(10.0, 0.01, 40)
    gen = torch.Generator().manual_seed(0)
    no_dc = sample_tpdm(primary, aux, problem, y, gt.shape, sigmas, K=2, lam=0.0, lipschitz=lip, generator=gen)
    gen = torch.Generator().manual_seed(0)
    res = sample_tpdm(primary, aux, problem, y, gt.shape, sigmas, K=2, lam=1.0, lipschitz=lip, generator=gen)
    assert res.nfe == 2 * 40 and res.grad_evaluations == 20
    r_dc = float((problem.forward(res.x) - y).norm())
    r_free = float((problem.forward(no_dc.x) - y).norm())
    assert r_dc < 0.5 * r_free
    assert psnr(gt, res.x.numpy(), 1.0) > psnr(gt, fbp, 1.0)


def test_zsr_fast_beats_nothing_and_keeps_data():
    gt = make_phantom("mri", None, (16, 16, 16), seed=90002)
    problem = ZSRProblem(4)
    y = problem.forward(torch.from_numpy(gt))
    primary, aux = _gaussian_priors(gt)
    sigmas = [float(s) for s in torch.logspace(1, -2, 10)] + [0.0]
    res = sample_fast(primary, aux, problem, y, gt.shape, sigmas, cg_iters=5, generator=torch.Generator().manual_seed(0))
    assert res.x.shape == gt.shape
    assert float((problem.forward(res.x) - y).norm() / y.norm()) < 0.02
