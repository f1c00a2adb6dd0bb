"""CTP phantom physics and block-circulant SVD perfusion maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from meddiffcore.errors import BadInputError
from meddiffcore.io import Sequence
from meddiffcore.tasks.ctp.perfusion import bsvd_residues, compute_perfusion, uniform_step
from meddiffcore.tasks.ctp.phantom import AIFParams, make_ctp_phantom, tissue_curves


@pytest.fixture(scope="module")
def clean():
    return make_ctp_phantom(3, size=48, frames=60, noise_hu=0.0)


def test_aif_is_a_gamma_variate_with_its_peak_where_asked():
    aif = AIFParams(t0_s=5.0, tp_s=4.0, alpha=3.0, peak_hu=300.0, recirculation=0.0)
    t = np.arange(0, 40, 0.01)
    a = aif(t)
    assert np.all(a[t <= 5.0] == 0)
    assert t[np.argmax(a)] == pytest.approx(9.0, abs=0.02)
    assert a.max() == pytest.approx(300.0, rel=1e-6)
    s = (t[t > 5] - 5) / 4
    np.testing.assert_allclose(a[t > 5], 300 * s**3 * np.exp(3 * (1 - s)), rtol=1e-9)


def test_tissue_curve_is_flow_times_aif_convolved_with_delayed_exponential_residue():
    aif = AIFParams(t0_s=4.0, tp_s=4.5, alpha=3.0, peak_hu=350.0)
    times = np.arange(40.0)
    f, mtt, d = np.array([60 / 6000, 20 / 6000]), np.array([4.0, 9.0]), np.array([0.0, 6.0])
    curves = tissue_curves(aif, times, f, mtt, d)
    h = 0.001
    tau = np.arange(0, 40, h)
    for v in range(2):
        residue = np.where(tau >= d[v], np.exp(-(tau - d[v]) / mtt[v]), 0.0)
        ref = f[v] * fftconvolve(aif(tau), residue)[: tau.size] * h
        np.testing.assert_allclose(curves[:, v], ref[(times / h).astype(int)], atol=0.02 * ref.max())
    # the area under a tissue curve is CBF * MTT * area(AIF): the central volume principle
    assert curves[:, 0].sum() == pytest.approx(f[0] * mtt[0] * aif(times).sum(), rel=0.05)


def test_phantom_anatomy_lesion_and_truth(clean):
    ph = clean
    seq = ph.sequence
    assert seq.shape == (60, 8, 48, 48) and np.allclose(np.diff(seq.times_s), 1.0)
    assert set(np.unique(ph.labels)) == set(range(7))  # skull, csf, gm, wm, artery, vein, background
    gm = (ph.labels == 3) & (ph.lesion == 0)
    core, pen = ph.lesion == 1, ph.lesion == 2
    assert core.any() and pen.any()
    assert ph.cbf[core].mean() < ph.cbf[pen].mean() < 0.6 * ph.cbf[gm].mean()
    assert ph.cbv[core].mean() < 0.6 * ph.cbv[gm].mean()
    assert ph.cbv[pen & (ph.labels == 3)].mean() > 0.8 * ph.cbv[gm].mean()  # the penumbra keeps its blood volume
    assert ph.tmax[pen].min() > 3.0 and ph.tmax[gm].max() < 2.5
    np.testing.assert_allclose(ph.mtt[gm], 60 * ph.cbv[gm] / ph.cbf[gm])
    # the artery follows the AIF exactly in a noise-free phantom
    artery = ph.labels == 5
    np.testing.assert_allclose(seq.array[:, artery].mean(1) - seq.array[0, artery].mean(), ph.aif(seq.times_s), atol=1e-3)
    # same seed, same phantom
    again = make_ctp_phantom(3, size=48, frames=60, noise_hu=0.0)
    assert np.array_equal(again.sequence.array, seq.array)


def test_noise_is_added_with_the_requested_level():
    a = make_ctp_phantom(5, size=32, frames=20, noise_hu=0.0).sequence.array
    noisy = make_ctp_phantom(5, size=32, frames=20, noise_hu=2.0)
    b = noisy.sequence.array
    assert np.std(b - a) == pytest.approx(2.0, rel=0.05)
    # the phantom keeps its noise-free frames for evaluation: the same anatomy and bolus, without the noise
    assert np.array_equal(noisy.noise_free, a)


def test_bsvd_recovers_a_residue_function_from_its_discrete_convolution():
    t = np.arange(64.0)
    aif = AIFParams(5.0, 3.0, 3.0, 300.0, recirculation=0.0)(t)
    k = np.where(t < 20, 0.01 * np.exp(-t / 3.0), 0.0)  # the convolution is zero long before the end
    conc = np.convolve(aif, k)[:64]
    est = bsvd_residues(aif, conc[:, None], 1.0, 1e-9)[:, 0]
    np.testing.assert_allclose(est, k, atol=1e-5)


def test_perfusion_recovers_ground_truth_on_a_noise_free_phantom(clean):
    ph = clean
    maps = compute_perfusion(ph.sequence, svd_threshold=0.02)
    assert np.all(ph.labels[tuple(maps.aif_voxels.T)] == 5), "the automatic AIF is in an artery"
    assert maps.tissue[ph.perfused].all()
    regions = {"gm": (ph.labels == 3) & (ph.lesion == 0), "wm": (ph.labels == 4) & (ph.lesion == 0),
               "core": ph.lesion == 1, "penumbra": ph.lesion == 2}
    for name, r in regions.items():
        assert maps.cbv[r].mean() == pytest.approx(ph.cbv[r].mean(), rel=0.1), name  # late, long curves are cut off
        # bSVD underestimates CBF (the truncation smooths the residue peak), most for short MTT
        assert 0.65 * ph.cbf[r].mean() < maps.cbf[r].mean() < 1.1 * ph.cbf[r].mean(), name
        assert 0.9 * ph.mtt[r].mean() < maps.mtt[r].mean() < 1.45 * ph.mtt[r].mean(), name
        assert abs(maps.tmax[r].mean() - ph.tmax[r].mean()) < 2.0, name
    assert maps.cbf[regions["core"]].mean() < maps.cbf[regions["penumbra"]].mean() < maps.cbf[regions["gm"]].mean()
    assert maps.tmax[regions["penumbra"]].mean() > 6.0 > 3.0 > maps.tmax[regions["gm"]].mean()
    # a given AIF mask (the arteries) gives the same maps
    given = compute_perfusion(ph.sequence, aif_mask=ph.labels == 5, svd_threshold=0.02)
    assert given.cbv[regions["gm"]].mean() == pytest.approx(maps.cbv[regions["gm"]].mean(), rel=0.05)


def test_perfusion_needs_evenly_spaced_frames():
    with pytest.raises(BadInputError, match="evenly spaced"):
        uniform_step(np.array([0.0, 1.0, 3.0, 4.0]))
    seq = Sequence(np.zeros((5, 2, 4, 4), np.float32), times_s=[0, 1, 2, 4, 5])
    with pytest.raises(BadInputError, match="inpaint"):
        compute_perfusion(seq)
