"""Metrics agree with scikit-image's independent implementation and behave at their extremes."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from meddiffcore.metrics import dice, ms_ssim, psnr, ssim, ssim_by_orientation


@pytest.fixture()
def pair():
    rng = np.random.default_rng(0)
    clean = np.cumsum(rng.normal(size=(24, 28, 32)), axis=2)
    return clean, clean + rng.normal(scale=2.0, size=clean.shape)


def test_psnr_matches_skimage(pair):
    clean, noisy = pair
    rng = float(clean.max() - clean.min())
    assert psnr(clean, noisy, rng) == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=rng), rel=1e-9)


def test_ssim_matches_skimage_gaussian_mode():
    # A large image, so that skimage's exclusion of a 5-pixel border hardly matters.
    rng_ = np.random.default_rng(3)
    clean = np.cumsum(np.cumsum(rng_.normal(size=(256, 256)), axis=0), axis=1)
    noisy = clean + rng_.normal(scale=clean.std() / 4, size=clean.shape)
    rng = float(clean.max() - clean.min())
    theirs = structural_similarity(clean, noisy, data_range=rng, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)
    assert ssim(clean, noisy, rng) == pytest.approx(theirs, abs=0.01)


def test_identical_is_one_and_noise_lowers_every_score(pair):
    clean, noisy = pair
    rng = float(clean.max() - clean.min())
    assert ssim(clean, clean, rng) == pytest.approx(1.0)
    assert ms_ssim(clean, clean, rng) == pytest.approx(1.0)
    assert ms_ssim(clean, noisy, rng) < 0.99
    worse = clean + np.random.default_rng(1).normal(scale=8.0, size=clean.shape)
    assert ms_ssim(clean, worse, rng) < ms_ssim(clean, noisy, rng)
    assert all(v < 1 for v in ssim_by_orientation(clean, noisy, rng).values())


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(np.zeros(3), np.zeros(3)) == 1.0
