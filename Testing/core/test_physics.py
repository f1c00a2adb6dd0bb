"""Physics operators: adjoint tests, agreement with scikit-image, FFT orthonormality, masks, ZSR geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiffcore.errors import BadInputError
from meddiffcore.physics import (CartesianMRI, ParallelBeam, SliceAverage, adjoint_mismatch, data_consistency_cg,
                                 fft2c, ifft2c, make_mask, mask_acceleration)
from meddiffcore.tasks.recon.phantoms import make_phantom


def _slice(n=64, seed=1):
    v = make_phantom("ct", "organ", shape=(3, n, n), seed=seed)
    return ((v[1] + 1000) / 2000).astype(np.float64)


@pytest.mark.parametrize("circle", [False, True])
def test_radon_adjoint(circle):
    pb = ParallelBeam.uniform(48, 30, circle=circle)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 48, 48, generator=g)
    y = torch.randn(4, 30, pb.detectors, generator=g)
    assert adjoint_mismatch(pb, x, y) < 1e-4
    assert adjoint_mismatch(pb, x.double(), y.double()) < 1e-10


def test_radon_batched_and_differentiable():
    pb = ParallelBeam.uniform(32, 12)
    x = torch.rand(3, 1, 32, 32, requires_grad=True)
    s = pb.forward(x)
    assert s.shape == (3, 1, 12, pb.detectors)
    assert torch.allclose(pb.forward(x[1:2].detach())[0], s[1].detach(), atol=1e-5)
    (s ** 2).sum().backward()
    expected = 2 * pb.adjoint(pb.forward(x.detach()))
    assert torch.allclose(x.grad, expected, rtol=1e-4, atol=1e-4)


def test_radon_matches_skimage():
    from skimage.transform import iradon, radon

    img = _slice()
    angles = np.arange(36) * 5.0
    pb = ParallelBeam(64, angles)
    sino = pb.forward(torch.from_numpy(img)[None])[0].numpy()
    ref = radon(img, angles, circle=False).T
    assert sino.shape == ref.shape
    assert np.corrcoef(sino.ravel(), ref.ravel())[0, 1] >= 0.99
    for name in ("ramp", "shepp-logan", "hann"):
        rec = pb.fbp(torch.from_numpy(sino)[None], name)[0].numpy()
        rec_ref = iradon(ref.T, angles, filter_name=name, circle=False, output_size=64)
        assert np.corrcoef(rec.ravel(), rec_ref.ravel())[0, 1] >= 0.99, name
        assert 0.9 < rec.std() / rec_ref.std() < 1.1  # same scaling as iradon


def test_sinogram_shape_check():
    pb = ParallelBeam.uniform(32, 8)
    with pytest.raises(BadInputError):
        pb.check_sinogram((5, 9, pb.detectors))


def test_fft_orthonormal_and_centred():
    x = torch.randn(2, 16, 20, dtype=torch.complex128)
    k = fft2c(x)
    assert torch.allclose(ifft2c(k), x)
    assert torch.allclose(k.abs().pow(2).sum(), x.abs().pow(2).sum())  # Parseval: orthonormal
    ones = torch.ones(16, 20, dtype=torch.complex128)
    kk = fft2c(ones)
    assert kk.abs().argmax() == 8 * 20 + 10  # DC in the centre


@pytest.mark.parametrize("kind", ["uniform", "equispaced", "poisson"])
@pytest.mark.parametrize("acc", [4, 8])
def test_masks(kind, acc):
    m = make_mask((64, 64), acc, kind, seed=3)
    assert m.shape == (64, 64) and m.dtype == bool
    assert abs(mask_acceleration(m) / acc - 1) < 0.15
    assert m[30:34, 30:34].all()  # fully sampled centre
    assert np.array_equal(m, make_mask((64, 64), acc, kind, seed=3))  # reproducible


def test_mri_operator_adjoint():
    mask = torch.from_numpy(make_mask((32, 32), 4, "poisson"))
    op = CartesianMRI(mask)
    x = torch.randn(3, 32, 32, dtype=torch.complex128)
    y = torch.randn(3, 32, 32, dtype=torch.complex128)
    assert adjoint_mismatch(op, x, y) < 1e-10


def test_zsr_operator_adjoint_and_geometry():
    op = SliceAverage(4)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    y = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    assert adjoint_mismatch(op, x, y) < 1e-10
    assert torch.allclose(op.forward(x)[:, 1], x[:, 4:8].mean(1))
    with pytest.raises(BadInputError):
        op.forward(torch.zeros(10, 4, 4))
    thick = np.diag([0.9, 0.9, 4.0, 1.0])
    thick[:3, 3] = (10.0, 20.0, 30.0)
    thin = SliceAverage.thin_geometry(thick, 4)
    assert np.isclose(thin[2, 2], 1.0)
    # the mean position of thin slices 0..3 is thick slice 0's position
    centres = [(thin @ np.array([0, 0, k, 1.0]))[2] for k in range(4)]
    assert np.isclose(np.mean(centres), 30.0)


def test_cg_data_consistency_reduces_residual():
    pb = ParallelBeam.uniform(32, 16)
    x_true = torch.from_numpy(_slice(32)).float()[None]
    y = pb.forward(x_true)
    x0 = torch.zeros_like(x_true)
    r0 = (pb.forward(x0) - y).norm()
    x = data_consistency_cg(pb, y, x0, iters=10)
    assert (pb.forward(x) - y).norm() < 0.2 * r0


def test_cg_on_a_coupling_singular_operator_stays_finite():
    from meddiffcore.tasks.recon.problems import ZSRProblem

    problem = ZSRProblem(4)
    x_true = torch.rand(16, 8, 8)
    y = problem.forward(x_true)
    x = data_consistency_cg(problem, y, torch.zeros_like(x_true), iters=20)
    assert torch.isfinite(x).all()
    assert (problem.forward(x) - y).norm() < 1e-4 * y.norm()
