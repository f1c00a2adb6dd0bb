"""recon CLI and worker end to end with a tiny random-weight prior pair, output geometry, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meddiffcore.cli import main
from meddiffcore.io import Volume, read_volume, write_volume
from meddiffcore.tasks.recon.phantoms import make_phantom

sys.path.insert(0, str(Path(__file__).parent))
from recon_helpers import home, install_tiny_recon_model  # noqa: E402,F401

FAST = ["--steps", "3", "--cg-iters", "2", "--device", "cpu", "--progress", "none", "--seed", "1"]


def _ct_volume(path: Path, shape=(16, 16, 16)) -> Volume:
    geo = np.diag([0.8, 0.8, 2.5, 1.0])
    geo[:3, 3] = (-5.0, 7.0, 30.0)
    vol = Volume(make_phantom("ct", "organ", shape, seed=3), geo)
    write_volume(vol, path)
    return vol


def test_phantom_commands(tmp_path, home):
    assert main(["phantom", "ct", "--out", str(tmp_path / "ct.nii.gz"), "--size", "24", "--kind", "ellipsoid",
                 "--progress", "none"]) == 0
    assert main(["phantom", "mri", "--out", str(tmp_path / "mr.nrrd"), "--size", "20", "--progress", "none"]) == 0
    ct = read_volume(tmp_path / "ct.nii.gz")
    mr = read_volume(tmp_path / "mr.nrrd")
    assert ct.shape == (24, 24, 24) and ct.array.min() == pytest.approx(-1000, abs=1) and ct.array.max() > 300
    assert mr.shape == (20, 20, 20) and 0 <= mr.array.min() and mr.array.max() <= 1


def test_ct_simulate_keeps_geometry_and_both_modes_run(tmp_path, home):
    src = _ct_volume(tmp_path / "in.nii.gz")
    for mode in ("fast", "tpdm"):
        out = tmp_path / f"rec_{mode}.nii.gz"
        rc = main(["recon", "ct", "--simulate-from", str(tmp_path / "in.nii.gz"), "--views", "8", "--out", str(out),
                   "--baseline-out", str(tmp_path / f"fbp_{mode}.nii.gz"), "--model", "tiny-ct", "--mode", mode, *FAST])
        assert rc == 0
        rec = read_volume(out)
        assert rec.shape == src.shape
        assert np.allclose(rec.ijk_to_ras, src.ijk_to_ras, atol=1e-4)
        assert np.isfinite(rec.array).all()
        assert read_volume(tmp_path / f"fbp_{mode}.nii.gz").shape == src.shape


def test_vp_prior_runs_in_both_modes(tmp_path, home):
    install_tiny_recon_model(home, "tiny-vp", "ct", "vp")
    _ct_volume(tmp_path / "in.nii.gz")
    for mode in ("fast", "tpdm"):
        out = tmp_path / f"vp_{mode}.nii.gz"
        assert main(["recon", "ct", "--simulate-from", str(tmp_path / "in.nii.gz"), "--views", "8", "--out", str(out),
                     "--model", "tiny-vp", "--mode", mode, *FAST]) == 0
        assert np.isfinite(read_volume(out).array).all()


def test_ct_from_sinogram_file(tmp_path, home):
    import torch

    from meddiffcore.physics import ParallelBeam

    vol = make_phantom("ct", "organ", (16, 16, 16), seed=4)
    angles = np.arange(10) * 18.0
    pb = ParallelBeam(16, angles)
    sino = pb.forward(torch.from_numpy(vol + 1000.0)).numpy()  # line integrals of HU + 1000
    geo = np.diag([0.7, 1.0, 2.0, 1.0])
    write_volume(Volume(sino.astype(np.float32), geo), tmp_path / "sino.nrrd")
    np.savetxt(tmp_path / "angles.txt", angles)
    out = tmp_path / "rec.nii.gz"
    assert main(["recon", "ct", "--sinogram", str(tmp_path / "sino.nrrd"), "--angles", str(tmp_path / "angles.txt"),
                 "--out", str(out), "--model", "tiny-ct", *FAST]) == 0
    rec = read_volume(out)
    assert rec.shape == (16, 16, 16)
    assert np.allclose(rec.spacing, (0.7, 0.7, 2.0))  # detector spacing in-plane, slice spacing from the file


def test_mri_kspace_and_simulate(tmp_path, home):
    import torch

    from meddiffcore.physics import fft2c, make_mask

    vol = make_phantom("mri", None, (16, 16, 16), seed=5)
    mask = make_mask((16, 16), 4, "equispaced")
    k = (fft2c(torch.from_numpy(vol).to(torch.complex64)).numpy() * mask)
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "mr.nii.gz"
    assert main(["recon", "mri", "--kspace", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "mask.npy"),
                 "--out", str(out), "--model", "tiny-mri", *FAST]) == 0
    assert read_volume(out).shape == (16, 16, 16)
    write_volume(Volume.from_spacing(vol, (1.2, 1.2, 1.5)), tmp_path / "mr_in.nii.gz")
    out2 = tmp_path / "mr2.nii.gz"
    assert main(["recon", "mri", "--simulate-from", str(tmp_path / "mr_in.nii.gz"), "--acceleration", "4",
                 "--out", str(out2), "--model", "tiny-mri", "--mode", "tpdm", *FAST]) == 0
    assert np.allclose(read_volume(out2).spacing, (1.2, 1.2, 1.5))


def test_zsr_output_geometry_is_computed(tmp_path, home):
    thick = make_phantom("mri", None, (16, 16, 16), seed=6)[::4]  # 4 thick slices
    geo = np.diag([1.0, 1.0, 4.0, 1.0])
    geo[:3, 3] = (0.0, 0.0, 10.0)
    write_volume(Volume(np.ascontiguousarray(thick), geo), tmp_path / "thick.nii.gz")
    out = tmp_path / "thin.nii.gz"
    assert main(["recon", "zsr", "--volume", str(tmp_path / "thick.nii.gz"), "--factor", "4", "--out", str(out),
                 "--model", "tiny-mri", *FAST]) == 0
    thin = read_volume(out)
    assert thin.shape == (16, 16, 16)
    assert np.allclose(thin.spacing, (1.0, 1.0, 1.0))
    # thin slices 0..3 are centred on thick slice 0 (z = 10 mm): origin 10 - 1.5
    assert np.isclose(thin.ijk_to_ras[2, 3], 8.5)


def test_worker_runs_a_recon_job(tmp_path, home):
    _ct_volume(tmp_path / "in.nii.gz")
    job = {"task": "recon.ct", "inputs": {"volume": str(tmp_path / "in.nii.gz")},
           "outputs": {"volume": str(tmp_path / "out.nii.gz")}, "model": "tiny-ct", "device": "cpu", "seed": 0,
           "params": {"views": 8, "mode": "fast", "steps": 2, "cg_iters": 1}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "meddiffcore.worker", str(tmp_path / "job.json")], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert events[-1]["event"] == "done"
    assert any(e["event"] == "progress" and e["phase"] == "reconstruction" for e in events)
    assert (tmp_path / "out.nii.gz").is_file()


def _bad(tmp_path, argv, code, capsys):
    out = tmp_path / "bad_out.nii.gz"
    rc = main([*argv, "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == code, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    return err


def test_bad_inputs_fail_cleanly(tmp_path, home, capsys):
    import torch

    from meddiffcore.physics import ParallelBeam

    src = tmp_path / "in.nii.gz"
    _ct_volume(src)
    sino = ParallelBeam.uniform(16, 10).forward(torch.zeros(16, 16, 16)).numpy()
    write_volume(Volume.from_spacing(sino), tmp_path / "sino.nii.gz")
    np.savetxt(tmp_path / "angles9.txt", np.arange(9) * 20.0)
    err = _bad(tmp_path, ["recon", "ct", "--sinogram", str(tmp_path / "sino.nii.gz"), "--angles",
                          str(tmp_path / "angles9.txt"), "--model", "tiny-ct"], 3, capsys)
    assert "9 angles" in err and "10 rows" in err

    np.save(tmp_path / "k.npy", np.zeros((16, 16, 16), np.complex64))
    np.save(tmp_path / "mask.npy", np.ones((16, 12), bool))
    err = _bad(tmp_path, ["recon", "mri", "--kspace", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "mask.npy"),
                          "--model", "tiny-mri"], 3, capsys)
    assert "mask has shape" in err

    write_volume(Volume.from_spacing(make_phantom("mri", None, (18, 16, 16), seed=1)), tmp_path / "thin.nii.gz")
    err = _bad(tmp_path, ["recon", "zsr", "--volume", str(tmp_path / "thin.nii.gz"), "--simulate", "--factor", "4",
                          "--model", "tiny-mri"], 3, capsys)
    assert "cannot be averaged" in err

    nan = make_phantom("ct", "organ", (16, 16, 16), seed=2)
    nan[3, 4, 5] = np.nan
    write_volume(Volume.from_spacing(nan), tmp_path / "nan.nii.gz")
    err = _bad(tmp_path, ["recon", "ct", "--simulate-from", str(tmp_path / "nan.nii.gz"), "--model", "tiny-ct"], 3, capsys)
    assert "NaN" in err

    write_volume(Volume.from_spacing(make_phantom("ct", "organ", (8, 8, 8), seed=2)), tmp_path / "small.nii.gz")
    err = _bad(tmp_path, ["recon", "ct", "--simulate-from", str(tmp_path / "small.nii.gz"), "--model", "tiny-ct"], 3, capsys)
    assert "at least 16" in err

    err = _bad(tmp_path, ["recon", "ct", "--simulate-from", str(src), "--model", "tiny-mri"], 5, capsys)
    assert "MRI prior" in err
    err = _bad(tmp_path, ["recon", "ct", "--simulate-from", str(src), "--model", "tiny-ct", "--K", "0.5"], 4, capsys)
    assert "out of range" in err
    assert src.is_file()  # the input is never touched
