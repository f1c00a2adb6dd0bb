"""The high-resolution (patch) stage with tiny random-weight models: each stage samples with its own card's
defaults, the LR-only vs LR + HR evaluation and its seam measure, the condition of training crops, where the
training reference sits, and the residual target."""

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
from meddiffcore.errors import ConfigError
from meddiffcore.io import Volume
from meddiffcore.io.volume import geometry_from_spacing
from meddiffcore.tasks.ctca.config import CTCAConfig, DataConfig, DiffusionConfig, hu_to_model, model_to_hu
from meddiffcore.tasks.ctca.data import CTCADataset, low_resolution_reference
from meddiffcore.tasks.ctca.evaluate import evaluate_high_resolution, seam_ratio
from meddiffcore.tasks.ctca.grid import resample, synthesis_grid
from meddiffcore.tasks.ctca.model import PatchCondition, build_network, condition, load_ctca_model, model_card
from meddiffcore.tasks.ctca.phantom import make_phantom
from meddiffcore.tasks.ctca.synthesis import SynthesisRecord, SynthesisSettings, high_resolution, low_resolution

def _settings_event(stdout: str) -> dict:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    (line,) = [e["message"] for e in events if e["event"] == "log" and e["message"].startswith("settings: ")]
    return json.loads(line[len("settings: "):])


def _save(folder: Path, name: str, stage: str, steps: int, guidance: float, **kwargs) -> Path:
    """A random-weight tiny model whose card asks for ``steps`` and ``guidance`` by default."""
    config = tiny_config(name, stage, **kwargs)
    config.diffusion.sampler, config.diffusion.steps, config.diffusion.guidance = "ancestral", steps, guidance
    return _save_config(folder, config)


def _save_config(folder: Path, config) -> Path:
    """``config``'s network with random weights (the zero-initialised layers too), saved as a model."""
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


def test_training_reference_sits_where_inference_puts_the_low_resolution_result():
    """The patch stage's training reference is what it gets at inference from a perfect LR result: the mean of the
    fine voxels inside each voxel of the coarse synthesis grid over the same box, resampled linearly onto the fine
    grid as high_resolution does. (It was a one-sided 2-voxel average zoomed corner to corner: half a fine voxel
    off along every axis, so the model learnt to shift what inference gives it.)"""
    shape = (16, 20, 24)
    labels = Volume(np.ones(shape, np.uint8), geometry_from_spacing((1.0, 1.0, 1.0), (5.0, -3.0, 7.0)), {})
    fine, fine_shape = synthesis_grid(labels, 1.0)
    coarse, coarse_shape = synthesis_grid(labels, 2.0)
    assert fine_shape == shape and np.allclose(fine, labels.ijk_to_ras)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ct = (10 * z + 4 * y - 6 * x - 50).astype(np.int16)  # a linear ramp in HU
    # a perfect LR result, by geometry: each coarse voxel holds the mean of the fine voxels whose centres it contains
    to_fine = np.linalg.inv(fine) @ coarse
    lr = np.empty(coarse_shape, np.float32)
    for k, j, i in np.ndindex(*coarse_shape):
        c = (to_fine @ [i, j, k, 1.0])[:3][::-1]  # the coarse centre in fine (z, y, x) indices
        inside = tuple(slice(int(np.ceil(v - 1.0)), int(np.floor(v + 1.0)) + 1) for v in c)
        lr[k, j, i] = hu_to_model(ct[inside].astype(np.float32).mean())
    expected = resample(lr, coarse, fine, shape, order=1, mode="nearest")
    reference = low_resolution_reference(ct, 2.0)
    np.testing.assert_allclose(reference, expected, atol=1e-5)
    inner = (slice(1, -1),) * 3  # between the outermost coarse centres a linear ramp is kept exactly
    np.testing.assert_allclose(model_to_hu(reference)[inner], ct[inner], atol=0.05)


def _residual_config(name: str = "ctca-tiny-res"):
    config = tiny_config(name, "patch", shape=(32, 32, 32), spacing_mm=2.0, crop=(16, 16, 16))
    config.data = DataConfig(num_phantoms=1, shape=(32, 32, 32), spacing_mm=2.0, crop=(16, 16, 16),
                             reference_spacing_mm=4.0)
    config.diffusion = DiffusionConfig(sampler="ancestral", steps=2, guidance=1.0, target="residual", residual_scale=8.0,
                                       start_sigma=1.5)
    return config


def test_a_residual_patch_model_trains_on_ct_minus_reference_and_samples_reference_plus_residual(tmp_path):
    config = _residual_config()
    dataset = CTCADataset(config)
    torch.manual_seed(3)
    item = dataset[0]
    labels, ct = dataset.volume(0)
    torch.manual_seed(3)
    starts = [int(torch.randint(0, n - 16 + 1, ()).item()) for n in ct.shape]
    region = tuple(slice(s, s + 16) for s in starts)
    reference = low_resolution_reference(ct, 2.0)
    np.testing.assert_allclose(item["x"][0].numpy(), 8.0 * (hu_to_model(ct[region]) - reference[region]), atol=1e-6)
    assert torch.equal(item["segmap"][9], torch.as_tensor(reference[region]))

    hr = load_ctca_model(str(_save_config(tmp_path, config)))
    assert hr.residual_scale == 8.0 and hr.card.diffusion["target"] == "residual" and hr.start_sigma == 1.5
    lr_model = load_ctca_model("ctca-tiny-lr3")
    ph = make_phantom(7, (20, 20, 20), 3.0, with_ct=False)
    settings = SynthesisSettings.of_model(hr, seed=0)
    with torch.no_grad():
        lr_grid, lr = low_resolution(lr_model, ph.labels, SynthesisSettings.of_model(lr_model, steps=1),
                                     torch.Generator().manual_seed(0), "cpu")
        seen, sigmas = [], []
        grid, x = high_resolution(hr, ph.labels, lr_grid, lr, settings, torch.Generator().manual_seed(1), "cpu",
                                  callback=lambda info: (seen.append(info["denoised"][0, 0].numpy().copy()),
                                                         sigmas.append(info["sigma"])))
    assert sigmas[0] == pytest.approx(1.5)  # the card's start, not the top of the schedule (~2e4)
    ref = resample(lr, lr_grid, grid, x.shape, order=1, mode="nearest")
    assert len(seen) == 2  # the last estimate is the sample (the step to sigma 0 returns it)
    for estimate in seen:  # every estimate is clamped so that reference + residual stays in the window
        assert np.all(np.abs(ref + estimate / 8.0) <= 1.0 + 1e-5)
    np.testing.assert_allclose(x, np.clip(ref + seen[-1] / 8.0, -1.0, 1.0), atol=1e-6)
    assert np.abs(x - seen[-1]).max() > 0.1  # the CT, not the residual


def test_the_residual_target_is_refused_without_a_reference():
    with pytest.raises(ConfigError, match="patch stage only"):
        CTCAConfig(stage="lr", diffusion=DiffusionConfig(target="residual"))
    with pytest.raises(ConfigError, match="unknown diffusion target"):
        DiffusionConfig(target="difference")


def test_the_hr_condition_cut_per_patch_equals_the_whole_grids_map_cut():
    labels = make_phantom(7, (20, 24, 28), 3.0, with_ct=False).labels.array
    reference = np.random.default_rng(0).uniform(-1, 1, labels.shape).astype(np.float32)
    lazy = PatchCondition(labels, reference)
    whole = condition(labels, "patch", reference)[None]
    assert lazy.shape == tuple(whole.shape) and lazy.ndim == whole.ndim
    for region in ((slice(0, 8), slice(4, 20), slice(10, 28)), (slice(12, 20), slice(0, 24), slice(0, 1))):
        assert torch.equal(lazy[(slice(None), slice(None)) + region], whole[(slice(None), slice(None)) + region])
    with pytest.raises(IndexError):
        lazy[0]


def test_the_hr_stage_never_builds_its_condition_over_the_whole_grid():
    """The largest tensor torch makes while the patch stage samples a 64^3 fine grid (16^3 patches) is no more than
    twice the grid's voxels (the sample and the blending sums); the whole-grid map was 13 channels of it.
    (Counted with a torch dispatch mode: torch's CPU allocator is not seen by tracemalloc.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    sizes = []

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes.extend(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            return out

    hr, lr_model = load_ctca_model("ctca-tiny-hr2"), load_ctca_model("ctca-tiny-lr3")
    ph = make_phantom(7, (64, 64, 64), 3.0, with_ct=False)
    with torch.no_grad():
        lr_grid, lr = low_resolution(lr_model, ph.labels, SynthesisSettings.of_model(lr_model, steps=1),
                                     torch.Generator().manual_seed(0), "cpu")
        record = SynthesisRecord()
        with Largest():
            grid, x = high_resolution(hr, ph.labels, lr_grid, lr, SynthesisSettings.of_model(hr, steps=1),
                                      torch.Generator().manual_seed(1), "cpu", record=record)
    voxels = int(np.prod(x.shape))
    assert x.shape == (64, 64, 64) and record.stages[-1]["patches"] > 8
    assert max(sizes) <= 2 * voxels, (max(sizes), voxels)


def test_a_patch_model_below_its_baseline_is_warned_whenever_it_runs(home, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(home / "models" / f"ctca-tiny-hr2{suffix}", folder / f"ctca-tiny-hr2{suffix}")
    card_path = folder / "ctca-tiny-hr2.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = {"below_baseline": {"high_resolution": "Dice 0.1 with this stage against 0.7 without"}}
    card_path.write_text(json.dumps(card))
    labels = _small_labels(tmp_path)
    for extra, expected in (([], 0), (["--hr-model", str(card_path)], 1)):
        assert cli_main(["synthesize", "--labels", str(labels), "--out", str(tmp_path / f"ct{expected}.nii.gz"),
                         "--model", "ctca-tiny-lr3", "--steps", "1", "--seed", "1", "--progress", "json", *extra]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        warned = [e["message"] for e in events if e["event"] == "log" and e.get("level") == "warning"
                  and "below its baseline" in e["message"]]
        assert len(warned) == expected and all("ctca-tiny-hr2" in w and "Dice 0.1" in w for w in warned), warned
