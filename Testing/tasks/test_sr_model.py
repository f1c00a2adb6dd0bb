"""SR cascade pieces: resampling baselines, geometry of an upscale, stage networks, bundling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiffcore.errors import ConfigError, ModelError
from meddiffcore.io import Volume
from meddiffcore.tasks.sr.cascade import bundle_cascade, load_stages
from meddiffcore.tasks.sr.model import sample_stage, training_loss
from meddiffcore.tasks.sr.resample import downsample_area, upsample_bilinear, upsample_interpolate
from meddiffcore.tasks.sr.run import upscaled_ijk_to_ras
from meddiffcore.tasks.sr.train import TASK, spec_of
from volume_helpers import install_tiny_sr_cascade, sr_stage_config


@pytest.mark.parametrize("method, tolerance", [("bicubic", 1e-4), ("lanczos", 0.05)])
def test_interpolation_follows_a_linear_ramp_on_half_pixel_centres(method, tolerance):
    """Keys' cubic reproduces linear functions exactly; Lanczos-3 only nearly (its weights are not a partition of unity in x)."""
    low = np.tile(np.arange(16, dtype=np.float32), (16, 1))  # value = x index
    up = upsample_interpolate(low, 32, method)
    expected = (np.arange(32) + 0.5) / 2 - 0.5  # new pixel centres in old index units
    np.testing.assert_allclose(up[8, 6:26], expected[6:26], atol=tolerance)
    np.testing.assert_allclose(upsample_interpolate(np.full((8, 8), 3.0), 16, method), 3.0, atol=1e-6)


def test_area_downsampling_and_bilinear_upsampling_shapes_and_means():
    image = torch.rand(2, 1, 16, 16)
    low = downsample_area(image, 2)
    assert low.shape == (2, 1, 8, 8)
    torch.testing.assert_close(low.mean(), image.mean())
    assert upsample_bilinear(low, 16).shape == image.shape


def test_upscaled_geometry_halves_spacing_and_keeps_the_extent():
    volume = Volume.from_spacing(np.zeros((3, 8, 8), dtype=np.float32), spacing_mm=(2.0, 3.0, 5.0),
                                 origin_ras=(10.0, 20.0, 30.0), direction_ras=np.diag([-1.0, 1.0, 1.0]))
    up = Volume(np.zeros((3, 16, 16), dtype=np.float32), upscaled_ijk_to_ras(volume.ijk_to_ras, 2))
    np.testing.assert_allclose(up.spacing, (1.0, 1.5, 5.0))
    np.testing.assert_allclose(up.direction, volume.direction)
    # the outer corners of the first and last pixels coincide (same field of view)
    old_ij, new_ij = volume.ijk_to_ras[:3, :2].sum(1), up.ijk_to_ras[:3, :2].sum(1)
    np.testing.assert_allclose(volume.origin - old_ij / 2, up.origin - new_ij / 2, atol=1e-9)
    np.testing.assert_allclose(volume.origin + old_ij * 7.5, up.origin + new_ij * 15.5, atol=1e-9)


def test_stage_network_has_a_swin_bottleneck_and_trains():
    config = sr_stage_config("sr128", 16, noise_augmentation=0.1)
    net = TASK.build_network(config)
    assert type(net.middle).__name__ == "SwinBottleneck"
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    torch.nn.init.normal_(net.middle.out_proj.weight, std=0.1)  # zero at init: the Swin pair starts as the identity
    image = torch.stack([TASK.build_dataset(config)[i]["image"] for i in range(2)])
    loss = training_loss(net, spec_of(config), image, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and net.middle.blocks[1].attn.qkv.weight.grad.abs().sum() > 0


def test_noise_augmentation_requires_the_level_embedding():
    config = sr_stage_config("sr128", 16, noise_augmentation=0.1)
    config.network.embedding_channels = 0
    with pytest.raises(ConfigError, match="embedding_channels"):
        TASK.build_network(config)


def test_bundle_round_trip_prefixes_keys_and_keeps_every_stage(tmp_path):
    name = install_tiny_sr_cascade(tmp_path)
    card, stages = load_stages(str(tmp_path / "models" / f"{name}.json"), torch.device("cpu"))
    assert list(stages) == ["base", "sr128", "sr256"]
    assert card.task_config["bundled"] and set(card.network) == {"base", "sr128", "sr256"}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "models" / f"{name}.safetensors"), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"base", "sr128", "sr256"}
    spec, net = stages["sr256"]
    low = torch.zeros(1, 1, 16, 16)
    assert sample_stage(net, spec, 1, low=low, steps=2).shape == (1, 1, 32, 32)


def test_bundle_refuses_stages_of_non_consecutive_sizes(tmp_path):
    from meddiffcore.models import save_model

    refs = []
    for stage, size in (("base", 8), ("sr128", 32)):
        config = sr_stage_config(stage, size)
        refs.append(str(save_model(tmp_path, TASK.model_card(config), TASK.build_network(config).state_dict()).card_path))
    with pytest.raises(ModelError, match="expects 16 px"):
        bundle_cascade(refs, "bad", tmp_path / "out")


def test_real_256_stage_config_builds_and_runs_at_256():
    """The shipped 128 -> 256 config (narrowed to 8 base channels to stay fast on a CPU) runs a 256^2 slice."""
    from pathlib import Path

    import meddiffcore
    from meddiffcore.train import load_training_config

    path = Path(meddiffcore.__file__).parent / "configs" / "sr-sr256.toml"
    task, config = load_training_config(str(path), ["network.base_channels=8", "network.num_res_blocks=1"])
    spec = spec_of(config)
    assert (spec.low_size, spec.size) == (128, 256)
    net = task.build_network(config).eval()
    out = sample_stage(net, spec, 1, low=torch.zeros(1, 1, 128, 128), steps=1)
    assert out.shape == (1, 1, 256, 256)
