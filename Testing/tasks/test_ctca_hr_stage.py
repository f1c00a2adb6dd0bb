"""The high-resolution (patch) stage with tiny random-weight models: each stage samples with its own card's
defaults, the LR-only vs LR + HR evaluation and its seam measure, and the condition of training crops."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctca_helpers import tiny_config
from meddiffcore.cli import main as cli_main
from meddiffcore.io import read_volume, write_volume
from meddiffcore.models import ModelCard, find_model, save_model, verify_model
from meddiffcore.tasks.ctca.config import DataConfig
from meddiffcore.tasks.ctca.data import CTCADataset, low_resolution_reference
from meddiffcore.tasks.ctca.evaluate import evaluate_high_resolution, seam_ratio
from meddiffcore.tasks.ctca.model import build_network, condition, model_card
from meddiffcore.tasks.ctca.phantom import make_phantom

def _settings_event(stdout: str) -> dict:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    (line,) = [e["message"] for e in events if e["event"] == "log" and e["message"].startswith("settings: ")]
    return json.loads(line[len("settings: "):])


def _save(folder: Path, name: str, stage: str, steps: int, guidance: float, **kwargs) -> Path:
    """A random-weight tiny model whose card asks for ``steps`` and ``guidance`` by default."""
    config = tiny_config(name, stage, **kwargs)
    config.diffusion.sampler, config.diffusion.steps, config.diffusion.guidance = "ancestral", steps, guidance
    torch.manual_seed(0)
    net = build_network(config)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return save_model(folder, model_card(config), net.state_dict()).card_path


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("meddiff_home")
    _save(root / "models", "ctca-tiny-lr3", "lr", steps=3, guidance=2.0)
    _save(root / "models", "ctca-tiny-hr2", "patch", steps=2, guidance=1.0, shape=(32, 32, 32), spacing_mm=3.0,
          crop=(16, 16, 16))
    return root


@pytest.fixture(autouse=True)
def _home_env(home, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(home))


def _small_labels(tmp_path: Path, shape=(20, 20, 20), spacing=3.0) -> Path:
    path = tmp_path / "labels.nii.gz"
    write_volume(make_phantom(7, shape, spacing, with_ct=False).labels, path)
    return path


def test_each_stage_samples_with_its_own_cards_defaults_unless_asked(tmp_path, capsys):
    labels = _small_labels(tmp_path)
    out = tmp_path / "ct.nii.gz"
    assert cli_main(["synthesize", "--labels", str(labels), "--out", str(out), "--model", "ctca-tiny-lr3",
                     "--hr-model", "ctca-tiny-hr2", "--seed", "1", "--progress", "json"]) == 0
    settings = _settings_event(capsys.readouterr().out)
    assert (settings["steps"], settings["guidance"]) == (3, 2.0)  # the LR card's defaults
    hr_stage = settings["stages"][1]
    assert (hr_stage["steps"], hr_stage["guidance"], hr_stage["sampler"]) == (2, 1.0, "ancestral")  # the HR card's
    assert settings["network_evaluations_per_volume"] == 3 + 2  # one denoiser call per ancestral step of each stage
    out2 = tmp_path / "ct2.nii.gz"
    assert cli_main(["synthesize", "--labels", str(labels), "--out", str(out2), "--model", "ctca-tiny-lr3",
                     "--hr-model", "ctca-tiny-hr2", "--seed", "1", "--steps", "1", "--guidance", "1.5",
                     "--progress", "json"]) == 0
    settings = _settings_event(capsys.readouterr().out)
    assert (settings["stages"][1]["steps"], settings["stages"][1]["guidance"]) == (1, 1.5)  # asked: both stages


def test_hr_evaluation_scores_lr_only_and_lr_hr_on_the_fine_grid_and_stores_them(home, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(home / "models" / f"ctca-tiny-hr2{suffix}", folder / f"ctca-tiny-hr2{suffix}")
    hr_ref = str(folder / "ctca-tiny-hr2.json")
    f = evaluate_high_resolution("ctca-tiny-lr3", hr_ref, phantoms=1, samples=1, steps=1, seed=0, device="cpu",
                                 json_path=str(tmp_path / "hr.json"), update_card=True)
    assert f["held_out"]["grid"] == [32, 32, 32] and f["held_out"]["spacing_mm"] == 3.0
    assert f["settings"]["lr"]["steps"] == f["settings"]["hr"]["steps"] == 1
    for key in ("lr_only", "lr_hr", "phantom_ct"):
        assert all(0.0 <= v <= 1.0 for v in f["dice"][key].values())
    assert f["dice"]["phantom_ct"]["contrast"] > 0.8  # the phantom's own CT: the ceiling
    assert f["blood_pool_hu"]["phantom_ct"] > 200 and f["blood_pool_hu"]["lr_only"] != f["blood_pool_hu"]["lr_hr"]
    assert np.isfinite(f["seam_ratio"]["lr_hr"]) and f["time_per_volume_s"]["hr"] > 0
    assert json.loads((tmp_path / "hr.json").read_text())["hr_model"] == "ctca-tiny-hr2"
    card = ModelCard.from_json_file(folder / "ctca-tiny-hr2.json")
    assert card.metrics["evaluation"]["dice"] == f["dice"]
    assert card.metrics["evaluation_command"].startswith("meddiff evaluate ctca --model ctca-tiny-lr3 --hr-model ")
    verify_model(find_model(hr_ref))  # the weights are untouched
    # the command line prints the table
    assert cli_main(["evaluate", "ctca", "--model", "ctca-tiny-lr3", "--hr-model", hr_ref, "--phantoms", "1",
                     "--samples", "1", "--steps", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "LR only" in text and "LR + HR" in text and "seam ratio" in text


def test_seam_ratio_finds_a_jump_at_a_patch_edge_and_none_without():
    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(64, 64, 64))
    patch, overlap = (32, 32, 32), (8, 8, 8)  # patch starts 0 and 32 along each axis
    assert seam_ratio(smooth, patch, overlap) < 1.3
    seam = smooth.copy()
    seam[32:] += 1.0  # a step where the second patch along z begins
    assert seam_ratio(seam, patch, overlap) > 3.0
    inside = smooth.copy()
    inside[20:] += 1.0  # the same step away from every patch edge is not a seam
    assert seam_ratio(inside, patch, overlap) < 1.3


def test_training_crop_condition_equals_the_whole_volumes_condition_cropped():
    """The dataset builds the condition of its crop only (a 128^3 volume at 1 mm is too big to one-hot per item):
    labels, reference and the positions in the whole grid are those of the whole-volume map, cropped."""
    config = tiny_config("crop", "patch", shape=(32, 32, 32), spacing_mm=2.0, crop=(16, 12, 8))
    config.data = DataConfig(num_phantoms=1, shape=(32, 32, 32), spacing_mm=2.0, crop=(16, 12, 8),
                             reference_spacing_mm=4.0)
    dataset = CTCADataset(config)
    torch.manual_seed(3)
    item = dataset[0]
    labels, ct = dataset.volume(0)
    torch.manual_seed(3)
    starts = [int(torch.randint(0, n - c + 1, ()).item()) for n, c in zip(ct.shape, (16, 12, 8))]
    region = (slice(None),) + tuple(slice(s, s + c) for s, c in zip(starts, (16, 12, 8)))
    whole = condition(labels, "patch", low_resolution_reference(ct, 2.0))
    assert item["segmap"].shape == (13, 16, 12, 8) and torch.equal(item["segmap"], whole[region])
    # the positions are those of the whole grid, not the crop's own [-1, 1]
    assert not torch.equal(item["segmap"][-3:], condition(labels[region[1:]], "patch",
                                                          low_resolution_reference(ct, 2.0)[region[1:]])[-3:])
