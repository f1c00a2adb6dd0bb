"""The README main job: the bundled demo model on the bundled phantom label map."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import meddiffcore
from meddiffcore.io import read_volume
from meddiffcore.models import find_model, verify_model

PACKAGE = Path(meddiffcore.__file__).resolve().parent
LABELS = PACKAGE / "data_files" / "ctca_demo_labels.nii.gz"


def test_demo_model_is_bundled_small_and_documented(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path))  # only the bundled models are visible
    files = find_model("ctca-demo")
    card = verify_model(files)
    assert files.weights_path.stat().st_size <= 15 * 2**20
    assert card.task == "ctca" and card.task_config["hu_window"] == [-1024.0, 1024.0]
    assert card.task_config["labels"]["8"] == "coronary_arteries"
    assert card.training["weights"] == "EMA" and "meddiffcore.train" in card.training["command"]
    assert "evaluation" in card.metrics and card.metrics["evaluation"]["held_out"]["phantoms"] == 10
    assert LABELS.is_file() and read_volume(LABELS).shape == (64, 64, 64)


@pytest.mark.slow
def test_main_job_writes_volume_and_preview(tmp_path):
    out, png = tmp_path / "synthetic_ct.nii.gz", tmp_path / "synthetic_ct.png"
    env = {**os.environ, "MEDDIFF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "synthesize", "--labels", str(LABELS), "--out", str(out),
                           "--preview", str(png), "--seed", "0", "--progress", "json"],
                          capture_output=True, text=True, env=env, timeout=3600)  # a guard only: 40 steps at guidance 3 on a loaded machine
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["event"] == "done"
    labels, ct = read_volume(LABELS), read_volume(out)
    assert ct.same_grid(labels) and ct.array.dtype == np.int16
    lab, hu = labels.array, ct.array.astype(float)
    # label adherence of the trained model: the blood pool is contrast-enhanced (above the evaluation's 200 HU
    # contrast threshold), the myocardium clearly darker, the background darker still
    assert hu[lab == 3].mean() > 200 and hu[lab == 6].mean() > 200
    assert hu[lab == 1].mean() < hu[lab == 3].mean() - 100
    assert hu[lab == 0].mean() < hu[lab == 1].mean()
    assert png.stat().st_size > 1000
