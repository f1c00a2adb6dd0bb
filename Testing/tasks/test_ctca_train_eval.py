"""Training pieces (hybrid loss, condition dropout, a tiny run that exports a loadable model),
evaluation metrics on known cases, and the prepare round trip."""

import json

import numpy as np
import pytest
import torch

from ctca_helpers import tiny_config
from meddiffcore.io import read_volume, write_volume
from meddiffcore.tasks.ctca.config import HU_WINDOW, hu_to_model, model_to_hu
from meddiffcore.tasks.ctca.evaluate import adherence, nearest_rmse
from meddiffcore.tasks.ctca.labels import CORONARY
from meddiffcore.tasks.ctca.model import build_network, condition
from meddiffcore.tasks.ctca.phantom import make_phantom
from meddiffcore.tasks.ctca.train import TASK


def test_hu_window_is_fixed_not_per_volume():
    assert HU_WINDOW == (-1024.0, 1024.0)
    a = np.array([-1024.0, 0.0, 400.0, 1024.0])
    np.testing.assert_allclose(hu_to_model(a), [-1.0, 0.0, 400 / 1024, 1.0])
    np.testing.assert_allclose(hu_to_model(a[:2]), [-1.0, 0.0])  # same mapping whatever else is in the volume
    np.testing.assert_allclose(model_to_hu(hu_to_model(a)), a, atol=1e-3)


def test_hybrid_loss_trains_mean_and_variance():
    config = tiny_config(shape=(16, 16, 16))
    net = build_network(config)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    ph = make_phantom(1, (16, 16, 16), 8.0)
    x0 = torch.as_tensor(hu_to_model(ph.ct.array))[None, None]
    segmap = condition(ph.labels.array, "lr")[None]
    config.diffusion.cond_drop_prob = 0.0
    loss, terms = TASK.training_loss(net, {"x": x0, "segmap": segmap}, config, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and terms["vlb"] > 0 and terms["mse"] > 0
    loss.backward()
    out_w = net.out[-1].weight.grad
    assert out_w[0].abs().sum() > 0 and out_w[1].abs().sum() > 0  # both eps and variance channels learn


def test_condition_dropout_zeroes_labels_only_for_dropped_items():
    config = tiny_config(shape=(8, 8, 8))
    config.diffusion.cond_drop_prob = 1.0
    seen = {}

    def net(x, t, segmap):
        seen["segmap"] = segmap
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    batch = {"x": torch.zeros(2, 1, 8, 8, 8), "segmap": torch.ones(2, 9, 8, 8, 8)}
    TASK.training_loss(net, batch, config, None)
    assert seen["segmap"].abs().sum() == 0
    config.diffusion.cond_drop_prob = 0.0
    TASK.training_loss(net, batch, config, None)
    assert torch.equal(seen["segmap"], batch["segmap"])


def test_tiny_training_run_exports_a_model_that_synthesises(tmp_path, monkeypatch):
    from meddiffcore.tasks.ctca.model import load_ctca_model
    from meddiffcore.tasks.ctca.synthesis import SynthesisSettings, synthesize
    from meddiffcore.train.loop import train

    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    config = tiny_config(shape=(16, 16, 16), spacing_mm=8.0, crop=(8, 8, 8))
    config.train.steps, config.train.out_dir, config.train.device, config.train.preview_every = 3, str(tmp_path / "run"), "cpu", 3
    config.train.checkpoint_every, config.train.log_every = 3, 1
    files = train(TASK, config)
    card = json.loads(files.card_path.read_text())
    assert card["task"] == "ctca" and card["task_config"]["hu_window"] == [-1024.0, 1024.0]
    assert card["task_config"]["labels"]["8"] == "coronary_arteries" and card["training"]["weights"] == "EMA"
    model = load_ctca_model(str(files.card_path))
    labels = make_phantom(5, (16, 16, 16), 8.0, with_ct=False).labels
    ct = synthesize(labels, model, SynthesisSettings(steps=2), generator=torch.Generator().manual_seed(0))
    assert ct.same_grid(labels) and ct.array.dtype == np.int16
    assert list((tmp_path / "run" / "previews").glob("*.png"))


def test_adherence_on_known_cases():
    ph = make_phantom(8)
    labels, ct = ph.labels.array, ph.ct.array.astype(np.float32)
    good = adherence(ct, labels, 2.0)
    assert good["dice"]["contrast"] > 0.9 and good["dice"]["myocardium"] > 0.8 and good["dice"]["coronary"] > 0.4
    assert 300 <= good["mean_hu"]["aorta"] <= 460
    ideal = np.where(labels == CORONARY, 400.0, np.where(labels == 1, 100.0, np.where(labels > 1, 400.0, -100.0)))
    assert adherence(ideal, labels, 2.0)["dice"]["coronary"] == pytest.approx(1.0)
    flat = adherence(np.zeros_like(ct), labels, 2.0)
    assert flat["dice"]["contrast"] == 0.0 and flat["dice"]["coronary"] == 0.0


def test_memorisation_distance_and_diversity_metric():
    from meddiffcore.metrics import ms_ssim

    a, b = make_phantom(1).ct.array.astype(np.float32), make_phantom(2).ct.array.astype(np.float32)
    assert nearest_rmse(a, [b, a]) == 0.0
    assert nearest_rmse(a, [b]) > 50
    assert ms_ssim(a, a, data_range=2048) == pytest.approx(1.0)
    assert ms_ssim(a, b, data_range=2048) < 0.95


def test_prepare_round_trip(tmp_path):
    """ImageCAS-style image + coronary label + TotalSegmentator heart labels -> fixed-spacing training pair."""
    from meddiffcore.tasks.ctca.prepare import prepare

    ph = make_phantom(9, (50, 60, 56), 1.5)
    heart = np.where(ph.labels.array == CORONARY, 0, ph.labels.array).astype(np.uint8)
    coronary = (ph.labels.array == CORONARY).astype(np.uint8)
    for sub, vol in (("img", ph.ct), ("cor", ph.labels.with_array(coronary)), ("heart", ph.labels.with_array(heart))):
        (tmp_path / sub).mkdir()
    write_volume(ph.ct, tmp_path / "img" / "17.img.nii.gz")
    write_volume(ph.labels.with_array(coronary), tmp_path / "cor" / "17.label.nii.gz")
    write_volume(ph.labels.with_array(heart), tmp_path / "heart" / "17.nii.gz")
    n = prepare(tmp_path / "img", tmp_path / "cor", tmp_path / "heart", tmp_path / "out", spacing_mm=3.0, shape=(32, 32, 32))
    assert n == 1
    image, labels = read_volume(tmp_path / "out" / "images" / "17.nii.gz"), read_volume(tmp_path / "out" / "labels" / "17.nii.gz")
    assert image.shape == labels.shape == (32, 32, 32) and image.same_grid(labels)
    np.testing.assert_allclose(image.spacing, [3.0, 3.0, 3.0])
    assert set(np.unique(labels.array)) == set(range(9))  # joined: heart 1-7 and coronaries 8
    assert image.array.dtype == np.int16 and image.array[labels.array == 6].mean() > 250  # HU kept, not min/max scaled
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["hu_window"] == [-1024.0, 1024.0] and meta["cases"] == ["17"]
    # the same physical point has the same label before and after
    centre = labels.ijk_to_ras_points([[16, 16, 16]])[0]
    ijk = np.round(ph.labels.ras_to_ijk_points([centre])[0]).astype(int)
    assert labels.array[16, 16, 16] == ph.labels.array[ijk[2], ijk[1], ijk[0]]


def test_evaluate_command_prints_and_stores_figures(tmp_path, monkeypatch, capsys):
    from ctca_helpers import save_tiny_model
    from meddiffcore.cli import main as cli_main

    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path))
    card_path = save_tiny_model(tmp_path / "models", "ctca-tiny")
    rc = cli_main(["evaluate", "ctca", "--model", "ctca-tiny", "--phantoms", "1", "--samples", "2", "--steps", "2",
                   "--json", str(tmp_path / "fig.json"), "--update-card", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "MS-SSIM between samples" in text and "nearest-training RMSE" in text
    figures = json.loads((tmp_path / "fig.json").read_text())
    assert 0 < figures["ms_ssim_between_samples"] < 1
    assert figures["memorisation"]["training_volumes_searched"] == 4 and figures["memorisation"]["sample_nearest_rmse_hu"] > 0
    assert set(figures["dice"]["synthetic"]) == {"contrast", "coronary", "myocardium"}
    card = json.loads(card_path.read_text())
    assert card["metrics"]["evaluation"]["held_out"]["phantoms"] == 1
    from meddiffcore.models import find_model, verify_model

    verify_model(find_model("ctca-tiny"))  # the card still matches its weights
