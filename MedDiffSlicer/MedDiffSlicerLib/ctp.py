"""CT perfusion temporal inpainting on scene nodes: a volume sequence in, a denser sequence (and perfusion maps) out.

Runs the engine jobs ``ctp.inpaint`` and, when maps are asked for, ``ctp.perfusion``
on the inpainted sequence (see ``meddiffcore.tasks.ctp.run``), one after the
other as one job: the scene gets the sequence, the maps and the curve plot
together or nothing at all. Frame times are the sequence's index values in
seconds; they travel in the ``.seq.nrrd`` file exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer

from .errors import Failure, LaunchError
from .exchange import (ExchangeError, WorkFolder, place_beside, play_together, read_sequence_node, read_volume_node,
                       sequence_grid, sequence_times, show_with_window, write_sequence_node)
from .jobs import EngineChain, NodeJob, RunOptions, collect_atomically, write_job_file

INPAINT_TASK = "ctp.inpaint"
PERFUSION_TASK = "ctp.perfusion"
#: Perfusion maps the engine writes, with their units and a display range (min, max) that suits adult brain.
MAPS = {"cbf": ("ml/100ml/min", (0.0, 80.0)), "cbv": ("ml/100ml", (0.0, 6.0)), "mtt": ("s", (0.0, 16.0)),
        "tmax": ("s", (0.0, 12.0))}
#: Slicer's built-in colour table for the maps.
MAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeRainbow"
#: Tolerance (s) when matching output frame times with acquired ones.
TIME_TOLERANCE_S = 1e-3
#: The sampler that runs what a published model's card records as its authors' (the CTP authors' model: ancestral
#: over all 1500 training steps); the engine's name for it (``meddiff inpaint --sampler authors``).
AUTHORS_SAMPLER = "authors"
#: The samplers the panel offers besides the model card's default and the authors' (the engine's names).
SAMPLERS = ("dpmpp_2m", "ddim", "euler", "heun", "ancestral")


def has_authors_sampler(card: dict | None) -> bool:
    """Whether a model card records its authors' sampler (an imported published model)."""
    return bool(((card or {}).get("task_config") or {}).get("authors_sampler"))


def sampler_text(card: dict | None) -> str:
    """What the model card samples with by default, and its authors' sampler where it has one, for the panel."""
    if not card:
        return "-"
    diffusion = card.get("diffusion") or {}
    text = f"default: {diffusion.get('sampler', '?')}, {diffusion.get('sampling_steps', '?')} steps"
    published = (card.get("task_config") or {}).get("authors_sampler")
    if published:
        text += f"; authors: {published.get('sampler', '?')}, {published.get('steps', '?')} steps (slow)"
    return text


@dataclass
class InpaintOptions(RunOptions):
    """Target interval in seconds; bad frames as 0-based indices into the input; maps on the filled sequence.

    ``estimate``: "mean" (the posterior-mean frame, one network evaluation), "sample" (drawn in ``steps``
    steps) or "" (the model card's choice). ``sampler``: "" (the card's), an engine sampler name, or
    :data:`AUTHORS_SAMPLER` (the published model's own sampler, which draws a sample: the estimate is then
    "sample" whatever ``estimate`` says).
    """

    interval_s: float = 1.0
    bad_frames: list[int] = field(default_factory=list)
    perfusion_maps: bool = False
    estimate: str = ""
    sampler: str = ""

    def params(self) -> dict:
        params = {"interval": float(self.interval_s), "bad_frames": sorted(int(i) for i in self.bad_frames)}
        if self.sampler:
            params["sampler"] = self.sampler
        estimate = "sample" if self.sampler == AUTHORS_SAMPLER else self.estimate
        if estimate:
            params["estimate"] = estimate
        return params


def _bad_input(message: str, hint: str) -> LaunchError:
    return LaunchError(Failure("BAD_INPUT", message, hint))


def input_sequence(node):
    """The volume sequence a node stands for: the node itself, or a browser's master sequence."""
    if node is None:
        raise _bad_input("no input selected", "select a volume sequence or a sequence browser")
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        master = node.GetMasterSequenceNode()
        if master is None:
            raise _bad_input(f"browser '{node.GetName()}' plays no sequence", "select a browser with a CT perfusion sequence")
        return master
    if not node.IsA("vtkMRMLSequenceNode"):
        raise _bad_input(f"'{node.GetName()}' is a {node.GetClassName()}, not a sequence",
                         "select a volume sequence (4D CT perfusion) or its sequence browser")
    return node


def frame_times(node) -> list[float]:
    """Acquired frame times (s) of the input, for the panel; LaunchError when they are not numbers."""
    try:
        return sequence_times(input_sequence(node))
    except ExchangeError as exc:
        raise _bad_input(str(exc), "set the sequence's index values to the acquisition times in seconds") from exc


def mean_curve(sequence_node) -> tuple[np.ndarray, np.ndarray]:
    """(times in s, mean intensity of each frame in HU): the time-density curve over the whole volume."""
    times = np.array(sequence_times(sequence_node))
    means = np.array([float(slicer.util.arrayFromVolume(sequence_node.GetNthDataNode(i)).mean())
                      for i in range(sequence_node.GetNumberOfDataNodes())])
    return times, means


def _add_curve_plot(scene, output_sequence, acquired_times: Sequence[float], bad_times: Sequence[float], name: str,
                    added: list):
    """A chart of the mean time-density curve: acquired frames as markers, the filled sequence as a line."""
    times, means = mean_curve(output_sequence)
    is_acquired = np.array([any(abs(t - a) <= TIME_TOLERANCE_S for a in acquired_times)
                            and not any(abs(t - b) <= TIME_TOLERANCE_S for b in bad_times) for t in times])
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{name} curve"))
    added.append(chart)
    chart.SetTitle("Mean time-density curve")
    chart.SetXAxisTitle("time (s)")
    chart.SetYAxisTitle("mean (HU)")
    for label, mask, style in (("filled", np.ones_like(is_acquired), "line"), ("acquired", is_acquired, "markers")):
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} {label} frames"))
        added.append(table)
        slicer.util.updateTableFromArray(table, [times[mask], means[mask]], ["time_s", "mean_hu"])
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{name} {label}"))
        added.append(series)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("time_s")
        series.SetYColumnName("mean_hu")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        if style == "line":
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetColor(0.2, 0.4, 0.9)
        else:
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(0.9, 0.3, 0.1)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def start_inpaint(node, options: InpaintOptions, python: Sequence[str] | None = None,
                  env: dict[str, str] | None = None) -> NodeJob:
    """Write the sequence, start inpainting (then perfusion maps if asked) and return the running job.

    On success the job's nodes are, in order: the new sequence,
    the maps if asked, the curve chart (with its tables and series), and the
    browser when the input had none.
    Raises LaunchError (scene unchanged) when the input cannot be used.
    """
    sequence = input_sequence(node)
    scene = sequence.GetScene()
    times = frame_times(sequence)
    bad = sorted(set(int(i) for i in options.bad_frames))
    if any(not 0 <= i < len(times) for i in bad):
        raise _bad_input(f"bad frame(s) {bad} out of range: the sequence has {len(times)} frames",
                         "pick bad frames from the list")
    work = WorkFolder("meddiff-ctp-")
    try:
        grid = sequence_grid(sequence)
        write_sequence_node(sequence, work.file("input.seq.nrrd"))
    except ExchangeError as exc:
        work.close(success=True)
        raise _bad_input(str(exc), "select a sequence of CT volumes on one grid") from exc
    output = work.file("inpainted.seq.nrrd")
    job_files = [write_job_file(work.file("inpaint.json"), INPAINT_TASK, {"sequence": str(work.file("input.seq.nrrd"))},
                                {"sequence": str(output)}, options.model, {**options.step_params(), **options.params()},
                                options.device, options.engine_seed)]
    if options.perfusion_maps:
        job_files.append(write_job_file(work.file("perfusion.json"), PERFUSION_TASK, {"sequence": str(output)},
                                        {"maps": str(work.file("maps"))}, None, {}, options.device, None))
    name = f"{sequence.GetName()} inpainted"
    bad_times = [times[i] for i in bad]

    def collect(outputs: dict[str, str]) -> list:
        if "sequence" not in outputs:
            raise ExchangeError("the engine finished but reported no sequence")

        def load_all(added: list) -> None:
            new = read_sequence_node(Path(outputs["sequence"]), scene, name, grid)
            added.append(new)
            new.SetIndexName(sequence.GetIndexName() or "time")
            new.SetIndexUnit(sequence.GetIndexUnit() or "s")
            place_beside(new, sequence)
            for key, (unit, value_range) in MAPS.items():
                if key not in outputs:
                    continue
                volume = read_volume_node(Path(outputs[key]), scene, f"{sequence.GetName()} {key.upper()}", grid)
                added.append(volume)
                volume.SetAttribute("MedDiff.unit", unit)
                place_beside(volume, sequence)
                show_with_window(volume, ((value_range[0] + value_range[1]) / 2, value_range[1] - value_range[0]),
                                 MAP_COLOR_NODE_ID)
            # nothing below can fail on a file: the browser (and its proxy nodes) come last
            _add_curve_plot(scene, new, times, bad_times, name, added)
            browsers = {scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode").GetID()
                        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode"))}
            browser = play_together(new, sequence, f"{sequence.GetName()} browser")
            if browser.GetID() not in browsers:
                added.append(browser)

        return collect_atomically(load_all)

    chain = EngineChain(job_files, python=python, env=env)
    return NodeJob(chain, work, collect).start()
