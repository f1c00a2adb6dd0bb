"""The worst stall of the GUI thread while a module is opened, Apply is pressed, the job runs and its result comes in.

Run: ``.venv/bin/python Testing/Benchmarks/slicer_gui_stall.py [--steps 30]``. The CTCA Synthesizer panel runs in
the Slicer double (offscreen Qt, real MRML, the engine behind the ``PythonSlicer`` launcher stand-in) with the tiny
test model, inside a real Qt event loop. A 5 ms heartbeat timer measures how long the GUI thread went without
serving events; the longest gap in each phase is printed, next to what a blocking call to the engine costs (the
machine report, which Apply waited for before the engine report moved to a background thread).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "slicer"), str(HERE.parent / "gui")]

from slicer_helpers import (add_labelmap_node, add_module_paths, engine_env, new_scene, phantom_labels,  # noqa: E402
                            save_tiny_ctca_model)

HEARTBEAT_MS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="sampling steps of the job")
    args = parser.parse_args()
    add_module_paths()

    import pytest
    from panel_checks import make_widget
    from python_slicer_launcher import install as install_launcher
    from slicer_qt_double import install, uninstall

    from MedDiffSlicerLib.engine import run_engine_command

    work = Path(tempfile.mkdtemp(prefix="meddiff-stall-"))
    save_tiny_ctca_model(work / "home")
    launcher = install_launcher(work / "bin")
    os.environ["PATH"] = os.pathsep.join([str(launcher.parent), os.environ["PATH"]])
    for key, value in engine_env(work / "home").items():
        os.environ[key] = value
    patcher = pytest.MonkeyPatch()
    double = install(patcher)
    scene = new_scene()
    labels, ijk_to_ras = phantom_labels()
    add_labelmap_node(scene, labels, ijk_to_ras)

    from PySide6 import QtCore

    app = double.app
    phase = ["idle"]
    worst: dict[str, float] = {}
    last = [time.perf_counter()]

    def beat() -> None:
        now = time.perf_counter()
        gap = now - last[0] - HEARTBEAT_MS / 1000
        worst[phase[0]] = max(worst.get(phase[0], 0.0), gap)
        last[0] = now

    heartbeat = QtCore.QTimer()
    heartbeat.setInterval(HEARTBEAT_MS)
    heartbeat.timeout.connect(beat)
    state = {}

    def measured(name, action):
        """Run ``action`` on the GUI thread as phase ``name``: the gap it causes is that phase's stall."""
        phase[0] = name
        last[0] = time.perf_counter()
        action()
        beat()

    def open_and_apply() -> None:
        measured("open the module", lambda: state.update(widget=make_widget("CTCASynthesizer", patcher)))
        widget = state["widget"]
        widget._parameterNode.steps, widget._parameterNode.device = args.steps, "cpu"
        state["t0"] = time.perf_counter()
        measured("press Apply", widget.ui.applyButton.click)
        phase[0] = "check and start (background)"
        watch.start()

    def follow() -> None:
        widget = state["widget"]
        if widget.job is not None and phase[0] == "check and start (background)":
            phase[0] = "job running (progress)"
        if not widget.runner.running:
            phase[0] = "result loaded"
            state["t1"] = time.perf_counter()
            watch.stop()
            QtCore.QTimer.singleShot(200, app.quit)

    watch = QtCore.QTimer()
    watch.setInterval(20)
    watch.timeout.connect(follow)
    heartbeat.start()
    QtCore.QTimer.singleShot(50, open_and_apply)
    app.exec()
    heartbeat.stop()

    widget = state["widget"]
    assert widget._parameterNode.outputVolume is not None and not double.errors, double.errors
    started = time.perf_counter()
    run_engine_command(["info", "--json"])
    blocking_report_s = time.perf_counter() - started
    uninstall(double)
    patcher.undo()

    print(f"GUI-thread stalls (longest gap between {HEARTBEAT_MS} ms heartbeats), tiny CTCA model, {args.steps} steps:")
    for name, gap in worst.items():
        print(f"  {name:<30} {gap * 1000:8.1f} ms")
    print(f"  worst overall                  {max(worst.values()) * 1000:8.1f} ms")
    print(f"whole run, Apply to result: {state['t1'] - state['t0']:.2f} s")
    print(f"one blocking engine call (`meddiff info --json`, what Apply used to wait for): {blocking_report_s * 1000:.0f} ms "
          f"= {blocking_report_s / max(worst.values()):.0f}x the worst stall now")


if __name__ == "__main__":
    main()
