"""The published networks reproduce the authors' outputs: WDM/cWDM as a UNet configuration, TPDM's NCSN++.

Tiny configurations come from checkpoints the authors' save routines wrote; the released
configurations (58-81 M parameters) from deterministic weights regenerated from the manifests.
Criterion (the issue's): allclose(rtol=1e-4, atol=1e-5 max|ref|), float32, CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiffcore.checkpoints import import_checkpoint
from meddiffcore.checkpoints.tpdm import from_reference, reference_parameters
from meddiffcore.checkpoints.wdm import convert_state, released_network
from meddiffcore.diffusion import VEDenoiser, noise_like, sample_ancestral
from meddiffcore.models import load_model
from meddiffcore.nets import UNet, UNetConfig, count_parameters
from meddiffcore.nets.ncsnpp import NCSNpp, NCSNppConfig, fir_downsample, fir_upsample
from meddiffcore.nets.wavelet import SUBBANDS, haar_dwt3d
from meddiffcore.tasks.recon.tpdm import authors_levels
from meddiffcore.tasks.wdm.config import WDMDiffusionConfig
from meddiffcore.tasks.wdm.model import WaveletDenoiser
from published_helpers import TPDM, TPDM_TINY, WDM, WDM_TINY, assert_parity, det_parameters, manifest


@pytest.fixture(autouse=True)
def _home(meddiff_home):
    return meddiff_home


def _wdm_forward(net: UNet, fixture: np.lib.npyio.NpzFile) -> torch.Tensor:
    cond = {"concat": torch.from_numpy(fixture["cond"])} if "cond" in fixture.files else {}
    with torch.no_grad():
        return net(torch.from_numpy(fixture["x"]), torch.from_numpy(fixture["t"]).float(), **cond)


def _check_authors_step(net: UNet, fixture, clip_range: tuple[float, float], what: str) -> None:
    """One step of the seed's sampler (x0 prediction clipped through the image, posterior mean, variance
    beta_t) through WaveletDenoiser and sample_ancestral(variance="large"), against guided-diffusion's
    p_mean_variance: the step's result minus its noise is the reference mean."""
    diffusion = WDMDiffusionConfig(clip_range=clip_range, variance="large")
    denoiser = WaveletDenoiser(net, diffusion)
    schedule = diffusion.noise_schedule()
    sigmas, ab = schedule.train_sigmas, schedule.alphas_cumprod
    for b, t in enumerate(fixture["t"].tolist()):
        x_vp = torch.from_numpy(fixture["x"][b:b + 1])
        cond = {"concat": torch.from_numpy(fixture["cond"][b:b + 1])} if "cond" in fixture.files else {}
        x = x_vp / float(ab[t]) ** 0.5  # sigma space
        with torch.no_grad():
            x0 = denoiser(x, sigmas[t:t + 1].float(), **cond)
        assert_parity(x0[0], fixture["pmv_pred_xstart"][b], f"{what} x0 at t={t}")
        step = sample_ancestral(denoiser, x, sigmas[[t, t - 1]], generator=torch.Generator().manual_seed(b),
                                cond=cond, variance="large")
        z = noise_like(x, torch.Generator().manual_seed(b))
        std = torch.from_numpy(np.exp(0.5 * fixture["pmv_log_variance"][b:b + 1]))
        assert_parity(step * float(ab[t - 1]) ** 0.5 - std * z, fixture["pmv_mean"][b:b + 1], f"{what} mean at t={t}")


@pytest.mark.parametrize("conditional, stem", [(False, "wdm_released_unet128"), (True, "cwdm_released")])
def test_released_wdm_and_cwdm_unets_reproduce_the_reference_and_its_sampling_step(conditional, stem):
    config = released_network(conditional)
    net = UNet(config).eval()
    assert count_parameters(net) == manifest(WDM / f"{stem}_manifest.json")["num_parameters_total"]
    net.load_state_dict(convert_state(det_parameters(WDM / f"{stem}_manifest.json"), config, "fixture"))
    fixture = np.load(WDM / f"{stem}_forward_32cube.npz")
    assert_parity(_wdm_forward(net, fixture), fixture["out"], stem)
    _check_authors_step(net, fixture, (0.0, 1.0) if conditional else (-1.0, 1.0), stem)


def test_tiny_wdm_checkpoint_imports_and_reproduces_the_reference(tmp_path):
    files = import_checkpoint("wdm", [WDM / "wdm_tiny_brats_1200000.pt"], variant="brats", name="tiny-wdm",
                              network=WDM_TINY)
    card, tensors = load_model(files.card_path, task="wdm")
    net = UNet(UNetConfig.from_dict(card.network)).eval()
    net.load_state_dict(tensors)
    fixture = np.load(WDM / "wdm_tiny_forward.npz")
    assert_parity(_wdm_forward(net, fixture), fixture["out"], "tiny WDM")
    schedule = WDMDiffusionConfig(**card.diffusion).noise_schedule()
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), fixture["alphas_cumprod"], rtol=1e-12)
    _check_authors_step(net, fixture, tuple(card.diffusion["clip_range"]), "tiny WDM")


def _ncsnpp_reference_order_matches(net: NCSNpp, manifest_path) -> None:
    m = manifest(manifest_path)
    ours = reference_parameters(net)
    assert [k for k, _ in ours[1:]] == m["trainable_parameter_order"]
    shapes = {e["key"]: tuple(e["shape"]) for e in m["state_dict"]}
    assert all(shapes[k] == s for k, s in ours)


def test_released_ncsnpp_reproduces_the_reference_at_48():
    net = NCSNpp(NCSNppConfig()).eval()
    _ncsnpp_reference_order_matches(net, TPDM / "tpdm_released_ncsnpp_manifest.json")
    assert count_parameters(net) == manifest(TPDM / "tpdm_released_ncsnpp_manifest.json")["num_parameters_trainable"]
    net.load_state_dict(from_reference(net, det_parameters(TPDM / "tpdm_released_ncsnpp_manifest.json")))
    fixture = np.load(TPDM / "tpdm_released_forward_48.npz")
    with torch.no_grad():
        out = net(torch.from_numpy(fixture["x"]), torch.from_numpy(fixture["sigma"]))
    assert_parity(out, fixture["net_out"], "NCSN++ released 48^2")
    _check_predictor_step(net, fixture, 0.01, 378.0, 2000, "NCSN++ released 48^2")


def _check_predictor_step(net: NCSNpp, fixture, sigma_min: float, sigma_max: float, n: int, what: str) -> None:
    """The authors' reverse-diffusion predictor at the fixture's times: sigma(t) for the network, G from the
    discrete table, x_mean = x + G^2 score, through VEDenoiser and authors_levels."""
    sigma, g2 = authors_levels(torch.from_numpy(fixture["t"]), sigma_min, sigma_max, n)
    np.testing.assert_allclose(sigma.numpy(), fixture["sigma"], rtol=1e-6)
    np.testing.assert_allclose(g2.sqrt().numpy(), fixture["predictor_G"], rtol=1e-6)
    x = torch.from_numpy(fixture["x"])
    with torch.no_grad():
        score = VEDenoiser(net, score_scaling="direct").score(x, sigma)
    assert_parity(score, fixture["score"], f"{what} score")
    assert_parity(x + g2.view(-1, 1, 1, 1) * score, fixture["predictor_x_mean"], f"{what} predictor")


@pytest.mark.slow
def test_released_ncsnpp_reproduces_the_reference_at_native_256():
    net = NCSNpp(NCSNppConfig()).eval()
    net.load_state_dict(from_reference(net, det_parameters(TPDM / "tpdm_released_ncsnpp_manifest.json")))
    fixture = np.load(TPDM / "tpdm_released_forward_256.npz")
    with torch.no_grad():
        out = net(torch.from_numpy(fixture["x"]), torch.from_numpy(fixture["sigma"]))
    assert_parity(out, fixture["net_out"], "NCSN++ released 256^2")


def test_tiny_tpdm_pair_imports_its_ema_weights_and_reproduces_the_reference():
    path = TPDM / "tpdm_tiny_checkpoint.pth"
    files = import_checkpoint("tpdm", [path, path], variant="aapm", name="tiny-tpdm", network=TPDM_TINY)
    card, tensors = load_model(files.card_path, task="recon")
    net = NCSNpp(NCSNppConfig(**TPDM_TINY)).eval()
    _ncsnpp_reference_order_matches(net, TPDM / "tpdm_tiny_manifest.json")
    net.load_state_dict({k[len("primary."):]: v for k, v in tensors.items() if k.startswith("primary.")})
    fixture = np.load(TPDM / "tpdm_tiny_forward.npz")
    x, sigma = torch.from_numpy(fixture["x"]), torch.from_numpy(fixture["sigma"])
    with torch.no_grad():
        out = net(x, sigma)
    assert_parity(out, fixture["net_out"], "tiny NCSN++ (EMA)")
    d = card.diffusion
    _check_predictor_step(net, fixture, d["sigma_min"], d["sigma_max"], d["num_timesteps"], "tiny NCSN++")
    # the raw (non-EMA) weights of the same file give another network: the import really took the EMA
    raw = torch.load(path, weights_only=True)["model"]
    raw = {k[len("module."):]: v for k, v in raw.items() if k != "module.sigmas"}
    net.load_state_dict(from_reference(net, raw))
    with torch.no_grad():
        assert (net(x, sigma) - torch.from_numpy(fixture["net_out"])).abs().max() > 1e-3


def test_ncsnpp_is_one_nd_code_path():
    net = NCSNpp(NCSNppConfig(spatial_dims=3, base_channels=8, num_res_blocks=1, channel_mult=(1, 2),
                              image_size=8)).eval()
    x = torch.rand(2, 1, 8, 8, 8)
    with torch.no_grad():
        out = net(x, torch.tensor([0.5, 20.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.rand(1, 1, 8, 8, 7), torch.tensor([1.0]))


def _upfirdn_1d(x: np.ndarray, taps: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """StyleGAN2's upfirdn along the last axis, written out plainly: zero insertion, padding,
    convolution with the (flipped) filter, decimation."""
    n = x.shape[-1]
    u = np.zeros(x.shape[:-1] + (n * up,))
    u[..., ::up] = x
    u = np.pad(u, [(0, 0)] * (x.ndim - 1) + [pad])
    k = taps[::-1]
    out = np.stack([(u[..., i:i + len(k)] * k).sum(-1) for i in range(u.shape[-1] - len(k) + 1)], -1)
    return out[..., ::down]


def test_fir_resampling_matches_upfirdn_written_out():
    taps = np.array([1.0, 3.0, 3.0, 1.0])
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64)
    k = taps / taps.sum()
    for fn, up, down, pad, gain in ((fir_upsample, 2, 1, (2, 1), 2.0), (fir_downsample, 1, 2, (1, 1), 1.0)):
        ref = x.numpy()
        for axis in (-1, -2):  # the 2D kernel is the outer product: filter each axis in turn
            ref = np.moveaxis(_upfirdn_1d(np.moveaxis(ref, axis, -1), k * gain, up, down, pad), -1, axis)
        np.testing.assert_allclose(fn(x, (1, 3, 3, 1)).numpy(), ref, atol=1e-12)


def test_haar_transform_matches_the_authors_dwt():
    fixture = np.load(WDM / "wdm_dwt_fixture.npz")
    assert tuple(fixture["band_names"]) == SUBBANDS
    bands = haar_dwt3d(torch.from_numpy(fixture["x"]))
    np.testing.assert_allclose(bands.numpy(), np.concatenate(list(fixture["bands"]), axis=1), atol=1e-6)
