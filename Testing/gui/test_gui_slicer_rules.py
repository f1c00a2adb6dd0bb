"""The four modules judged by Slicer's rules (through the strict double; see ``slicer_qt_double``).

Each test names the rule it holds the modules to: parameter nodes, error display, the GUI thread, cancel through
the ``PythonSlicer`` launcher, the scene after a run, first-use installation, self-tests on a build machine, and an
older Slicer.
"""

import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import unittest
import zipfile
from pathlib import Path
from typing import Annotated, Optional, Union

import numpy as np
import pytest
from panel_checks import load_module, make_widget, run_until_idle
from slicer_helpers import (ROOT, TINY_MODEL, add_labelmap_node, engine_env, phantom_labels, scene_snapshot)

MODULES = ("CTCASynthesizer", "CTPTemporalInpaint", "SparseViewRecon", "VolumeGenerator")
ENGINE = ROOT / "MedDiffCore"


# -- parameter nodes -----------------------------------------------------------------------------------------------
def test_the_double_refuses_what_slicers_parameter_node_wrapper_refuses(double):
    import slicer
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

    class UnionWithoutNone:
        node: Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]

    with pytest.raises(TypeError, match="Unable to write value 'None'"):  # the default None fits no member
        parameterNodeWrapper(UnionWithoutNone)(slicer.vtkMRMLScriptedModuleNode())

    @parameterNodeWrapper
    class Settings:
        node: Optional[Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]]
        steps: Annotated[int, WithinRange(0, 100)] = 0
        device: Annotated[str, Choice(["auto", "cpu"])] = "auto"
        folder: pathlib.Path = pathlib.Path()

    raw = double.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    settings = Settings(raw)
    assert raw.GetParameter("node.2") == "True" and raw.GetParameter("steps") == "0"  # every default written
    segmentation = double.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    settings.node = segmentation
    assert raw.GetNodeReference("node.1") is segmentation and not raw.HasParameter("node.2")  # as Slicer stores a union
    for name, value, error in (("steps", 101, ValueError), ("steps", 3.0, TypeError), ("device", "gpu", ValueError),
                               ("folder", "/tmp", TypeError)):
        with pytest.raises(error):
            setattr(settings, name, value)


def test_a_combo_box_needs_a_choice_and_widgets_are_matched_by_exact_class(double):
    import slicer
    from PySide6 import QtWidgets
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    @parameterNodeWrapper
    class Free:
        text: str = ""
        count: int = 0

    free = Free(double.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    combo = QtWidgets.QComboBox()
    combo.setProperty("SlicerParameterName", "text")
    with pytest.raises(RuntimeError, match="Choice"):
        free.connectParametersToGui({"text": combo})

    class MySpinBox(QtWidgets.QSpinBox):
        pass

    with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
        free.connectParametersToGui({"count": MySpinBox()})
    with pytest.raises(ValueError, match="Cannot find a param"):
        free.connectParametersToGui({"missing": QtWidgets.QSpinBox()})
    assert slicer.util.NodeModify  # the real slicer.util is in use


@pytest.mark.parametrize("name", MODULES)
def test_every_module_writes_all_its_parameters_on_a_fresh_node_and_meets_slicers_generic_test(name, double, monkeypatch):
    module = load_module(name, monkeypatch)
    parent = type("ModuleParent", (), {})()
    getattr(module, name)(parent)
    for text in (parent.title, parent.helpText, parent.acknowledgementText):
        assert text
    assert parent.categories == ["Image Synthesis"] and parent.contributors
    widget = make_widget(name, monkeypatch)
    node = widget._parameterNode.parameterNode
    for parameter in widget._parameterNode.allParameters.values():
        assert parameter.serializer.is_in(node, parameter.name), parameter.name
    logic = getattr(module, f"{name}Logic")()
    assert logic.getParameterNode().parameterNode is node  # one parameter node per module in a scene


def test_collapsed_sections_hide_their_contents_until_opened(double, monkeypatch):
    widget = make_widget("CTCASynthesizer", monkeypatch)
    section = widget.ui.batchCollapsibleButton
    assert section.collapsed and widget.ui.batchButton.isHidden()
    section.collapsed = False
    assert not widget.ui.batchButton.isHidden()


# -- errors ----------------------------------------------------------------------------------------------------------
def test_slicers_try_with_error_display_shows_and_re_raises(double):
    import slicer

    with pytest.raises(ValueError, match="boom"):
        with slicer.util.tryWithErrorDisplay("It failed."):
            raise ValueError("boom")
    assert double.errors == ["It failed.\n\nboom"]


def test_a_failing_model_import_is_shown_and_nothing_escapes_the_slot(double, monkeypatch, tmp_path):
    widget = make_widget("SparseViewRecon", monkeypatch)
    widget._parameterNode.importModelFile = pathlib.Path(tmp_path / "no-such-model.safetensors")
    widget.ui.importModelButton.click()
    deadline = time.monotonic() + 120
    while not double.errors and time.monotonic() < deadline:  # the import runs in the background
        double.app.processEvents()
        time.sleep(0.02)
    assert len(double.errors) == 1 and "Model import failed" in double.errors[0] and "no-such-model" in double.errors[0]


# -- the GUI thread --------------------------------------------------------------------------------------------------
@pytest.fixture()
def processes(monkeypatch):
    """Every process started during the test: (started on the GUI thread?, command line)."""
    started = []
    original = subprocess.Popen.__init__

    def recording(self, args, *rest, **kwargs):
        started.append((threading.current_thread() is threading.main_thread(), [str(a) for a in args]))
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording)
    return started


@pytest.mark.parametrize("name", MODULES)
def test_opening_a_module_starts_nothing_on_the_gui_thread(name, double, monkeypatch, processes):
    started = time.perf_counter()
    make_widget(name, monkeypatch)
    assert not [command for on_gui, command in processes if on_gui], "a process was started (and waited for) on the GUI thread"
    assert time.perf_counter() - started < 30  # generous: only catches a wait for torch to import


def test_apply_hands_the_check_to_a_thread_and_starts_only_the_job_from_the_gui(double, monkeypatch, processes):
    labels, ijk_to_ras = phantom_labels()
    add_labelmap_node(double.scene, labels, ijk_to_ras)
    widget = make_widget("CTCASynthesizer", monkeypatch)
    widget.logic.engineReports = type(widget.logic.engineReports)(env=widget.logic.engineEnv)  # no report yet
    widget.runner.reports = widget.logic.engineReports
    params = widget._parameterNode
    params.steps, params.device = 3, "cpu"
    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text() == "Cancel" and widget.job is None  # checking in the background
    run_until_idle(double, widget)
    assert double.errors == [] and params.outputVolume is not None
    on_gui = [command for gui, command in processes if gui]
    assert on_gui and all("meddiffcore.worker" in command for command in on_gui), on_gui  # the job only, never waited on
    assert any("info" in command for gui, command in processes if not gui)  # the machine report, from a thread


# -- cancel through the launcher ---------------------------------------------------------------------------------------
def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _engine_under_way(double, widget):
    deadline = time.monotonic() + 120
    while widget.job is None or widget.job.engine.engine_pid is None or widget.job.progress.total == 0:
        double.app.processEvents()
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.01)
    return widget.job


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("how", ["Cancel", "scene closed", "module cleaned up"])
def test_cancel_stops_the_engine_process_itself_behind_the_launcher_within_2_s(double, monkeypatch, how):
    """PythonSlicer forwards no signals: the engine must stop although only the launcher is our child."""
    labels, ijk_to_ras = phantom_labels()
    add_labelmap_node(double.scene, labels, ijk_to_ras)
    widget = make_widget("CTCASynthesizer", monkeypatch)
    params = widget._parameterNode
    params.steps, params.device = 1000, "cpu"
    before = scene_snapshot(double.scene)
    widget.ui.applyButton.click()
    job = _engine_under_way(double, widget)
    engine_pid, launcher_pid, work = job.engine.engine_pid, job.engine.pid, job.work.path
    assert engine_pid != launcher_pid  # the engine is the launcher's child
    asked = time.monotonic()
    {"Cancel": widget.ui.applyButton.click, "scene closed": lambda: double.scene.Clear(0),
     "module cleaned up": widget.cleanup}[how]()
    while not _gone(engine_pid) and time.monotonic() - asked < 30:  # a guard only: the time depends on the load
        double.app.processEvents()
        time.sleep(0.01)
    elapsed = time.monotonic() - asked
    assert _gone(engine_pid), f"the engine ran on for {elapsed:.2f} s after the request"
    if how != "module cleaned up":  # a cleaned-up module polls no more; the others finish the job as cancelled
        run_until_idle(double, widget)
        assert "Cancelled" in widget.ui.statusLabel.text() and double.errors == []
    if how == "Cancel":
        assert scene_snapshot(double.scene) == before
    job.wait(10)
    assert not work.exists() or not list(work.glob("ct*"))  # no output, complete or partial


# -- the scene after a run ---------------------------------------------------------------------------------------------
def _segmentation(double):
    import slicer

    labels, ijk_to_ras = phantom_labels()
    labelmap = add_labelmap_node(double.scene, labels, ijk_to_ras)
    segmentation = double.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    double.scene.RemoveNode(labelmap)
    return segmentation


@pytest.mark.parametrize("outcome", ["succeeds", "is cancelled", "fails"])
def test_a_segmentation_input_adds_nothing_but_the_result(outcome, double, monkeypatch):
    segmentation = _segmentation(double)
    widget = make_widget("CTCASynthesizer", monkeypatch)
    widget.ui.inputSelector.setCurrentNode(segmentation)
    table = widget.ui.mappingTable
    for row in range(table.rowCount()):
        table.item(row, 1).setText("myocardium" if outcome != "fails" else "no_such_label")
    params = widget._parameterNode
    params.steps, params.device = (3 if outcome == "succeeds" else 1000), "cpu"
    before = scene_snapshot(double.scene)
    widget.ui.applyButton.click()
    if outcome == "is cancelled":
        _engine_under_way(double, widget)
        widget.ui.applyButton.click()
    run_until_idle(double, widget)
    added = sorted(set(scene_snapshot(double.scene)) - set(before))
    if outcome == "succeeds":
        assert [name for kind, name in added if kind == "vtkMRMLScalarVolumeNode"] == ["heart synthetic CT"]
        assert not [a for a in added if a[0] == "vtkMRMLColorTableNode"], added
    else:
        assert scene_snapshot(double.scene) == before, added
    assert (len(double.errors) == 1) == (outcome == "fails")


# -- first use: install what is missing ------------------------------------------------------------------------------
TEST_PACKAGE = "meddiff-test-dependency"


def _wheel(folder: Path) -> Path:
    """A minimal wheel of a pure-Python package, for an install that needs no network."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = TEST_PACKAGE.replace("-", "_")
    path = folder / f"{stem}-1.0-py3-none-any.whl"
    info = f"{stem}-1.0.dist-info"
    files = {f"{stem}.py": "VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {TEST_PACKAGE}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: meddiff-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


@pytest.fixture()
def engine_needing_a_package(tmp_path, monkeypatch):
    """The engine, with one more requirement that this Python lacks (as a fresh Slicer lacks nibabel and the rest)."""
    copy = tmp_path / "engine" / "MedDiffCore"
    shutil.copytree(ENGINE / "meddiffcore", copy / "meddiffcore",
                    ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    with open(copy / "meddiffcore" / "requirements.txt", "a", encoding="utf-8") as requirements:
        requirements.write(f"{TEST_PACKAGE}>=1.0\n")
    monkeypatch.setenv("MEDDIFF_ENGINE_PATH", str(copy))
    yield copy
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", TEST_PACKAGE], capture_output=True)


def test_first_apply_asks_once_and_installs_what_is_missing_from_a_wheel_folder(double, monkeypatch, tmp_path,
                                                                                  engine_needing_a_package):
    wheels = _wheel(tmp_path / "wheels").parent
    labels, ijk_to_ras = phantom_labels()
    add_labelmap_node(double.scene, labels, ijk_to_ras)
    widget = make_widget("CTCASynthesizer", monkeypatch)
    params = widget._parameterNode
    params.steps, params.device, params.wheelFolder = 3, "cpu", wheels
    double.answers.append(True)
    widget.ui.applyButton.click()  # asks, installs with Slicer's pip helper through PythonSlicer, then runs
    run_until_idle(double, widget)
    assert len(double.questions) == 1, double.questions
    assert f"{TEST_PACKAGE}>=1.0" in double.questions[0] and "wheels in" in double.questions[0]
    assert "torch" not in double.questions[0]  # only what is missing
    assert importlib.metadata.version(TEST_PACKAGE) == "1.0"
    assert double.errors == [] and params.outputVolume is not None
    widget.ui.applyButton.click()  # nothing missing any more: no question
    run_until_idle(double, widget)
    assert len(double.questions) == 1


def test_declining_the_installation_starts_nothing_and_says_why(double, monkeypatch, engine_needing_a_package):
    labels, ijk_to_ras = phantom_labels()
    add_labelmap_node(double.scene, labels, ijk_to_ras)
    widget = make_widget("CTCASynthesizer", monkeypatch)
    before = scene_snapshot(double.scene)
    double.answers.append(False)
    widget.ui.applyButton.click()
    assert not widget.runner.running and widget.ui.applyButton.text() == "Apply"
    assert len(double.questions) == 1 and double.errors == [] and scene_snapshot(double.scene) == before
    assert "declined" in widget.ui.logText.toPlainText() and TEST_PACKAGE in widget.ui.logText.toPlainText()


def test_torch_comes_through_the_pytorch_extension_with_the_engines_range(double, monkeypatch, tmp_path):
    """A stand-in for the PyTorch extension's logic (the extension cannot be installed here) records the call."""
    copy = tmp_path / "engine" / "MedDiffCore"
    (copy / "meddiffcore").mkdir(parents=True)
    (copy / "meddiffcore" / "__init__.py").write_text("")
    (copy / "meddiffcore" / "requirements.txt").write_text("torch>=99,<100\nnumpy>=1.0\n")
    monkeypatch.setenv("MEDDIFF_ENGINE_PATH", str(copy))
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):  # noqa: N802 - the extension's names
            calls.append((askConfirmation, torchVersionRequirement))
            return None  # as the extension does when the user or pip gave up

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = PyTorchUtilsLogic
    widget = make_widget("VolumeGenerator", monkeypatch)
    double.answers.append(True)
    widget.ui.installDependenciesButton.click()
    assert calls == [(False, ">=99,<100")]  # our one confirmation is enough; the engine's range is passed on
    assert len(double.questions) == 1 and "PyTorch extension" in double.questions[0]
    assert len(double.errors) == 1 and "torch (torch>=99,<100) was not installed" in double.errors[0]


# -- a Slicer build machine, and an older Slicer -------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODULES)
def test_self_tests_skip_with_a_message_where_the_engine_cannot_run(name, double, monkeypatch, engine_needing_a_package):
    module = load_module(name, monkeypatch)
    with pytest.raises(unittest.SkipTest, match=TEST_PACKAGE):
        getattr(module, f"{name}Test")().runTest()
    make_widget(name, monkeypatch)  # the generic widget test still instantiates the widget there


@pytest.mark.parametrize("name", MODULES)
def test_an_older_slicer_gets_a_panel_that_says_what_is_needed(name, double, monkeypatch):
    module = load_module(name, monkeypatch)
    monkeypatch.setattr(sys.modules["MedDiffSlicerLib.dependencies"], "MINIMUM_PYTHON", (3, 99))
    widget = getattr(module, f"{name}Widget")()
    widget.setup()
    from PySide6 import QtWidgets

    texts = [label.text() for label in widget.parent.findChildren(QtWidgets.QLabel)]
    assert any("needs 3D Slicer 5.10 or newer" in text for text in texts), texts
    widget.enter()
    widget.exit()
    widget.cleanup()
    assert double.errors == []


# -- Slicer closing: the engine goes with it ---------------------------------------------------------------------------
SLICER_STAND_IN = """
import sys, time
sys.path[:0] = {paths!r}
from MedDiffSlicerLib.engine import EngineProcess
engine = EngineProcess(sys.argv[1], env={env!r}).start()
while engine.engine_pid is None or engine.progress.total == 0:
    engine.poll()
    time.sleep(0.02)
print(engine.engine_pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("how", ["killed", "exits"])
def test_the_engine_ends_when_slicer_ends(how, tmp_path, meddiff_home):
    """Slicer crashes (killed) or quits without cleaning up: the engine sees its controller gone and stops."""
    import json

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"task": "ctca.synthesize", "model": TINY_MODEL, "device": "cpu",
                               "inputs": {"labels": str(_label_file(tmp_path))}, "outputs": {"volume": str(tmp_path / "ct.nrrd")},
                               "params": {"steps": 1000}}))
    paths = [str(ROOT / "MedDiffSlicer")]
    script = SLICER_STAND_IN.format(paths=paths, env=engine_env(meddiff_home))
    if how == "exits":
        script = script.replace("time.sleep(600)", "import os; os._exit(0)")
    slicer_process = subprocess.Popen([sys.executable, "-c", script, str(job)], stdout=subprocess.PIPE, text=True)
    engine_pid = int(slicer_process.stdout.readline())
    if how == "killed":
        slicer_process.kill()
    slicer_process.wait(30)
    deadline = time.monotonic() + 10
    while not _gone(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(engine_pid), "the engine kept running after Slicer ended"
    assert not (tmp_path / "ct.nrrd").exists()


def _label_file(folder: Path) -> Path:
    from meddiffcore.io import Volume, write_volume

    labels, ijk_to_ras = phantom_labels()
    return write_volume(Volume(labels.astype(np.uint8), ijk_to_ras), folder / "labels.nrrd")
