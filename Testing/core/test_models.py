"""Models are safetensors + JSON cards, verified by sha256 before any byte is used."""

import json

import pytest
import torch

from meddiffcore.cli import main as cli_main
from meddiffcore.errors import ModelError
from meddiffcore.models import ModelCard, find_model, import_model, list_models, load_model, save_model, verify_model


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {"layer.weight": torch.randn(4, 3, generator=gen), "layer.bias": torch.zeros(4)}


def test_save_load_round_trip_records_checksum(tmp_path, home):
    files = save_model(tmp_path / "export", ModelCard(name="tiny", task="uncond", metrics={"psnr": 30.0}), _tensors())
    card = json.loads(files.card_path.read_text())
    assert len(card["sha256"]) == 64 and card["weights"] == "tiny.safetensors" and card["created"]
    loaded_card, tensors = load_model(files.weights_path)
    assert loaded_card.metrics == {"psnr": 30.0}
    assert torch.equal(tensors["layer.weight"], _tensors()["layer.weight"])


def test_tampered_weights_fail_verification(tmp_path, home):
    files = save_model(tmp_path, ModelCard(name="tiny", task="uncond"), _tensors())
    data = bytearray(files.weights_path.read_bytes())
    data[-1] ^= 0xFF
    files.weights_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="do not match"):
        load_model(files.card_path)
    assert cli_main(["models", "verify", str(files.card_path)]) == 5


def test_task_mismatch_and_missing_model(tmp_path, home):
    files = save_model(tmp_path, ModelCard(name="tiny", task="uncond"), _tensors())
    with pytest.raises(ModelError, match="not a 'ctca' model"):
        load_model(files.card_path, task="ctca")
    with pytest.raises(ModelError, match="no model named 'nothing'"):
        find_model("nothing")
    files.weights_path.unlink()
    with pytest.raises(ModelError, match="missing"):
        verify_model(find_model(files.card_path))


def test_import_into_user_folder_then_list_by_name(tmp_path, home, capsys):
    files = save_model(tmp_path / "download", ModelCard(name="mine", task="uncond", description="a test model"), _tensors())
    assert cli_main(["models", "import", str(files.weights_path)]) == 0
    assert (home / "models" / "mine.safetensors").is_file()
    assert "mine" in [c.name for c in list_models()]
    assert find_model("mine").card_path.parent == home / "models"
    capsys.readouterr()
    assert cli_main(["models", "list"]) == 0
    assert "a test model" in capsys.readouterr().out
    assert import_model(files.card_path).card_path.is_file()  # importing twice replaces atomically
