"""Models are safetensors + JSON cards, verified by sha256 before any byte is used."""

import hashlib
import json
import pickle
import struct

import pytest
import torch

from meddiffcore.cli import main as cli_main
from meddiffcore.errors import ModelError
from meddiffcore.models import ModelCard, find_model, import_model, list_models, load_model, save_model, verify_model


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _network():
    from meddiffcore.nets import UNetConfig

    return UNetConfig(spatial_dims=2, base_channels=8, channel_mult=(1,), num_res_blocks=1, norm_groups=4,
                      attention_levels=(), middle_attention=False).to_dict()


def _card(name="tiny", **fields):
    return ModelCard(name=name, task="uncond", network=_network(), **fields)


def _tensors():
    from meddiffcore.nets import UNet, UNetConfig

    torch.manual_seed(0)
    return UNet(UNetConfig.from_dict(_network())).state_dict()


def test_save_load_round_trip_records_checksum(tmp_path, home):
    files = save_model(tmp_path / "export", _card(metrics={"psnr": 30.0}), _tensors())
    card = json.loads(files.card_path.read_text())
    assert len(card["sha256"]) == 64 and card["weights"] == "tiny.safetensors" and card["created"]
    loaded_card, tensors = load_model(files.weights_path)
    assert loaded_card.metrics == {"psnr": 30.0}
    assert all(torch.equal(tensors[k], v) for k, v in _tensors().items())


def test_tampered_weights_fail_verification(tmp_path, home):
    files = save_model(tmp_path, _card(), _tensors())
    data = bytearray(files.weights_path.read_bytes())
    data[-1] ^= 0xFF
    files.weights_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="do not match"):
        load_model(files.card_path)
    assert cli_main(["models", "verify", str(files.card_path)]) == 5


def test_task_mismatch_and_missing_model(tmp_path, home):
    files = save_model(tmp_path, _card(), _tensors())
    with pytest.raises(ModelError, match="not a 'ctca' model"):
        load_model(files.card_path, task="ctca")
    with pytest.raises(ModelError, match="no model named 'nothing'"):
        find_model("nothing")
    files.weights_path.unlink()
    with pytest.raises(ModelError, match="missing"):
        verify_model(find_model(files.card_path))


def test_import_into_user_folder_then_list_by_name(tmp_path, home, capsys):
    files = save_model(tmp_path / "download", _card("mine", description="a test model"), _tensors())
    assert cli_main(["models", "import", str(files.weights_path)]) == 0
    assert (home / "models" / "mine.safetensors").is_file()
    assert "mine" in [c.name for c in list_models()]
    assert find_model("mine").card_path.parent == home / "models"
    capsys.readouterr()
    assert cli_main(["models", "list"]) == 0
    assert "a test model" in capsys.readouterr().out
    assert import_model(files.card_path).card_path.is_file()  # importing twice replaces atomically


# ---- import security: nothing is written unless the whole model checks out (issue 16)

def _write_pair(folder, card: dict, weights: bytes, weights_name="w.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / weights_name).write_bytes(weights)
    card = {"sha256": hashlib.sha256(weights).hexdigest(), "weights": weights_name, **card}
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "card.json"


def _good_pair(tmp_path):
    files = save_model(tmp_path / "good", _card("good"), _tensors())
    card = json.loads(files.card_path.read_text())
    del card["weights"], card["sha256"]  # _write_pair sets them for the file it writes
    return card, files.weights_path.read_bytes()


def _header_file(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _bad_models(tmp_path):
    card, weights = _good_pair(tmp_path)
    (tmp_path / "outside.safetensors").write_bytes(weights)
    header_len = struct.unpack("<Q", weights[:8])[0]
    header = json.loads(weights[8:8 + header_len])
    first = next(k for k in header if k != "__metadata__")
    shifted = dict(header)
    shifted[first] = {**header[first], "data_offsets": [header[first]["data_offsets"][0] + 4,
                                                         header[first]["data_offsets"][1] + 4]}
    wrong_shape = dict(header)
    wrong_shape[first] = {**header[first], "shape": [2, *header[first]["shape"]]}
    renamed = {("x" + k if k == first else k): v for k, v in header.items()}
    ints = dict(header)
    ints[first] = {**header[first], "dtype": "I32"}
    return {
        "name with ../": (dict(card, name="../../escaped"), weights, "not a plain name"),
        "absolute name": (dict(card, name=str(tmp_path / "abs")), weights, "not a plain name"),
        "weights outside": (dict(card, weights="../outside.safetensors"), weights, "outside the card's folder"),
        "unknown task": (dict(card, task="teleport"), weights, "unknown task 'teleport'"),
        "a torch pickle": (card, pickle.dumps({"w": [1.0, 2.0]}), "not a safetensors file"),
        "truncated": (card, weights[:-16], "truncated"),
        "trailing garbage": (card, weights + b"\0" * 8, "bytes after its last tensor"),
        "offsets off by 4": (card, _header_file(shifted, weights[8 + header_len:]), "gap"),
        "wrong shape": (card, _header_file(wrong_shape, weights[8 + header_len:]), "bytes of data for shape"),
        "renamed tensor": (card, _header_file(renamed, weights[8 + header_len:]), "do not fit its 'uncond' network"),
        "integer weights": (card, _header_file(ints, weights[8 + header_len:]), "needs a floating-point tensor"),
        "unknown dtype": (card, _header_file({**header, first: {**header[first], "dtype": "Q7"}},
                                             weights[8 + header_len:]), "unknown dtype"),
        "network of another size": (dict(card, network={**card["network"], "base_channels": 16}), weights,
                                    "has shape"),
    }


@pytest.mark.parametrize("case", ["name with ../", "absolute name", "weights outside", "unknown task", "a torch pickle",
                                  "truncated", "trailing garbage", "offsets off by 4", "wrong shape", "renamed tensor",
                                  "integer weights", "unknown dtype", "network of another size"])
def test_import_refuses_a_bad_model_and_writes_nothing(tmp_path, home, capsys, case):
    card, weights, why = _bad_models(tmp_path)[case]
    card_path = _write_pair(tmp_path / "download", card, weights)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert cli_main(["models", "import", str(card_path)]) == 5
    err = capsys.readouterr().err
    assert why in err and "fix:" in err
    assert not home.exists() or not any(home.rglob("*"))  # nothing installed, no temporary left
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written anywhere, inputs unchanged
    with pytest.raises(ModelError, match=why.replace("(", r"\(").replace(".", r"\.")):
        load_model(card_path)  # the same checks when the model is loaded


def test_a_good_model_passes_every_check(tmp_path, home):
    card, weights = _good_pair(tmp_path)
    card_path = _write_pair(tmp_path / "download", card, weights)
    assert import_model(card_path).weights_path.read_bytes() == weights
