"""Swin block: correct token layout, windows isolate tokens, shifted windows mix, UNet bottleneck."""

from __future__ import annotations

import torch

from meddiffcore.nets import UNet, UNetConfig
from meddiffcore.nets.swin import SwinBlock, SwinBottleneck, shifted_window_mask, window_partition, window_reverse


def test_window_partition_keeps_pixels_together_and_inverts():
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 4, 16, 3)
    # window 1 of image 0 is rows 0..3, columns 4..7, in row-major order; each token is one pixel's channels
    torch.testing.assert_close(windows[1], x[0, 0:4, 4:8].reshape(16, 3))
    torch.testing.assert_close(window_reverse(windows, 4, 8, 8), x)


def _influence(block: SwinBlock, h: int, w: int, source: tuple[int, int]) -> torch.Tensor:
    """Which output pixels change when one input pixel changes (B=1, C=8)."""
    torch.manual_seed(0)
    x = torch.randn(1, h, w, 8)
    y = block(x)
    x2 = x.clone()
    x2[0, source[0], source[1], 0] += 5.0  # one channel: a uniform shift would vanish in LayerNorm
    return (block(x2) - y).abs().sum(-1)[0] > 1e-6


def test_plain_block_attention_stays_inside_the_window():
    torch.manual_seed(0)
    block = SwinBlock(8, heads=2, window=4, shift=0).eval()
    changed = _influence(block, 8, 8, (1, 1))
    assert changed[:4, :4].all()
    assert not changed[4:, :].any() and not changed[:, 4:].any()


def test_shifted_block_crosses_window_borders_but_not_the_wrap_around():
    torch.manual_seed(0)
    block = SwinBlock(8, heads=2, window=4, shift=2).eval()
    changed = _influence(block, 8, 8, (3, 3))
    # shifted window covering rows/cols 2..5 now reaches across the plain-window border
    assert changed[2:6, 2:6].all()
    assert not changed[0:2, :].any() and not changed[:, 0:2].any()
    # a corner pixel: the cyclic shift puts it next to the opposite edge; the mask keeps them apart
    changed = _influence(block, 8, 8, (7, 7))
    assert changed[6:8, 6:8].all()
    assert not changed[0:6, :].any() and not changed[:, 0:6].any()


def test_mask_separates_regions():
    allowed = shifted_window_mask(8, 8, 4, 2)
    assert allowed.shape == (4, 16, 16)
    assert allowed[0].all()  # the top-left window holds one region
    assert not allowed[3].all() and allowed[3].diagonal().all()


def test_bottleneck_in_unet_runs_and_trains():
    config = UNetConfig(spatial_dims=2, in_channels=1, cond_channels=1, base_channels=16, channel_mult=(1, 2),
                        num_res_blocks=1, norm_groups=8, middle_attention=False)
    middle = SwinBottleneck(32, config.embed_channels, window=4, heads=2, norm_groups=8)
    net = UNet(config, middle=middle)
    x = torch.randn(2, 1, 12, 12)  # bottleneck 6x6: padded to 8x8 inside
    out = net(x, torch.tensor([3.0, 500.0]), concat=torch.randn(2, 1, 12, 12))
    assert out.shape == x.shape
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    net(x, torch.tensor([3.0, 500.0]), concat=x).square().mean().backward()
    grads = [p.grad for p in middle.blocks.parameters()]
    assert all(g is not None for g in grads)
    assert middle.out_proj.weight.grad.abs().sum() > 0
