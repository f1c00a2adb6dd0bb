"""`meddiff models import-checkpoint`: the authors' files become normal MedDiff models, or are refused
with a message naming the problem, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meddiffcore.cli import main as cli_main
from meddiffcore.errors import EXIT_STATUS, ErrorCode
from meddiffcore.models import find_model, list_models, sha256_file, verify_model
from published_helpers import (CTP, CTP_TINY, MRNET_SMALL, TPDM, TPDM_TINY, WDM, WDM_TINY, as_set_options,
                               save_small_mrnet_release)

WDM_FILE = WDM / "wdm_tiny_brats_1200000.pt"
TPDM_FILE = TPDM / "tpdm_tiny_checkpoint.pth"
CTP_FILE = CTP / "ctp_tiny_model-tiny.pt"


def _import(*args: str) -> int:
    return cli_main(["models", "import-checkpoint", *args])


def _nothing_written(home: Path) -> bool:
    folder = home / "models"
    return not folder.exists() or not any(folder.iterdir())


def test_wdm_checkpoint_becomes_a_verified_model_whose_card_records_source_and_conventions(meddiff_home, capsys):
    assert _import("--format", "wdm", str(WDM_FILE), *as_set_options(WDM_TINY)) == 0
    assert "imported wdm-brats" in capsys.readouterr().out  # variant guessed from the file name
    card = verify_model(find_model("wdm-brats"))
    assert card.task == "wdm" and "wdm-brats" in [c.name for c in list_models()]
    assert card.training["source_sha256"] == [sha256_file(WDM_FILE)]
    assert card.training["source_files"] == [WDM_FILE.name] and "WDM" in card.training["paper"]
    assert card.task_config["authors_sampler"] == {"sampler": "ancestral", "steps": 1000, "spacing": "uniform",
                                                   "variance": "large"}
    assert card.diffusion["sampling_steps"] <= 50 and card.task_config["spacing_mm"] == [2.0, 2.0, 2.0]
    assert card.task_config["conventions"]["parameterisation"].startswith("x0")
    assert card.network["base_channels"] == 8 and card.network["skip_mode"] == "add"
    assert (meddiff_home / "models" / "wdm-brats.safetensors").parent == find_model("wdm-brats").card_path.parent


def test_tpdm_pair_becomes_one_recon_model_with_the_schedule_read_from_the_sigma_table(meddiff_home, tmp_path):
    out = tmp_path / "my-models"
    assert _import("--format", "tpdm", "--variant", "bmr", str(TPDM_FILE), str(TPDM_FILE), "--name", "bmr_tiny",
                   "--out-dir", str(out), *as_set_options(TPDM_TINY)) == 0
    card = verify_model(find_model(out / "bmr_tiny.json"))
    assert card.task == "recon" and card.network["architecture"] == "ncsnpp"
    assert (card.diffusion["sigma_min"], card.diffusion["sigma_max"], card.diffusion["num_timesteps"]) == \
        pytest.approx((0.01, 378.0, 2000))
    assert card.training["source_sha256"] == [sha256_file(TPDM_FILE)] * 2 and card.training["primary_step"] == 123
    assert card.task_config["primary_plane"] == "xyz" and card.task_config["defaults"]["tpdm"]["steps"] == 2000
    assert _nothing_written(meddiff_home)  # only the folder the user named


class _NotATensor:
    pass


@pytest.mark.parametrize("fmt, count", [("wdm", 1), ("ctp", 1), ("mrnet", 3)])
def test_a_file_that_would_run_code_is_refused(meddiff_home, tmp_path, capsys, fmt, count):
    unsafe = tmp_path / "brats_unet_128_1200k.pt"
    torch.save({"time_embed.0.weight": torch.zeros(2), "payload": _NotATensor()}, unsafe)
    assert _import("--format", fmt, *[str(unsafe)] * count) == EXIT_STATUS[ErrorCode.MODEL]
    err = capsys.readouterr().err
    assert "not a plain tensor file" in err and "weights_only=True" in err
    assert _nothing_written(meddiff_home)


def test_a_checkpoint_of_another_configuration_names_the_first_mismatches(meddiff_home, capsys):
    assert _import("--format", "wdm", str(WDM_FILE)) == EXIT_STATUS[ErrorCode.MODEL]  # released config expected
    err = capsys.readouterr().err
    assert "time_embed.0.weight has shape [32, 8], this WDM UNet needs [256, 64]" in err and "more)" in err
    assert "--set" in err and _nothing_written(meddiff_home)


def test_a_tpdm_file_is_not_taken_for_wdm_and_a_truncated_file_is_refused(meddiff_home, tmp_path, capsys):
    assert _import("--format", "wdm", "--variant", "lidc", str(TPDM_FILE)) == EXIT_STATUS[ErrorCode.MODEL]
    assert "holds none of the tensors of this WDM UNet (its keys: 'optimizer', 'model'" in capsys.readouterr().err
    truncated = tmp_path / "lidc.pt"
    truncated.write_bytes(WDM_FILE.read_bytes()[:5000])
    assert _import("--format", "wdm", str(truncated)) == EXIT_STATUS[ErrorCode.MODEL]
    assert "cannot be read as a PyTorch file" in capsys.readouterr().err
    assert _nothing_written(meddiff_home)


def test_an_ema_list_that_does_not_fit_and_mismatched_pairs_are_refused(meddiff_home, tmp_path, capsys):
    container = torch.load(TPDM_FILE, weights_only=True)
    container["ema"]["shadow_params"] = container["ema"]["shadow_params"][:-1]
    short = tmp_path / "short.pth"
    torch.save(container, short)
    args = ["--format", "tpdm", "--variant", "aapm", *as_set_options(TPDM_TINY)]
    assert _import(*args, str(short), str(TPDM_FILE)) == EXIT_STATUS[ErrorCode.MODEL]
    assert "the EMA holds 255 tensors, this NCSN++ has 256" in capsys.readouterr().err
    container = torch.load(TPDM_FILE, weights_only=True)
    container["model"]["module.sigmas"] = torch.exp(torch.linspace(6.0, -4.0, 2000, dtype=torch.float64))
    other = tmp_path / "other.pth"
    torch.save(container, other)
    assert _import(*args, str(TPDM_FILE), str(other)) == EXIT_STATUS[ErrorCode.MODEL]
    assert "different noise tables" in capsys.readouterr().err
    assert _import(*args, str(TPDM_FILE)) == EXIT_STATUS[ErrorCode.BAD_CONFIG]  # a pair needs two files
    assert _nothing_written(meddiff_home)


def test_names_existing_models_and_missing_files(meddiff_home, tmp_path, capsys):
    args = ["--format", "wdm", "--variant", "brats", str(WDM_FILE), *as_set_options(WDM_TINY)]
    assert _import(*args, "--name", "../escape") == EXIT_STATUS[ErrorCode.BAD_CONFIG]
    assert _import(*args, "--name", "mine") == 0
    before = (meddiff_home / "models" / "mine.json").read_text()
    assert _import(*args, "--name", "mine") == EXIT_STATUS[ErrorCode.MODEL]
    assert "already exists" in capsys.readouterr().err
    assert (meddiff_home / "models" / "mine.json").read_text() == before
    assert _import(*args, "--name", "mine", "--replace") == 0
    assert json.loads((meddiff_home / "models" / "mine.json").read_text())["created"]
    assert _import("--format", "wdm", str(tmp_path / "nothing.pt")) == EXIT_STATUS[ErrorCode.BAD_INPUT]
    assert _import("--format", "cwdm", str(WDM_FILE)) == EXIT_STATUS[ErrorCode.BAD_CONFIG]  # which contrast?
    assert "--variant" in capsys.readouterr().err


def test_ctp_checkpoint_becomes_a_ctp_model_with_its_ema_schedule_and_the_authors_conventions(meddiff_home, capsys):
    assert _import("--format", "ctp", str(CTP_FILE), *as_set_options(CTP_TINY)) == 0
    assert "imported ctp-bae2024" in capsys.readouterr().out  # the one release
    card = verify_model(find_model("ctp-bae2024"))
    assert card.task == "ctp" and card.network["architecture"] == "ctp_bae2024"
    assert card.training["source_sha256"] == [sha256_file(CTP_FILE)] and card.training["step"] == 599999
    assert "EMA" in card.training["weights"] and "MICCAI 2024" in card.training["paper"]
    schedule = card.diffusion["schedule"]
    assert (schedule["num_timesteps"], schedule["beta_start"], schedule["beta_end"]) == pytest.approx((1500, 1e-6, 1e-2))
    assert (card.diffusion["target"], card.diffusion["prediction"], card.diffusion["clip_x0"]) == ("frame", "eps", True)
    assert card.task_config["authors_sampler"]["steps"] == 1500 and card.task_config["slab_slices"] == 8
    assert (card.task_config["window_level_hu"], card.task_config["window_width_hu"]) == (40.0, 80.0)
    assert card.task_config["conventions"]["channels"].startswith("network input [left acquired frame, noisy")


def test_ctp_files_without_ema_of_another_size_or_schedule_are_refused(meddiff_home, tmp_path, capsys):
    assert _import("--format", "ctp", str(CTP_FILE)) == EXIT_STATUS[ErrorCode.MODEL]  # released config expected
    err = capsys.readouterr().err
    assert "does not fit this CTP UNet" in err and "global_context_embed_matrix has shape [3, 128], this CTP UNet " \
        "needs [3, 256]" in err and "--set" in err
    container = torch.load(CTP_FILE, weights_only=True)
    no_ema = tmp_path / "model-29.pt"
    torch.save({"step": 1, "model": container["model"]}, no_ema)
    assert _import("--format", "ctp", str(no_ema), *as_set_options(CTP_TINY)) == EXIT_STATUS[ErrorCode.MODEL]
    assert "has no 'ema'" in capsys.readouterr().err
    container["ema"]["module.betas"] = torch.linspace(1e-4, 2e-2, 1500) ** 2
    bent = tmp_path / "bent.pt"
    torch.save(container, bent)
    assert _import("--format", "ctp", str(bent), *as_set_options(CTP_TINY)) == EXIT_STATUS[ErrorCode.MODEL]
    assert "beta table is not linear" in capsys.readouterr().err
    assert _import("--format", "ctp", str(CTP_FILE), str(CTP_FILE)) == EXIT_STATUS[ErrorCode.BAD_CONFIG]
    assert _nothing_written(meddiff_home)


def test_mrnet_stage_files_become_one_sr_cascade_with_t_read_from_each_file(meddiff_home, tmp_path, capsys):
    files = save_small_mrnet_release(tmp_path)
    assert _import("--format", "mrnet", *map(str, files), *as_set_options(MRNET_SMALL)) == 0
    assert "imported sr-mrnet " in capsys.readouterr().out  # the Swin cascade, told from the file count
    card = verify_model(find_model("sr-mrnet"))
    assert card.task == "sr" and card.task_config["bundled"] and list(card.task_config["stages"]) == \
        ["base", "sr128", "sr256"]
    stages = card.task_config["stages"]
    assert [stages[s]["diffusion"]["num_timesteps"] for s in stages] == [2000, 1000, 2000]  # from the files
    assert [stages[s]["authors_sampler"]["steps"] for s in stages] == [2000, 1000, 2000]
    assert [stages[s]["low_size"] for s in stages] == [0, 64, 128]
    base = stages["base"]["network"]
    assert base["architecture"] == "mrnet_unet" and base["self_attention"] and base["swin_token_layout"] == "authors"
    assert not stages["sr128"]["network"]["attention_gates"] and stages["sr256"]["network"]["in_channels"] == 2
    assert card.task_config["model_range"] == [0.0, 1.0] and "no clipping" in card.task_config["conventions"]["data_range"]
    assert card.training["source_sha256"] == [sha256_file(p) for p in files] and card.training["stages"]["base"]["epoch"] == 7
    assert "no EMA" in card.training["weights"]


def test_mrnet_files_of_another_release_order_or_schedule_are_refused(meddiff_home, tmp_path, capsys):
    files = save_small_mrnet_release(tmp_path)
    small = as_set_options(MRNET_SMALL)
    assert _import("--format", "mrnet", *map(str, files)) == EXIT_STATUS[ErrorCode.MODEL]  # released widths expected
    assert "encoder1.0.weight has shape [8, 129, 3, 3], this MRNet base UNet (64^2, Swin) needs [64, 129, 3, 3]" \
        in capsys.readouterr().err
    (tmp_path / "noswin").mkdir()
    noswin = save_small_mrnet_release(tmp_path / "noswin", swin=False)
    assert _import("--format", "mrnet", "--variant", "swin", *map(str, noswin), *small) == EXIT_STATUS[ErrorCode.MODEL]
    assert "missing swin_block.norm1.weight" in capsys.readouterr().err
    assert _import("--format", "mrnet", str(files[1]), str(files[0]), str(files[2]), *small) == \
        EXIT_STATUS[ErrorCode.MODEL]  # stages out of order
    assert "this MRNet base UNet" in capsys.readouterr().err
    container = torch.load(files[0], weights_only=True)
    container["model_state_dict"]["betas"] = torch.linspace(1e-4, 0.02, 2000)
    other = tmp_path / "other_base.pth"
    torch.save(container, other)
    assert _import("--format", "mrnet", str(other), str(files[1]), str(files[2]), *small) == EXIT_STATUS[ErrorCode.MODEL]
    assert "not the authors' linear 0.00085 .. 0.012" in capsys.readouterr().err
    assert _import("--format", "mrnet", "--variant", "swin", str(files[0]), *small) == EXIT_STATUS[ErrorCode.BAD_CONFIG]
    assert "give, in this order: swinddpm64RAW_checkpoint.pth" in capsys.readouterr().err
    assert _nothing_written(meddiff_home)
