"""Haar 3D wavelet transform: PyWavelets agreement, exact inverse, bad sizes."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from meddiffcore.errors import BadInputError
from meddiffcore.nets.wavelet import SUBBANDS, WaveletScaling, haar_dwt3d, haar_idwt3d, pad_to_even

PYWT_KEYS = ("aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd")


def test_subbands_match_pywavelets_dwtn():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 8, 10)).astype(np.float32)
    coeffs = haar_dwt3d(torch.from_numpy(x)).numpy()
    assert coeffs.shape == (2, 24, 3, 4, 5)
    for b in range(2):
        for c in range(3):
            ref = pywt.dwtn(x[b, c].astype(np.float64), "haar")
            for i, key in enumerate(PYWT_KEYS):
                np.testing.assert_allclose(coeffs[b, 8 * c + i], ref[key], atol=1e-5, err_msg=f"{SUBBANDS[i]}/{key}")


def test_inverse_is_exact_and_matches_pywavelets_idwtn():
    x = torch.randn(1, 2, 4, 6, 8, dtype=torch.float64)
    coeffs = haar_dwt3d(x)
    torch.testing.assert_close(haar_idwt3d(coeffs), x, atol=1e-12, rtol=0)
    c = coeffs[0, 8:16].numpy()
    ref = pywt.idwtn({k: c[i] for i, k in enumerate(PYWT_KEYS)}, "haar")
    np.testing.assert_allclose(haar_idwt3d(coeffs)[0, 1].numpy(), ref, atol=1e-10)


def test_transform_is_orthonormal():
    x = torch.randn(1, 1, 8, 8, 8, dtype=torch.float64)
    assert torch.isclose((haar_dwt3d(x) ** 2).sum(), (x ** 2).sum())


def test_lll_scaling_round_trip_and_range():
    scaling = WaveletScaling()
    x = torch.ones(1, 1, 4, 4, 4)
    coeffs = scaling(x)
    assert coeffs[0, 0].max().item() == pytest.approx(2 ** 1.5 / 3, rel=1e-5)
    torch.testing.assert_close(scaling.inverse(coeffs), x)


def test_odd_size_is_a_bad_input_with_a_hint():
    with pytest.raises(BadInputError, match="even"):
        haar_dwt3d(torch.zeros(1, 1, 5, 4, 4))
    padded, pads = pad_to_even(torch.zeros(1, 1, 5, 4, 7), value=-1.0)
    assert padded.shape[2:] == (6, 4, 8) and pads == (1, 0, 1)
    assert padded[0, 0, -1].min().item() == -1.0


def test_gradients_flow_through_both_directions():
    x = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    haar_idwt3d(haar_dwt3d(x) * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
