"""The training entry: config file -> steps -> EMA export with a card; resume is exact; DDP on 2 CPU processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_module
from meddiffcore.train.cli import main as train_main
from meddiffcore.train.loop import update_ema

CONFIG = """
task = "uncond"
name = "{name}"

[network]
spatial_dims = 2
base_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
norm_groups = 4
middle_attention = false

[diffusion]
sampling_steps = 3

[data]
size = [16, 16]
num_items = 6

[train]
steps = {steps}
batch_size = 2
lr = 1e-3
log_every = 2
preview_every = 4
checkpoint_every = 3
out_dir = "{out}"
device = "cpu"
"""


def _write_config(tmp_path: Path, out: Path, steps: int, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}-{steps}.toml"
    path.write_text(CONFIG.format(name=name, steps=steps, out=out.as_posix()))
    return path


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip().startswith("{")]


def test_train_exports_ema_model_card_metrics_and_previews(tmp_path, meddiff_home):
    out = tmp_path / "run"
    result = run_module("meddiffcore.train", str(_write_config(tmp_path, out, steps=6)), "--progress", "json", env_home=meddiff_home)
    assert result.returncode == 0, result.stdout + result.stderr
    events = _events(result.stdout)
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4, 5, 6]
    card = json.loads((out / "model" / "tiny.json").read_text())
    assert card["task"] == "uncond" and len(card["sha256"]) == 64
    assert card["training"]["steps"] == 6 and card["training"]["weights"] == "EMA"
    assert "python -m meddiffcore.train" in card["training"]["command"]
    assert card["training"]["config"]["train"]["lr"] == pytest.approx(1e-3)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and all(r["loss"] > 0 for r in rows)
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step_0000004.png", "step_0000006.png"]
    # The exported weights are the EMA weights, not the raw ones.
    exported = load_file(str(out / "model" / "tiny.safetensors"))
    state = load_file(str(out / "train_state.safetensors"))
    key = next(k for k in exported if k.endswith("weight") and exported[k].dim() > 1)
    assert torch.equal(exported[key], state[f"ema.{key}"]) and not torch.equal(exported[key], state[f"net.{key}"])


def test_resume_continues_exactly_and_refuses_to_overwrite(tmp_path, meddiff_home, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main([str(_write_config(tmp_path, straight, 6, "a")), "--progress", "none"]) == 0
    assert train_main([str(_write_config(tmp_path, resumed, 3, "b")), "--progress", "none"]) == 0
    capsys.readouterr()
    # The card's wall time must cover the sessions before a resume. A 3-step session may take less than the 0.1 s
    # the figure is rounded to, so the test records a known earlier wall time instead of timing anything.
    state_file = resumed / "train_state.json"
    state = json.loads(state_file.read_text())
    assert state["wall_time_s"] >= 0
    first_wall = 1000.0
    state_file.write_text(json.dumps({**state, "wall_time_s": first_wall}))
    assert train_main([str(_write_config(tmp_path, resumed, 6, "b")), "--progress", "none"]) == 4
    assert "--resume" in capsys.readouterr().err
    assert train_main([str(_write_config(tmp_path, resumed, 6, "b")), "--resume", "--progress", "json"]) == 0
    assert any("resumed from step 3" in e.get("message", "") for e in _events(capsys.readouterr().out))
    card = json.loads(next((resumed / "model").glob("*.json")).read_text())
    assert card["training"]["wall_time_s"] >= first_wall  # the whole run, not only the resumed session
    a = load_file(str(straight / "train_state.safetensors"))
    b = load_file(str(resumed / "train_state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_config_with_unknown_key_names_it(tmp_path, meddiff_home, capsys):
    path = _write_config(tmp_path, tmp_path / "x", 2)
    path.write_text(path.read_text().replace("batch_size = 2", "batch_sise = 2"))
    assert train_main([str(path), "--progress", "none"]) == 4
    err = capsys.readouterr().err
    assert "batch_sise" in err and "batch_size" in err
    assert not (tmp_path / "x").exists()


def test_update_ema_is_a_convex_step():
    net = torch.nn.Linear(2, 2)
    ema = torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    update_ema(ema, net, decay=0.75)
    assert torch.allclose(ema.weight, 0.75 * before + 0.25 * net.weight)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, meddiff_home):
    out = tmp_path / "ddp"
    config = _write_config(tmp_path, out, steps=4, name="ddp")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*torchrun, "-m", "meddiffcore.train", str(config), "--progress", "none"], capture_output=True,
                            text=True, timeout=300, env={**__import__("os").environ, "MEDDIFF_HOME": str(meddiff_home),
                                                         "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    card = json.loads((out / "model" / "ddp.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["steps"] == 4
    # Rank 0 alone writes: one metrics file with one row per logging step.
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_training_stops_on_a_signal_with_the_cancelled_event(tmp_path, meddiff_home, sig):
    """`python -m meddiffcore.train` handles SIGTERM like Ctrl-C: exit 130, one CANCELLED event, no exported model."""
    import os
    import signal

    out = tmp_path / "run"
    env = dict(os.environ, MEDDIFF_HOME=str(meddiff_home), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "meddiffcore.train", str(_write_config(tmp_path, out, 100000)),
                             "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if json.loads(line)["event"] == "progress":
            break
    proc.send_signal(getattr(signal, sig))
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    final = [e for e in _events(rest) if e["event"] in ("error", "done")]
    assert len(final) == 1 and final[0]["code"] == "CANCELLED"
    assert not (out / "model").exists()
