"""Sparse-view recon and volume generation through MedDiffSlicerLib with the real engine on tiny models.

The promises: a simulation gives the reconstruction and its baseline on the
input's grid beside the input; a real sinogram and a thick-slice volume give a
volume on the grid the physics implies; generated samples take the user's
spacing, a translated volume its condition's grid, an upscaled one the input's
extent at a finer pixel; refused inputs leave the scene as it was.
"""

import numpy as np
import pytest
import slicer

from MedDiffSlicerLib import generate, recon
from MedDiffSlicerLib.errors import LaunchError
from MedDiffSlicerLib.exchange import Grid
from slicer_helpers import TINY_CWDM, TINY_RECON_CT, TINY_RECON_MRI, TINY_SR, TINY_WDM, scene_snapshot

OBLIQUE = np.array([[0.0, -0.9, 0.0, 12.0], [0.8, 0.0, 0.0, -7.0], [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])


def _volume(scene, array, ijk_to_ras=OBLIQUE, name="phantom"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node


def _phantom(modality, shape=(16, 16, 16)):
    from meddiffcore.tasks.recon.phantoms import make_phantom

    return make_phantom(modality, None, shape, 1)


def _fast(model, problem, **kw):
    return recon.ReconOptions(model=model, problem=problem, steps=2, seed=0, device="cpu", **kw)


def test_ct_simulated_from_a_volume_gives_recon_fbp_and_the_iterative_baseline_on_its_grid(scene, env):
    node = _volume(scene, _phantom("ct"))
    job = recon.start_reconstruction(node, _fast(TINY_RECON_CT, "ct-simulate", views=6), env=env)
    assert job.wait(180), job.log
    result, baseline, iterative = job.nodes
    assert result.GetName() == "phantom FAST recon" and baseline.GetName() == "phantom FBP"
    assert iterative.GetName() == "phantom TV iterative"
    assert iterative.GetDisplayNode().GetWindow() == pytest.approx(recon.CT_WINDOW_HU[1])
    for out in job.nodes:
        np.testing.assert_allclose(Grid.of(out).ijk_to_ras, OBLIQUE, atol=1e-9)
        assert slicer.util.arrayFromVolume(out).shape == (16, 16, 16)
    assert result.GetDisplayNode().GetWindow() == pytest.approx(recon.CT_WINDOW_HU[1])
    assert not np.array_equal(slicer.util.arrayFromVolume(result), slicer.util.arrayFromVolume(baseline))
    assert not np.array_equal(slicer.util.arrayFromVolume(iterative), slicer.util.arrayFromVolume(baseline))


def test_mri_undersampled_and_zsr_simulations_run(scene, env):
    node = _volume(scene, _phantom("mri"))
    job = recon.start_reconstruction(node, _fast(TINY_RECON_MRI, "mri-simulate", acceleration=4, mask_kind="equispaced"),
                                     env=env)
    assert job.wait(180), job.log
    assert [n.GetName() for n in job.nodes] == ["phantom FAST recon", "phantom zero-filled", "phantom CS iterative"]
    job = recon.start_reconstruction(node, _fast(TINY_RECON_MRI, "zsr-simulate", factor=2), env=env)
    assert job.wait(180), job.log
    assert Grid.of(job.nodes[1]).same_as(Grid.of(node)) and job.nodes[1].GetName() == "phantom interpolated"


def test_thick_slices_become_a_volume_with_factor_times_the_slices(scene, env):
    thick = _volume(scene, _phantom("mri")[::2], name="thick")
    job = recon.start_reconstruction(thick, _fast(TINY_RECON_MRI, "zsr", factor=2), env=env)
    assert job.wait(180), job.log
    out = job.nodes[0]
    assert slicer.util.arrayFromVolume(out).shape == (16, 16, 16)
    thin = Grid.of(out).ijk_to_ras
    np.testing.assert_allclose(thin[:3, 2], OBLIQUE[:3, 2] / 2, atol=1e-6)  # slice step halved, in-plane unchanged
    np.testing.assert_allclose(thin[:3, :2], OBLIQUE[:3, :2], atol=1e-6)


def test_sinogram_with_angles_gives_a_square_reconstruction(scene, env):
    from meddiffcore.physics import ParallelBeam

    detectors = ParallelBeam(16, (0.0,)).detectors
    sinogram = _volume(scene, np.random.default_rng(0).random((16, 8, detectors)) * 20, np.diag([1.5, 1.0, 2.0, 1.0]),
                       name="sinogram")
    with pytest.raises(LaunchError):
        recon.start_reconstruction(sinogram, _fast(TINY_RECON_CT, "ct-sinogram", angles_deg=[0, 90]), env=env)
    job = recon.start_reconstruction(sinogram, _fast(TINY_RECON_CT, "ct-sinogram", angles_deg=recon.parse_angles("0:180:8")),
                                     env=env)
    assert job.wait(180), job.log
    out = job.nodes[0]
    assert slicer.util.arrayFromVolume(out).shape == (16, 16, 16)
    np.testing.assert_allclose(np.linalg.norm(Grid.of(out).ijk_to_ras[:3, :3], axis=0), [1.5, 1.5, 2.0], atol=1e-6)


def test_wdm_samples_take_the_users_spacing(scene, env):
    options = generate.GenerateOptions(model=TINY_WDM, kind="wdm", steps=2, seed=1, device="cpu", samples=2,
                                       spacing_mm=(0.5, 0.75, 1.25))
    job = generate.start_generation(options, scene=scene, env=env)
    assert job.wait(180), job.log
    assert [n.GetName() for n in job.nodes] == [f"{TINY_WDM} sample 1", f"{TINY_WDM} sample 2"]
    for node in job.nodes:
        assert node.GetSpacing() == pytest.approx((0.5, 0.75, 1.25))
        assert slicer.util.arrayFromVolume(node).shape == (16, 16, 16)


def test_a_translated_volume_takes_its_conditions_grid_and_place(scene, env):
    condition = _volume(scene, np.random.default_rng(1).random((16, 16, 16)), name="t1")
    options = generate.GenerateOptions(model=TINY_CWDM, kind="wdm", steps=2, seed=0, device="cpu")
    job = generate.start_generation(options, condition, env=env)
    assert job.wait(180), job.log
    (out,) = job.nodes
    assert out.GetName() == "t1 translated"
    np.testing.assert_allclose(Grid.of(out).ijk_to_ras, OBLIQUE, rtol=0, atol=1e-9)


def test_options_become_the_engine_parameters_of_each_problem():
    ct = recon.ReconOptions(problem="ct-simulate", mode="tpdm", K=3.0, lam=0.5, views=24, steps=7)
    assert {**ct.step_params(), **ct.params()} == {"steps": 7, "mode": "tpdm", "K": 3.0, "lambda": 0.5, "views": 24}
    assert recon.ReconOptions(problem="mri-simulate", mask_kind="poisson").params() == {
        "mode": "fast", "acceleration": 8.0, "mask_kind": "poisson"}
    assert recon.ReconOptions(problem="zsr", factor=3).params() == {"mode": "fast", "factor": 3, "simulate": False}
    assert recon.parse_angles("0:180:4") == [0.0, 45.0, 90.0, 135.0]
    with pytest.raises(LaunchError):
        recon.parse_angles("0, ten")
    assert generate.GenerateOptions(kind="wdm", spacing_mm=(1.0, 0.0, 1.0)).params() == {"samples": 1}  # card default
    assert generate.GenerateOptions(kind="upscale", stages=1, samples=3).params() == {"stages": 1}


def test_cascade_generates_slices_and_upscale_refines_a_volume_in_plane(scene, env):
    job = generate.start_generation(generate.GenerateOptions(model=TINY_SR, kind="cascade", steps=1, seed=0, device="cpu"),
                                    scene=scene, env=env)
    assert job.wait(180), job.log
    assert slicer.util.arrayFromVolume(job.nodes[0]).shape == (1, 32, 32)
    low = _volume(scene, np.random.default_rng(0).random((2, 16, 16)), name="low")
    job = generate.start_generation(generate.GenerateOptions(model=TINY_SR, kind="upscale", steps=1, device="cpu"), low,
                                    env=env)
    assert job.wait(180), job.log
    up = job.nodes[0]
    assert up.GetName() == "low super-resolved" and slicer.util.arrayFromVolume(up).shape == (2, 32, 32)
    m = Grid.of(up).ijk_to_ras
    np.testing.assert_allclose(m[:3, :2], OBLIQUE[:3, :2] / 2, atol=1e-6)
    np.testing.assert_allclose(m[:3, 2], OBLIQUE[:3, 2], atol=1e-6)


def test_refused_generation_inputs_leave_the_scene_unchanged(scene, env):
    low = _volume(scene, np.zeros((2, 12, 12)), name="odd size")
    before = scene_snapshot(scene)
    with pytest.raises(LaunchError):
        generate.start_generation(generate.GenerateOptions(model=TINY_SR, kind="cascade"), low, env=env)
    job = generate.start_generation(generate.GenerateOptions(model=TINY_SR, kind="upscale", steps=1, device="cpu"), low,
                                    env=env)
    assert not job.wait(120)
    assert job.failure.code == "BAD_INPUT" and "12x12" in job.failure.message and job.failure.hint
    assert scene_snapshot(scene) == before
