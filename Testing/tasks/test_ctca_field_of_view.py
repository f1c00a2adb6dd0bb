"""Fields of view in physical space, and whole-heart label maps larger than the model's field of view.

Twins: the same physical phantom rasterised on an axis-aligned grid and on an oblique one must measure the same
(the old check measured the rotated voxel-index box: 'span 199 mm' for structures of 157 mm). A map wider than the
model's field of view is synthesised as one volume by jointly denoised overlapping windows, without seams."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctca_helpers import save_tiny_model
from meddiffcore.cli import main as cli_main
from meddiffcore.io import Volume, read_volume, write_volume
from meddiffcore.io.volume import geometry_from_spacing
from meddiffcore.tasks.ctca.grid import check_field_of_view, labelled_box, patient_axes, resample_labels, synthesis_grid
from meddiffcore.tasks.ctca.model import load_ctca_model
from meddiffcore.tasks.ctca.patches import patch_grid
from meddiffcore.tasks.ctca.phantom import make_phantom
from meddiffcore.tasks.ctca.synthesis import SynthesisRecord, SynthesisSettings, low_resolution

FOV = np.array([128.0, 128.0, 128.0])


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("meddiff_home")
    save_tiny_model(root / "models", "ctca-tiny")  # 32^3 at 4 mm: a 128 mm field of view
    return root


@pytest.fixture(autouse=True)
def _home_env(home, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(home))


def rotation(deg_z, deg_x):
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def centred(shape, spacing, direction=None):
    direction = np.eye(3) if direction is None else direction
    return geometry_from_spacing(spacing, -direction @ ((np.array(shape[::-1]) - 1) / 2 * np.array(spacing)), direction)


def scaled_phantom(ijk_to_ras, shape, scale=1.0, seed=3):
    """The phantom (heart chambers, myocardium, coronaries, an aorta of ~190 mm and the pulmonary artery, like a
    TotalSegmentator heart map) enlarged ``scale`` times about the RAS origin, rasterised on the grid."""
    small = ijk_to_ras.copy()
    small[:3, :] /= scale
    return Volume(make_phantom(seed, shape, ijk_to_ras=small, with_ct=False).labels.array, ijk_to_ras)


def twins():
    """The same physical phantom on an axis-aligned grid and on an oblique, anisotropic one (both hold all of it)."""
    aligned = scaled_phantom(centred((84, 64, 64), (3.0, 3.0, 3.0)), (84, 64, 64))
    oblique = scaled_phantom(centred((88, 96, 92), (2.6, 2.8, 3.1), rotation(40, 35)), (88, 96, 92))
    for v in (aligned, oblique):
        a = v.array
        assert not (a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any() or a[..., 0].any() or a[..., -1].any())
    return aligned, oblique


def test_oblique_twin_measures_its_structures_in_patient_space():
    aligned, oblique = twins()
    span_a = check_field_of_view(aligned, aligned.array, FOV)
    span_o = check_field_of_view(oblique, oblique.array, FOV)
    np.testing.assert_allclose(span_o, span_a, atol=2 * 3.1)  # within two voxels
    assert 180 < span_a.max() < 210  # the aorta: a whole-heart map, wider than the 128 mm field of view
    # what the voxel-index box of the oblique labels covers once rotated: far more than the structures
    idx = np.argwhere(oblique.array > 0)
    lo, hi = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]
    corners = np.array([[i, j, k] for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])], float)
    ras = oblique.ijk_to_ras_points(corners)
    old = ras.max(axis=0) - ras.min(axis=0)
    assert old.max() > 1.5 * FOV.max() > span_a.max()  # the old check refused the oblique twin, passed the other
    assert old.sum() > span_o.sum() + 100


def test_synthesis_grid_is_on_patient_axes_and_covers_the_map():
    aligned, oblique = twins()
    axes = patient_axes(oblique.direction)
    assert np.allclose(np.abs(axes).sum(axis=0), 1) and np.allclose(np.abs(axes).sum(axis=1), 1)
    np.testing.assert_allclose(patient_axes(aligned.direction), aligned.direction)
    grid, shape = synthesis_grid(oblique, 4.0, (4, 4, 4))
    np.testing.assert_allclose(grid[:3, :3], axes * 4.0)
    # every labelled voxel lies inside the grid
    lo, hi = labelled_box(oblique, oblique.array, axes)
    g_lo = axes.T @ grid[:3, 3] - 2.0
    g_hi = g_lo + np.array(shape[::-1]) * 4.0
    assert np.all(g_lo <= lo + 1e-6) and np.all(hi <= g_hi + 1e-6)
    # the axis-aligned map keeps exactly its old grid: its own axes, its box, centred
    grid_a, shape_a = synthesis_grid(aligned, 3.0)
    assert shape_a == aligned.shape
    np.testing.assert_allclose(grid_a, aligned.ijk_to_ras, atol=1e-9)


def test_oblique_twin_and_its_axis_aligned_twin_both_synthesise(tmp_path, capsys):
    aligned, oblique = twins()
    spans = []
    for name, volume in (("aligned", aligned), ("oblique", oblique)):
        path = tmp_path / f"{name}.nrrd"
        write_volume(volume, path)
        out = tmp_path / f"{name}_ct.nrrd"
        rc = cli_main(["synthesize", "--labels", str(path), "--out", str(out), "--model", "ctca-tiny", "--steps", "1",
                       "--seed", "2", "--progress", "json"])
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert rc == 0, events[-1]
        ct = read_volume(out)
        assert ct.shape == volume.shape
        np.testing.assert_allclose(ct.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)
        (log,) = [e["message"] for e in events if e["event"] == "log" and "span" in e.get("message", "")]
        spans.append([float(v) for v in log.split("span ")[1].split(" mm")[0].split(" x ")])
        assert "overlapping windows" in log
    np.testing.assert_allclose(spans[0], spans[1], atol=7)


def test_whole_heart_map_wider_than_the_field_of_view_is_synthesised_in_windows(tmp_path):
    model = load_ctca_model("ctca-tiny")  # 32^3 at 4 mm
    labels = scaled_phantom(centred((60, 40, 40), (4.0, 4.0, 4.0)), (60, 40, 40))  # ~190 mm along S
    assert check_field_of_view(labels, labels.array, model.fov_mm).max() > 180
    record = SynthesisRecord()
    grid, x = low_resolution(model, labels, SynthesisSettings(steps=2), torch.Generator().manual_seed(0), "cpu",
                             record=record)
    (stage,) = record.stages
    assert stage["window"] == [32, 32, 32] and stage["windows"] == len(patch_grid(x.shape, (32,) * 3, (8,) * 3)) == 12
    assert stage["network_calls"] > 0 and x.shape == tuple(stage["grid"]) and np.isfinite(x).all()


def _plane_jumps(volume: np.ndarray) -> np.ndarray:
    """Mean absolute change of the locally averaged volume from each z plane to the next (a seam is a jump)."""
    smooth = ndimage.uniform_filter(volume.astype(np.float64), 5)
    return np.abs(np.diff(smooth, axis=0)).mean(axis=(1, 2))


@pytest.mark.slow
def test_windows_of_the_bundled_model_leave_no_seam():
    """The bundled 64^3 @ 2 mm model on a 200 mm map whose anatomy does not change along S (an axial slice of the
    heart repeated), so any jump from one plane to the next is a seam: two windows along S, jointly denoised, change
    no more at the windows' edges than anywhere else; the same windows sampled independently and stitched jump."""
    torch.set_num_threads(1)
    model = load_ctca_model("ctca-demo")
    shape = (100, 56, 56)
    heart = scaled_phantom(centred((56, 56, 56), (2.0, 2.0, 2.0)), (56, 56, 56)).array[28]
    labels = Volume(np.repeat(heart[None], shape[0], axis=0), centred(shape, (2.0, 2.0, 2.0)))
    settings = SynthesisSettings(steps=6, sampler="dpmpp_2m", guidance=1.0)
    record = SynthesisRecord()
    grid, joint = low_resolution(model, labels, settings, torch.Generator().manual_seed(0), "cpu", record=record)
    (stage,) = record.stages
    assert stage["windows"] == 2 and joint.shape[0] == 104
    starts = [r[0].start for r in patch_grid(joint.shape, stage["window"], stage["overlap"])]
    edges = sorted({s - 1 for s in starts if s > 0} | {s + 63 for s in starts if s + 64 < joint.shape[0]})
    jumps = _plane_jumps(joint)
    typical = np.median(jumps)
    at_edges = max(jumps[e + d] for e in edges for d in (-1, 0, 1))

    # the control: each window sampled on its own and the two stitched in the middle of their overlap
    full = resample_labels(labels.array, labels.ijk_to_ras, grid, joint.shape)
    halves = []
    for z0 in starts:
        sub = grid.copy()
        sub[:3, 3] = grid[:3, :3] @ [0, 0, z0] + grid[:3, 3]
        _, part = low_resolution(model, Volume(full[z0:z0 + 64], sub), settings, torch.Generator().manual_seed(0), "cpu")
        halves.append(part)
    cut = (starts[1] + 64) // 2
    naive = np.concatenate([halves[0][:cut], halves[1][cut - starts[1]:]])
    naive_jumps = _plane_jumps(naive)
    print("joint: edges", at_edges, "median", typical, "max", jumps.max(), "| naive: cut", naive_jumps[cut - 1],
          "median", np.median(naive_jumps))
    assert at_edges < 1.35 * typical, (edges, jumps.round(3))
    assert naive_jumps[cut - 1] > 1.6 * np.median(naive_jumps)
