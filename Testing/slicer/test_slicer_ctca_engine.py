"""MedDiffSlicerLib with real MRML classes (slicer-core) and a real engine worker on a tiny model.

Covers the promises of the CTCA Synthesizer's logic: a label map node becomes a
new CT node on the same grid, placed beside its input; cancel and a crashed
engine leave the scene as it was and say what happened; bad input is reported
before or by the engine without touching the scene.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import slicer

from MedDiffSlicerLib import ctca
from MedDiffSlicerLib.engine import EngineProcess
from MedDiffSlicerLib.errors import LaunchError
from MedDiffSlicerLib.exchange import Grid
from slicer_helpers import TINY_MODEL, add_labelmap_node, phantom_labels, scene_snapshot

FAST = ctca.SynthesisOptions(model=TINY_MODEL, steps=2, seed=7, device="cpu")
SLOW = ctca.SynthesisOptions(model=TINY_MODEL, steps=400, seed=7, device="cpu")


def _wait_for_progress(job, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while job.progress.total == 0 and not job.poll():
        assert time.monotonic() < deadline, f"no progress event within {timeout_s} s; log: {job.log}"
        time.sleep(0.05)


def test_labelmap_node_becomes_a_ct_node_on_the_same_grid_beside_its_input(scene, env):
    labels, ijk_to_ras = phantom_labels()
    node = add_labelmap_node(scene, labels, ijk_to_ras)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    hierarchy.CreateItem(study, node)  # what Slicer's subject hierarchy plugins do when a node is loaded

    job = ctca.start_synthesis(node, FAST, env=env)
    seen = []
    while not job.poll():
        seen.append(job.progress.percent)
        time.sleep(0.05)
    assert job.succeeded, job.log
    (ct,) = job.nodes
    assert ct.IsA("vtkMRMLScalarVolumeNode") and not ct.IsA("vtkMRMLLabelMapVolumeNode")
    assert ct.GetName() == "heart labels synthetic CT"
    assert Grid.of(ct).same_as(Grid.of(node))
    np.testing.assert_allclose(Grid.of(ct).ijk_to_ras, Grid.of(node).ijk_to_ras, rtol=0, atol=1e-9)
    array = slicer.util.arrayFromVolume(ct)
    assert array.shape == labels.shape and array.min() >= -1024 and array.std() > 0
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(ct)) == study
    assert ct.GetDisplayNode().GetWindow() == pytest.approx(ctca.CT_WINDOW_HU[1])
    assert job.progress.percent == 100 and max(seen, default=0) <= 100
    assert not job.work.path.exists()  # removed after success


def test_segmentation_segments_are_mapped_by_name(scene, env):
    labels, ijk_to_ras = phantom_labels()
    labelmap = add_labelmap_node(scene, labels, ijk_to_ras)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)  # as the Segment Editor does
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    names = ["Myocardium", "Left atrium", "Left ventricle", "Right atrium", "Right ventricle", "Aorta",
             "Pulmonary artery", "Coronary arteries"]
    seg = segmentation.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        segment.SetName(names[segment.GetLabelValue() - 1])
    table = {str(k): v for k, v in enumerate(["background", "myocardium", "left_atrium", "left_ventricle", "right_atrium",
                                                "right_ventricle", "aorta", "pulmonary_artery", "coronary_arteries"])}
    mapping = ctca.default_segment_mapping(ctca.segment_names(segmentation), table)
    assert mapping["Left ventricle"] == "left_ventricle" and all(mapping.values())

    job = ctca.start_synthesis(segmentation, FAST, mapping, env=env)
    assert job.wait(120), job.log
    (ct,) = job.nodes
    assert ct.GetName() == "heart synthetic CT"
    assert Grid.of(ct).same_as(Grid.of(labelmap))  # the segmentation's reference grid is the label map's


def test_unmapped_segment_is_refused_before_launch_and_scene_unchanged(scene, env):
    labels, ijk_to_ras = phantom_labels()
    labelmap = add_labelmap_node(scene, labels, ijk_to_ras)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    before = scene_snapshot(scene)
    mapping = {name: "" for name in ctca.segment_names(segmentation)}
    with pytest.raises(LaunchError) as caught:
        ctca.start_synthesis(segmentation, FAST, mapping, env=env)
    assert caught.value.failure.code == "BAD_INPUT" and "not mapped" in caught.value.failure.message
    assert scene_snapshot(scene) == before


def test_unknown_labels_are_reported_by_the_engine_and_scene_unchanged(scene, env):
    labels, ijk_to_ras = phantom_labels()
    labels[labels == 8] = 42  # not in the model's label table
    node = add_labelmap_node(scene, labels, ijk_to_ras)
    before = scene_snapshot(scene)
    job = ctca.start_synthesis(node, FAST, env=env)
    assert not job.wait(120)
    assert job.failure.code == "BAD_INPUT" and "42" in job.failure.message
    assert "label" in job.failure.text().lower() and job.failure.hint
    assert scene_snapshot(scene) == before and job.nodes == []
    assert (job.work.path / "job.json").is_file()  # kept for diagnosis


def _long_job_under_way(scene, env):
    """A 400-step job that has reported progress, and the scene as it was before it started."""
    labels, ijk_to_ras = phantom_labels()
    node = add_labelmap_node(scene, labels, ijk_to_ras)
    before = scene_snapshot(scene)
    job = ctca.start_synthesis(node, SLOW, env=env)
    _wait_for_progress(job)
    return job, before


def test_cancel_stops_the_engine_and_adds_nothing(scene, env):
    job, before = _long_job_under_way(scene, env)
    started = time.monotonic()
    job.cancel()
    assert not job.wait(30)
    assert time.monotonic() - started < 10
    assert job.failure.cancelled and job.failure.title == "Cancelled"
    assert scene_snapshot(scene) == before
    assert not list(job.work.path.glob("ct*.nrrd"))  # no output, complete or partial


def test_an_engine_killed_behind_the_launcher_is_reported_as_such_and_the_scene_is_unchanged(scene, env):
    job, before = _long_job_under_way(scene, env)
    assert job.engine.engine_pid not in (None, job.engine.pid)  # the real interpreter runs behind PythonSlicer
    os.kill(job.engine.engine_pid, signal.SIGKILL)  # what the kernel's out-of-memory killer does
    assert not job.wait(30)
    assert job.engine.returncode == 1  # all the launcher passes on
    assert job.failure.code == "ENGINE_CRASHED" and "out of memory" in job.failure.message, job.failure
    assert scene_snapshot(scene) == before and job.work.path.is_dir()


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_cancel_kills_the_process_tree_of_an_engine_that_ignores_sigterm(tmp_path):
    engine = EngineProcess(tmp_path / "job.json", python=[sys.executable, "-c", STUBBORN], kill_after_s=0.5).start()
    deadline = time.monotonic() + 30
    while not engine.log and time.monotonic() < deadline:
        engine.poll()
        time.sleep(0.05)
    child_pid = int(engine.log[0])
    engine.cancel()
    assert not engine.wait(20)
    assert engine.failure.cancelled and engine.returncode == -signal.SIGKILL
    time.sleep(0.2)
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(child_pid)], capture_output=True, text=True).stdout.strip()
    assert state == "" or state.startswith("Z")  # gone (or a zombie awaiting its reaper)


def test_an_extension_without_its_engine_says_so(tmp_path, monkeypatch):
    (tmp_path / "job.json").write_text("{}")
    monkeypatch.setenv("MEDDIFF_ENGINE_PATH", str(tmp_path / "no-engine-here"))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    engine = EngineProcess(tmp_path / "job.json", python=[sys.executable, "-S", "-I"], env=env).start()
    assert not engine.wait(30)
    assert engine.failure.code == "ENGINE_MISSING" and "reinstall" in engine.failure.hint


def test_a_missing_third_party_package_is_named_with_its_fix(tmp_path, env):
    """The extension's engine runs, but this Python lacks what it imports (no site-packages here)."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"task": "ctca.synthesize", "inputs": {"labels": str(tmp_path / "l.nrrd")},
                               "outputs": {"volume": str(tmp_path / "ct.nrrd")}}))
    engine = EngineProcess(job, python=[sys.executable, "-S", "-I"], env={"PATH": os.environ.get("PATH", "")}).start()
    assert not engine.wait(60)
    assert engine.failure.code == "DEPENDENCY_MISSING" and "Install dependencies" in engine.failure.hint, engine.failure
    assert engine.engine_pid is not None  # the engine itself started: only a package was missing


def test_batch_mode_writes_one_ct_per_label_file(tmp_path, env):
    from meddiffcore.io import Volume, read_volume, write_volume

    folder = tmp_path / "labels"
    folder.mkdir()
    for seed in (1, 2):
        labels, ijk_to_ras = phantom_labels(seed)
        write_volume(Volume(labels, ijk_to_ras), folder / f"case{seed}.nii.gz")
    job = ctca.start_batch(folder, tmp_path / "out", FAST, env=env)
    assert job.wait(180), job.log
    outputs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outputs] == ["case1_ct.nii.gz", "case2_ct.nii.gz"]
    np.testing.assert_allclose(read_volume(outputs[0]).ijk_to_ras, read_volume(folder / "case1.nii.gz").ijk_to_ras, atol=1e-4)
