"""The recon prior pair trains with the common loop and exports ONE model with primary.* and auxiliary.* keys."""

from __future__ import annotations

import pytest
import torch

from meddiffcore.config import from_dict


@pytest.mark.parametrize("parameterization", ["ve", "vp"])
def test_train_two_steps_and_load(tmp_path, monkeypatch, parameterization):
    from safetensors.torch import load_file

    from meddiffcore.tasks.recon.config import ReconConfig
    from meddiffcore.tasks.recon.model import load_recon_model
    from meddiffcore.tasks.recon.train import TASK
    from meddiffcore.train.loop import train

    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    cfg = from_dict(ReconConfig, {
        "name": f"t-{parameterization}",
        "train": {"steps": 2, "batch_size": 4, "out_dir": str(tmp_path / "run"), "device": "cpu", "preview_every": 0,
                  "log_every": 1, "checkpoint_every": 2},
        "network": {"spatial_dims": 2, "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                    "middle_attention": False, "norm_groups": 4, "attention_head_channels": 8},
        "diffusion": {"parameterization": parameterization},
        "data": {"modality": "mri", "volumes": 1, "size": 16},
    })
    files = train(TASK, cfg)
    keys = load_file(str(files.weights_path)).keys()
    assert any(k.startswith("primary.") for k in keys) and any(k.startswith("auxiliary.") for k in keys)
    model = load_recon_model(str(files.card_path))
    assert model.card.task == "recon" and model.modality == "mri"
    assert (model.primary_plane, model.auxiliary_plane) == ("axial", "coronal")
    assert model.card.diffusion["parameterization"] == parameterization
    x = torch.rand(2, 1, 16, 16)
    sigma = torch.full((2,), 0.5)
    assert model.primary(x, sigma).shape == x.shape and model.auxiliary(x, sigma).shape == x.shape


def test_dataset_slices_along_both_planes():
    from meddiffcore.tasks.recon.config import DataConfig
    from meddiffcore.tasks.recon.data import PriorSliceDataset

    ds = PriorSliceDataset(DataConfig(modality="ct", volumes=2, size=16))
    assert len(ds) == 32
    item = ds[3]
    assert item["primary"].shape == (1, 16, 16) and item["auxiliary"].shape == (1, 16, 16)
    assert 0 <= float(item["primary"].min()) and float(item["primary"].max()) <= 1.0
