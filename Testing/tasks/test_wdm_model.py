"""WDM model: clipping through the wavelet transform, training loss, generation, config checks."""

from __future__ import annotations

import pytest
import torch

from meddiffcore.errors import BadInputError, ConfigError
from meddiffcore.nets.wavelet import WaveletScaling
from meddiffcore.tasks.wdm.model import WaveletDenoiser, generate, image_clip, training_loss
from meddiffcore.tasks.wdm.train import TASK
from volume_helpers import wdm_config


def _loud_net(conditional: bool = False):
    torch.manual_seed(0)
    net = TASK.build_network(wdm_config(conditional=conditional))
    torch.nn.init.normal_(net.out[-1].weight, std=2.0)
    return net.eval()


def test_image_clip_keeps_the_volume_in_range_and_is_idempotent():
    scaling = WaveletScaling()
    coeffs = torch.randn(2, 8, 4, 4, 4) * 5
    clipped = image_clip(scaling)(coeffs)
    image = scaling.inverse(clipped)
    assert image.min() >= -1 - 1e-5 and image.max() <= 1 + 1e-5
    assert scaling.inverse(coeffs).abs().max() > 2  # the input really was out of range
    torch.testing.assert_close(image_clip(scaling)(clipped), clipped, atol=1e-5, rtol=0)


def test_denoiser_estimates_are_valid_volumes_only_with_clipping():
    net = _loud_net()
    config = wdm_config()
    x = torch.randn(1, 8, 8, 8, 8) * 10
    sigma = torch.tensor([10.0])
    scaling = WaveletScaling()
    with torch.no_grad():
        clipped = scaling.inverse(WaveletDenoiser(net, config.diffusion)(x, sigma))
        config.diffusion.clip = False
        raw = scaling.inverse(WaveletDenoiser(net, config.diffusion)(x, sigma))
    assert clipped.abs().max() <= 1 + 1e-5
    assert raw.abs().max() > 1.5


def test_generate_gives_volumes_in_range_at_full_resolution():
    net = _loud_net()
    gen = torch.Generator().manual_seed(0)
    volumes = generate(net, wdm_config().diffusion, (16, 16, 16), 2, steps=3, generator=gen)
    assert volumes.shape == (2, 1, 16, 16, 16)
    assert volumes.abs().max() <= 1.0 and volumes.std() > 0


def test_conditional_generation_uses_the_condition():
    net = _loud_net(conditional=True)
    diffusion = wdm_config(conditional=True).diffusion
    cond_a, cond_b = -torch.ones(1, 1, 16, 16, 16), torch.ones(1, 1, 16, 16, 16)
    out_a = generate(net, diffusion, (16, 16, 16), 1, condition=cond_a, steps=2, generator=torch.Generator().manual_seed(1))
    out_b = generate(net, diffusion, (16, 16, 16), 1, condition=cond_b, steps=2, generator=torch.Generator().manual_seed(1))
    assert (out_a - out_b).abs().max() > 1e-3


def test_training_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    config = wdm_config(size=(8, 8, 8))
    net = TASK.build_network(config)
    batch = torch.stack([TASK.build_dataset(config)[i]["image"] for i in range(2)])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        gen = torch.Generator().manual_seed(step % 3)
        loss = training_loss(net, config.diffusion, batch, None, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_dataset_items_are_in_unit_range_and_paired_for_cwdm():
    config = wdm_config(conditional=True)
    item = TASK.build_dataset(config)[0]
    assert item["image"].shape == item["condition"].shape == (1, 16, 16, 16)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert not torch.equal(item["image"], item["condition"])


def test_config_errors_name_the_fix():
    config = wdm_config(size=(15, 16, 16))
    with pytest.raises(BadInputError, match="even"):
        TASK.build_network(config)
    config = wdm_config(conditional=True)
    config.network.cond_channels = 0
    with pytest.raises(ConfigError, match="cond_channels"):
        TASK.build_network(config)
