"""Tests of meddiffcore.nets: shapes, conditioning hooks, checkpointing, memory
formats, autocast, config round-trip and a tiny overfit run. Everything is tiny."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from meddiffcore.errors import BadInputError, ConfigError
from meddiffcore.nets import SPADEGroupNorm, UNet, UNetConfig, build_unet, count_parameters, timestep_embedding
from meddiffcore.nets.unet import NetInputError

TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, attention_head_channels=8,
            spade_hidden=8)


def tiny(**kw) -> UNetConfig:
    return UNetConfig(**{**TINY, **kw})


def perturb_output(net: UNet, seed: int = 0) -> UNet:
    """Give the zero-initialised layers random weights so every path reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one thread: these tensors are tiny, and extra threads only wait on a busy machine."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(spatial_dims=2), (2, 1, 16, 16)),
        (dict(spatial_dims=2, channel_mult=(1, 2, 2), down_strides=((2, 1), (2, 2))), (1, 1, 16, 8)),
        (dict(spatial_dims=3, channel_mult=(1, 2, 2), down_strides=((1, 2, 2), (1, 2, 2))), (1, 1, 3, 16, 16)),
        (dict(spatial_dims=3, attention_levels=(1,), resblock_updown=True, down_strides=((1, 2, 2),)), (2, 1, 5, 8, 8)),
        (dict(spatial_dims=3, skip_mode="add", channel_mult=(1, 2, 4), attention_levels=(0, 2)), (1, 2, 8, 8, 8)),
        (dict(spatial_dims=3, use_scale_shift_norm=False, middle_attention=False, out_channels=2), (1, 1, 4, 4, 4)),
    ],
)
def test_output_shape(kw, shape):
    cfg = tiny(**kw)
    if shape[1] != cfg.in_channels:
        cfg = tiny(**kw, in_channels=shape[1])
    net = UNet(cfg)
    y = net(torch.randn(shape), torch.rand(shape[0]) * 999)
    assert y.shape == (shape[0], cfg.out_channels, *shape[2:])


def test_anisotropic_strides_keep_z():
    cfg = tiny(spatial_dims=3, channel_mult=(1, 2, 2), down_strides=((1, 2, 2), (1, 2, 2)))
    assert cfg.size_multiple == (1, 4, 4)
    net = UNet(cfg)
    seen = []
    net.middle.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    net(torch.randn(1, 1, 3, 16, 16), torch.zeros(1))
    assert seen[0][2:] == (3, 4, 4)


def test_output_is_zero_at_init():
    net = UNet(tiny(spatial_dims=2))
    assert net(torch.randn(1, 1, 8, 8), torch.zeros(1)).abs().max() == 0


def test_timestep_embedding_handles_float_and_int():
    e = timestep_embedding(torch.tensor([0, 999]), 9)
    assert e.shape == (2, 9) and e.dtype == torch.float32
    assert not torch.allclose(timestep_embedding(torch.tensor([0.25]), 8), timestep_embedding(torch.tensor([0.5]), 8))


def test_time_changes_output():
    net = perturb_output(UNet(tiny(spatial_dims=2)))
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([1.0])), net(x, torch.tensor([1.5])))


# -- conditioning ----------------------------------------------------------------------------
COND = dict(spatial_dims=3, cond_channels=2, spade_channels=3, embedding_channels=4)


def _cond_inputs(b=2):
    return dict(concat=torch.randn(b, 2, 4, 8, 8), segmap=torch.randn(b, 3, 2, 4, 4), embedding=torch.randn(b, 4))


@pytest.mark.parametrize("name", ["concat", "segmap", "embedding"])
@pytest.mark.parametrize("spade_in_encoder", [False, True])
def test_each_conditioning_changes_output(name, spade_in_encoder):
    net = perturb_output(UNet(tiny(**COND, spade_in_encoder=spade_in_encoder))).eval()
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([10.0, 20.0])
    cond = _cond_inputs()
    y0 = net(x, t, **cond)
    cond2 = dict(cond)
    cond2[name] = cond[name] + torch.randn_like(cond[name])
    assert not torch.allclose(y0, net(x, t, **cond2), atol=1e-6)


@pytest.mark.parametrize("name", ["concat", "segmap", "embedding"])
def test_missing_conditioning_raises(name):
    net = UNet(tiny(**COND))
    cond = _cond_inputs()
    cond[name] = None
    with pytest.raises(ValueError, match=name):
        net(torch.randn(2, 1, 4, 8, 8), torch.zeros(2), **cond)


def test_unexpected_conditioning_raises():
    net = UNet(tiny(spatial_dims=2))
    with pytest.raises(ValueError, match="cond_channels=0"):
        net(torch.randn(1, 1, 8, 8), torch.zeros(1), concat=torch.randn(1, 1, 8, 8))


def test_spade_resize_linear_and_nearest():
    h = torch.randn(1, 8, 4, 4)
    seg = torch.randn(1, 2, 7, 5)
    for mode in ("nearest", "linear"):
        assert SPADEGroupNorm(2, 8, 2, 4, 4, resize=mode)(h, seg).shape == h.shape
    labels = torch.nn.functional.one_hot(torch.randint(0, 2, (1, 7, 5)), 2).permute(0, 3, 1, 2)  # int64
    assert SPADEGroupNorm(2, 8, 2, 4, 4)(h, labels).shape == h.shape
    with pytest.raises(ConfigError):
        SPADEGroupNorm(2, 8, 2, resize="cubic")


def test_custom_middle_is_called_with_h_and_emb():
    class Mid(torch.nn.Module):
        def forward(self, h, emb):
            self.shapes = (h.shape, emb.shape)
            return h

    cfg = tiny(spatial_dims=2)
    mid = Mid()
    net = UNet(cfg, middle=mid)
    net(torch.randn(1, 1, 8, 8), torch.zeros(1))
    assert mid.shapes == ((1, net.bottleneck_channels, 4, 4), (1, net.time_embed_channels))


# -- checkpointing, memory format, autocast ------------------------------------------------------
def _grads(net, x, t, **cond):
    net.zero_grad()
    net(x, t, **cond).square().mean().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_identical_gradients():
    cfg = tiny(**COND, attention_levels=(1,))
    net = perturb_output(UNet(cfg))
    ck = UNet(tiny(**COND, attention_levels=(1,), use_checkpoint=True))
    ck.load_state_dict(net.state_dict())
    x, t, cond = torch.randn(2, 1, 4, 8, 8), torch.tensor([3.0, 7.0]), _cond_inputs()
    g1, g2 = _grads(net, x, t, **cond), _grads(ck, x, t, **cond)
    assert g1.keys() == g2.keys() and len(g1) == len(list(net.parameters()))
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_matches_contiguous(spatial_dims):
    net = perturb_output(UNet(tiny(spatial_dims=spatial_dims, attention_levels=(1,)))).eval()
    shape = (2, 1, 8, 8) if spatial_dims == 2 else (2, 1, 4, 8, 8)
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    x, t = torch.randn(shape), torch.tensor([1.0, 2.0])
    with torch.no_grad():
        y = net(x, t)
        y_cl = net.to(memory_format=fmt)(x.to(memory_format=fmt), t)
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_is_finite_and_close():
    net = perturb_output(UNet(tiny(**COND, attention_levels=(1,)))).eval()
    x, t, cond = torch.randn(2, 1, 4, 8, 8), torch.tensor([5.0, 900.0]), _cond_inputs()
    with torch.no_grad():
        y = net(x, t, **cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = net(x, t, **cond)
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
    assert (y16.float() - y).abs().max() <= 0.05 * y.abs().max() + 1e-3


# -- configuration ----------------------------------------------------------------------------------
def test_config_json_round_trip():
    cfg = tiny(spatial_dims=3, channel_mult=(1, 2, 3), down_strides=((1, 2, 2), (2, 2, 2)), attention_levels=(2,),
               spade_channels=10, spade_resize="linear", time_embed_channels=48)
    back = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.down_strides[0], tuple) and isinstance(back.channel_mult, tuple)
    net = build_unet(json.loads(json.dumps(cfg.to_dict())))
    assert count_parameters(net) == count_parameters(UNet(cfg)) > 0


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="chanel_mult"):
        UNetConfig.from_dict({"chanel_mult": [1, 2]})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(down_strides=((1, 2),)), "down_strides"),
        (dict(channel_mult=(1, 2), down_strides=((2, 2, 2), (2, 2, 2))), "one stride per level"),
        (dict(attention_levels=(5,)), "attention_levels"),
        (dict(skip_mode="sum"), "skip_mode"),
        (dict(base_channels="64"), "base_channels"),
        (dict(norm_groups=0), "norm_groups"),
        (dict(spade_in_encoder=True), "spade_channels"),
    ],
)
def test_bad_config_values_explain(kw, match):
    with pytest.raises(ConfigError, match=match):
        UNetConfig(**kw)


def test_norm_groups_clamped_to_divide_channels():
    net = UNet(tiny(spatial_dims=2, base_channels=12, norm_groups=8))
    assert all(12 % m.num_groups == 0 for m in net.modules() if isinstance(m, torch.nn.GroupNorm) and m.num_channels == 12)
    net(torch.randn(1, 1, 8, 8), torch.zeros(1))


def test_indivisible_size_has_clear_error():
    net = UNet(tiny(spatial_dims=3, channel_mult=(1, 2, 2, 2)))
    with pytest.raises(NetInputError, match="input 60x64x64 is not divisible by 8 along z; pad or crop to a multiple of 8"):
        net(torch.randn(1, 1, 60, 64, 64), torch.zeros(1))
    with pytest.raises(BadInputError):
        net(torch.randn(1, 1, 64, 64, 60), torch.zeros(1))


def test_wrong_rank_and_channels_raise():
    net = UNet(tiny(spatial_dims=3))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        net(torch.randn(1, 1, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="in_channels=1"):
        net(torch.randn(1, 2, 4, 4, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="t must be"):
        net(torch.randn(2, 1, 4, 4, 4), torch.zeros(3))


# -- it trains -------------------------------------------------------------------------------------
def test_tiny_unet_overfits_one_batch():
    net = UNet(tiny(spatial_dims=2, attention_levels=(1,)))
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([10.0, 200.0, 500.0, 900.0])
    target = torch.randn(4, 1, 8, 8)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(100):
        loss = (net(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_state_dict_deepcopy_is_stable():
    net = UNet(tiny(spatial_dims=2))
    assert copy.deepcopy(net).config == net.config
