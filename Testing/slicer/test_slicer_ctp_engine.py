"""CTP temporal inpainting through MedDiffSlicerLib: a sequence node in, a sequence node out (real engine, tiny model).

The promises: exact output frame times and the input's grid, the new sequence
playing in the input's browser, the mean-curve plot, perfusion maps with units
and a colour table, and a scene left as it was when the input is refused.
"""

import numpy as np
import pytest
import slicer

from MedDiffSlicerLib import ctp
from MedDiffSlicerLib.errors import LaunchError
from MedDiffSlicerLib.exchange import Grid, sequence_times, sequences_logic
from slicer_helpers import TINY_CTP, add_ctp_sequence, scene_snapshot

FAST = dict(model=TINY_CTP, steps=2, seed=3, device="cpu")


def _browser_for(sequence):
    scene = sequence.GetScene()
    sequences_logic(scene)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "perfusion browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    return browser


def test_sequence_becomes_a_denser_sequence_on_the_same_grid_playing_in_the_same_browser(scene, env):
    sequence, ijk_to_ras = add_ctp_sequence(scene)
    browser = _browser_for(sequence)
    acquired = sequence_times(sequence)
    assert acquired == [2.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0]

    job = ctp.start_inpaint(browser, ctp.InpaintOptions(**FAST, interval_s=1.5, bad_frames=[2]), env=env)
    assert job.wait(180), job.log
    new = job.nodes[0]
    assert new.IsA("vtkMRMLSequenceNode") and new.GetName() == "perfusion inpainted"
    np.testing.assert_allclose(sequence_times(new), 2.0 + 1.5 * np.arange(13), atol=1e-9)
    for i in range(new.GetNumberOfDataNodes()):
        np.testing.assert_allclose(Grid.of(new.GetNthDataNode(i)).ijk_to_ras, ijk_to_ras, rtol=0, atol=1e-9)
    known_in, known_out = slicer.util.arrayFromVolume(sequence.GetNthDataNode(1)), slicer.util.arrayFromVolume(
        new.GetNthDataNode(2))  # 5 s is frame 1 of the input and frame 2 of the output
    np.testing.assert_array_equal(known_in, known_out)
    assert browser.GetMasterSequenceNode() is new and browser.IsSynchronizedSequenceNodeID(sequence.GetID(), True)
    assert browser.GetProxyNode(new) is not None and browser.GetProxyNode(sequence) is not None
    chart = next(n for n in job.nodes if n.IsA("vtkMRMLPlotChartNode"))
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    acquired_table = next(n for n in job.nodes if n.IsA("vtkMRMLTableNode") and "acquired" in n.GetName())
    assert list(slicer.util.arrayFromTableColumn(acquired_table, "time_s")) == [2.0, 5.0, 11.0, 14.0, 17.0, 20.0]
    assert not any(n.IsA("vtkMRMLScalarVolumeNode") and "CBF" in n.GetName() for n in job.nodes)
    assert not job.work.path.exists()


def test_perfusion_maps_come_with_units_and_a_colour_table_and_a_new_browser(scene, env):
    sequence, ijk_to_ras = add_ctp_sequence(scene, frames=9, every=2)
    job = ctp.start_inpaint(sequence, ctp.InpaintOptions(**FAST, interval_s=2.0, perfusion_maps=True), env=env)
    assert job.wait(180), job.log
    maps = {n.GetName(): n for n in job.nodes if n.IsA("vtkMRMLScalarVolumeNode")}
    assert set(maps) == {"perfusion CBF", "perfusion CBV", "perfusion MTT", "perfusion TMAX"}
    cbf = maps["perfusion CBF"]
    assert cbf.GetAttribute("MedDiff.unit") == "ml/100ml/min"
    assert cbf.GetDisplayNode().GetColorNodeID() == ctp.MAP_COLOR_NODE_ID
    np.testing.assert_allclose(Grid.of(cbf).ijk_to_ras, ijk_to_ras, atol=1e-9)
    assert np.isfinite(slicer.util.arrayFromVolume(cbf)).all()
    browser = next(n for n in job.nodes if n.IsA("vtkMRMLSequenceBrowserNode"))  # the input had none
    assert browser.GetMasterSequenceNode() is job.nodes[0]


def test_bad_inputs_are_refused_before_launch_and_scene_unchanged(scene, env):
    sequence, _ = add_ctp_sequence(scene, frames=3)
    before = scene_snapshot(scene)
    with pytest.raises(LaunchError) as caught:
        ctp.start_inpaint(sequence, ctp.InpaintOptions(**FAST, bad_frames=[5]), env=env)
    assert "out of range" in caught.value.failure.message
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not a sequence")
    with pytest.raises(LaunchError) as caught:
        ctp.start_inpaint(volume, ctp.InpaintOptions(**FAST), env=env)
    assert "not a sequence" in caught.value.failure.message and caught.value.failure.hint
    scene.RemoveNode(volume)
    sequence.UpdateIndexValue("5", "late")
    with pytest.raises(LaunchError) as caught:
        ctp.frame_times(sequence)
    assert "non-numeric" in caught.value.failure.message
    assert scene_snapshot(scene) == before


def test_cancel_during_inpainting_stops_the_chain_and_adds_nothing(scene, env):
    import time

    sequence, _ = add_ctp_sequence(scene, frames=5, every=4)
    before = scene_snapshot(scene)
    options = ctp.InpaintOptions(model=TINY_CTP, steps=1000, estimate="sample", seed=3, device="cpu",
                                 perfusion_maps=True)
    job = ctp.start_inpaint(sequence, options, env=env)
    deadline = time.monotonic() + 60
    while job.progress.total == 0 and not job.poll():
        assert time.monotonic() < deadline, job.log
        time.sleep(0.05)
    job.cancel()
    assert not job.wait(30)
    assert job.failure.cancelled and not any("ctp.perfusion" in line for line in job.log)
    assert job.engine.engines[1].pid is None  # the maps job never started
    assert scene_snapshot(scene) == before and job.nodes == []
