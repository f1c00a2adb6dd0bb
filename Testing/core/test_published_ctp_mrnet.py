"""The published CTP inpainting UNet and MRNet cascade reproduce the authors' outputs.

Tiny CTP from the container the authors' ``Runner.save`` wrote (imported through
``import_checkpoint``); the released configurations (CTP 104 M, MRNet 11 M
parameters) from deterministic weights regenerated from the manifests.
Criterion (the issue's): allclose(rtol=1e-4, atol=1e-5 max|ref|), float32, CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meddiffcore.checkpoints import import_checkpoint
from meddiffcore.checkpoints.mrnet import stage_network
from meddiffcore.diffusion import noise_like, sample_ancestral
from meddiffcore.models import load_model
from meddiffcore.nets import count_parameters
from meddiffcore.nets.ctp_unet import CTPUNet, CTPUNetConfig, from_reference, reference_shapes, released_config
from meddiffcore.nets.mrnet import MRNetUNet, MRNetUNetConfig, reference_key
from meddiffcore.nets.unet import NetInputError
from meddiffcore.tasks.ctp.config import CTPDiffusionConfig
from meddiffcore.tasks.ctp.model import denoiser_for
from published_helpers import CTP, CTP_TINY, MRNET, assert_parity, det_parameters, manifest, mrnet_det_weights


@pytest.fixture(autouse=True)
def _home(meddiff_home):
    return meddiff_home


def _context(fixture) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([fixture["local_context"], fixture["global_context"]], axis=1))


def _inputs(fixture) -> tuple[torch.Tensor, torch.Tensor]:
    if "x_noisy" in fixture.files:
        return torch.from_numpy(fixture["x_noisy"]), torch.from_numpy(fixture["cond"])
    return (torch.from_numpy(fixture["x_noisy_f16"]).float(), torch.from_numpy(fixture["cond_f16"]).float())


def _ctp_forward(net: CTPUNet, fixture) -> torch.Tensor:
    x, cond = _inputs(fixture)
    with torch.no_grad():
        return net(x, torch.from_numpy(fixture["noise_level"]), concat=cond, embedding=_context(fixture))


def _released_ctp() -> CTPUNet:
    net = CTPUNet(released_config()).eval()
    net.load_state_dict(from_reference(net, det_parameters(CTP / "ctp_released_manifest.json")))
    return net


def _check_authors_step(net: CTPUNet, fixture, diffusion: CTPDiffusionConfig, what: str) -> None:
    """The authors' step i = t: gamma = sqrt(alpha_bar_t) into the network, x0 from eps clamped to [-1, 1],
    posterior mean, through the card's denoiser and sample_ancestral (posterior variance)."""
    t = int(fixture["t"])
    schedule = diffusion.noise_schedule()
    ab, sigmas = schedule.alphas_cumprod, schedule.train_sigmas
    np.testing.assert_allclose(fixture["noise_level"], float(ab[t]) ** 0.5, rtol=1e-6)
    x_vp, cond = _inputs(fixture)
    x = x_vp / float(ab[t]) ** 0.5
    step = sample_ancestral(denoiser_for(net, diffusion), x, sigmas[[t, t - 1]].float(),
                            generator=torch.Generator().manual_seed(0), cond={"concat": cond, "embedding": _context(fixture)})
    z = noise_like(x, torch.Generator().manual_seed(0))
    std = float(np.exp(0.5 * fixture["pmv_log_variance"]))
    assert_parity(step * float(ab[t - 1]) ** 0.5 - std * z, fixture["pmv_mean"], f"{what} mean at t={t}")


def test_released_ctp_unet_has_the_authors_tensors_and_reproduces_them_at_one_slice():
    m = manifest(CTP / "ctp_released_manifest.json")
    net = _released_ctp()
    assert count_parameters(net) == m["num_parameters_total"] == 103_987_457
    assert reference_shapes(net) == {e["key"]: tuple(e["shape"]) for e in m["state_dict"]}
    fixture = np.load(CTP / "ctp_released_forward_1x32x32.npz")
    x, cond = _inputs(fixture)
    assert torch.equal(torch.cat([cond[:, :1], x, cond[:, 1:]], 1), torch.from_numpy(fixture["net_in"]))  # order
    assert_parity(_ctp_forward(net, fixture), fixture["eps"], "CTP released 1x32x32")
    diffusion = CTPDiffusionConfig(prediction="eps", target="frame", clip_x0=True)
    _check_authors_step(net, fixture, diffusion, "CTP released 1x32x32")


@pytest.mark.slow
def test_released_ctp_unet_reproduces_the_reference_at_native_8x192x192():
    fixture = np.load(CTP / "ctp_released_forward_8x192x192.npz")  # both up-sampling branches
    net = _released_ctp()
    assert_parity(_ctp_forward(net, fixture), fixture["eps"], "CTP released 8x192x192")


def test_ctp_unet_names_slabs_its_up_and_down_paths_cannot_take():
    net = CTPUNet(released_config())
    net.check_input((1, 1, 8, 192, 192))
    net.check_input((1, 1, 8, 256, 320))
    with pytest.raises(NetInputError, match=r"cannot take a 8x64x64 slab.*8 slices of 192-352"):
        net.check_input((1, 1, 8, 64, 64))
    with pytest.raises(NetInputError, match="cannot take a 8x384x384"):
        net.check_input((1, 1, 8, 384, 384))


def test_tiny_ctp_checkpoint_imports_its_ema_weights_and_reproduces_the_reference():
    path = CTP / "ctp_tiny_model-tiny.pt"
    files = import_checkpoint("ctp", [path], name="tiny-ctp", network=CTP_TINY)
    card, tensors = load_model(files.card_path, task="ctp")
    net = CTPUNet(CTPUNetConfig.from_dict(card.network)).eval()
    net.load_state_dict(tensors)
    fixture = np.load(CTP / "ctp_tiny_forward.npz")
    assert_parity(_ctp_forward(net, fixture), fixture["eps"], "tiny CTP (EMA)")
    diffusion = CTPDiffusionConfig(**card.diffusion)
    assert (diffusion.target, diffusion.prediction, diffusion.clip_x0) == ("frame", "eps", True)
    _check_authors_step(net, fixture, diffusion, "tiny CTP")
    # the raw weights of the same file give another network: the import really took the EMA
    raw = torch.load(path, weights_only=True)["model"]
    raw = {k[len("module.denoise_fn."):]: v for k, v in raw.items() if k.startswith("module.denoise_fn.")}
    net.load_state_dict(from_reference(net, raw))
    assert (_ctp_forward(net, fixture) - torch.from_numpy(fixture["eps"])).abs().max() > 1e-3


MRNET_STAGES = {"base64": ("base", 64), "sr128": ("sr128", 128), "sr256": ("sr256", 256)}


@pytest.mark.parametrize("stem", list(MRNET_STAGES))
def test_released_mrnet_stages_have_the_authors_tensors_and_reproduce_them(stem):
    stage, size = MRNET_STAGES[stem]
    m = manifest(MRNET / f"mrnet_{stem}_manifest.json")
    net = MRNetUNet(stage_network(stage, size, swin=True)).eval()
    assert count_parameters(net) == m["num_parameters_total"]
    theirs = {e["key"][len("model."):]: tuple(e["shape"]) for e in m["state_dict"] if e["key"].startswith("model.")}
    ours = {reference_key(k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert theirs == {**ours, "swin_block.attn.relative_position_index": (16, 16)}
    mrnet_det_weights(net)
    fixture = np.load(MRNET / f"mrnet_{stem}_forward.npz")
    assert len(fixture["betas"]) == m["num_timesteps_as_built_by_pipeline"]
    cond = None
    if stage != "base":
        cond = F.interpolate(torch.from_numpy(fixture["low_res"]), scale_factor=2, mode="bilinear", align_corners=False)
        assert torch.equal(cond, torch.from_numpy(fixture["low_res_upsampled"]))
    x, t = torch.from_numpy(fixture["x"]), torch.from_numpy(fixture["t"])
    with torch.no_grad():
        assert_parity(net(x, t, concat=cond), fixture["out"], f"MRNet {stem}")
        # the token scrambling matters: MedDiff's correct layout gives another function of the same weights
        net.config.swin_token_layout = "pixel"
        assert (net(x, t, concat=cond) - torch.from_numpy(fixture["out"])).abs().max() > 1e-3


def test_mrnet_stages_run_at_their_native_size_only():
    net = MRNetUNet(MRNetUNetConfig(image_size=64, widths=(8, 16, 32, 64)))
    with pytest.raises(NetInputError, match=r"takes 64x64 images, got 128x128.*resample the input to 64x64"):
        net(torch.zeros(1, 1, 128, 128), torch.tensor([3]))
    sr = MRNetUNet(MRNetUNetConfig(image_size=64, in_channels=2, widths=(8, 16, 32, 64)))
    with pytest.raises(NetInputError, match="2 image channels, got 1"):
        sr(torch.zeros(1, 1, 64, 64), torch.tensor([3]))
