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
from meddiffcore.models import load_model
from meddiffcore.nets import UNet, UNetConfig, count_parameters
from meddiffcore.nets.ncsnpp import NCSNpp, NCSNppConfig, fir_downsample, fir_upsample
from meddiffcore.nets.wavelet import SUBBANDS, haar_dwt3d
from published_helpers import TPDM, TPDM_TINY, WDM, WDM_TINY, assert_parity, det_parameters, manifest


@pytest.fixture(autouse=True)
def _home(meddiff_home):
    return meddiff_home


def _wdm_forward(net: UNet, fixture: np.lib.npyio.NpzFile) -> torch.Tensor:
    cond = {"concat": torch.from_numpy(fixture["cond"])} if "cond" in fixture.files else {}
    with torch.no_grad():
        return net(torch.from_numpy(fixture["x"]), torch.from_numpy(fixture["t"]).float(), **cond)


@pytest.mark.parametrize("conditional, stem", [(False, "wdm_released_unet128"), (True, "cwdm_released")])
def test_released_wdm_and_cwdm_unets_reproduce_the_reference(conditional, stem):
    config = released_network(conditional)
    net = UNet(config).eval()
    assert count_parameters(net) == manifest(WDM / f"{stem}_manifest.json")["num_parameters_total"]
    net.load_state_dict(convert_state(det_parameters(WDM / f"{stem}_manifest.json"), config, "fixture"))
    fixture = np.load(WDM / f"{stem.replace('_unet128', '_unet128')}_forward_32cube.npz")
    assert_parity(_wdm_forward(net, fixture), fixture["out"], stem)


def test_tiny_wdm_checkpoint_imports_and_reproduces_the_reference(tmp_path):
    files = import_checkpoint("wdm", [WDM / "wdm_tiny_brats_1200000.pt"], variant="brats", name="tiny-wdm",
                              network=WDM_TINY)
    card, tensors = load_model(files.card_path, task="wdm")
    net = UNet(UNetConfig.from_dict(card.network)).eval()
    net.load_state_dict(tensors)
    fixture = np.load(WDM / "wdm_tiny_forward.npz")
    assert_parity(_wdm_forward(net, fixture), fixture["out"], "tiny WDM")


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
