"""CTCA synthesis on scene nodes: a label map or segmentation in, new synthetic CT volume(s) out.

Runs the engine job ``ctca.synthesize`` (see ``meddiffcore.tasks.ctca.run``).
A segmentation is exported as a label map whose values are the segments'
positions (1, 2, ...) plus a mapping file that tells the engine which of the
model's labels each segment is, so segments are matched to the label table by
name and the user can correct the match before the run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .engine import EngineProcess
from .errors import Failure, LaunchError
from .exchange import (ExchangeError, Grid, WorkFolder, read_volume_node, show_as_ct, write_segmentation_as_labels,
                       write_volume_node)
from .jobs import NodeJob, collect_atomically, write_job_file

TASK = "ctca.synthesize"
#: CT angiography display window (level, width) in HU; the same window as the engine's previews (meddiffcore.preview.CT_ANGIO).
CT_WINDOW_HU = (300.0, 800.0)
#: Mapping target that drops a segment (our label 0).
BACKGROUND = "background"


@dataclass
class SynthesisOptions:
    """What the user chose; a zero/negative value or empty text means "the model card's default"."""

    model: str = ""
    steps: int = 0
    guidance: float = -1.0
    seed: int = -1
    samples: int = 1
    device: str = "auto"
    sampler: str = ""
    hr_model: str = ""
    """The high-resolution (patch) model of the optional second stage; "" = none."""

    def params(self) -> dict:
        params: dict = {"samples": int(self.samples)}
        if self.hr_model:
            params["hr_model"] = self.hr_model
        if self.steps > 0:
            params["steps"] = int(self.steps)
        if self.guidance >= 0:
            params["guidance"] = float(self.guidance)
        if self.sampler:
            params["sampler"] = self.sampler
        return params


def model_stage(card: dict) -> str:
    """A CTCA card's stage: "lr" (the whole volume from the labels) or "patch" (high resolution, a second stage)."""
    return str((card.get("task_config") or {}).get("stage") or "lr")


def normalised_name(name: str) -> str:
    """``"Left Ventricle"`` -> ``"left_ventricle"``: how segment names are compared with label names
    (the same rule as the engine's ``meddiffcore.tasks.ctca.labels.normalised_name``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def default_segment_mapping(segment_names: Sequence[str], label_table: dict[str, str],
                            name_table: dict[str, str] | None = None) -> dict[str, str]:
    """Segment name -> label name of the model's table where the name (or a synonym of the card's ``name_table``,
    see ``models.label_names``) matches, else ``""`` (for the user to choose)."""
    labels = set(label_table.values())
    names = {normalised_name(n): n for n in labels}
    names.update({k: v for k, v in (name_table or {}).items() if v in labels})
    return {segment: names.get(normalised_name(segment), "") for segment in segment_names}


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def _bad_input(message: str, hint: str) -> LaunchError:
    return LaunchError(Failure("BAD_INPUT", message, hint))


def _write_labels(input_node, segment_mapping: dict[str, str] | None, work: WorkFolder) -> tuple[dict[str, str], Grid]:
    """Write the input for the engine; returns the job's inputs and the label map's grid."""
    labels = work.file("labels.nrrd")
    if input_node.IsA("vtkMRMLLabelMapVolumeNode"):
        write_volume_node(input_node, labels)
        return {"labels": str(labels)}, Grid.of(input_node)
    if not input_node.IsA("vtkMRMLSegmentationNode"):
        raise _bad_input(f"'{input_node.GetName()}' is a {input_node.GetClassName()}, not a label map or a segmentation",
                         "select a labelmap volume or a segmentation as input")
    names = segment_names(input_node)
    if not names:
        raise _bad_input(f"segmentation '{input_node.GetName()}' has no segments", "segment the heart first")
    mapping = segment_mapping or {}
    unmapped = [n for n in names if not mapping.get(n)]
    if unmapped:
        raise _bad_input(f"segments {', '.join(repr(n) for n in unmapped)} are not mapped to a label of the model",
                         f"choose a label for each segment in the mapping table ('{BACKGROUND}' leaves one out)")
    grid = write_segmentation_as_labels(input_node, _segment_ids(input_node), labels)
    mapping_file = work.file("label_mapping.json")
    mapping_file.write_text(json.dumps({"0": 0, **{str(i + 1): mapping[n] for i, n in enumerate(names)}}, indent=2),
                            encoding="utf-8")
    return {"labels": str(labels), "label_mapping": str(mapping_file)}, grid


def start_synthesis(input_node, options: SynthesisOptions, segment_mapping: dict[str, str] | None = None,
                    python: Sequence[str] | None = None, env: dict[str, str] | None = None) -> NodeJob:
    """Write the input, start the engine and return the running job; its new CT node(s) appear when it succeeds.

    Raises LaunchError (scene unchanged) when the input cannot be used.
    """
    if input_node is None:
        raise _bad_input("no input selected", "select a labelmap volume or a segmentation")
    scene = input_node.GetScene()
    work = WorkFolder("meddiff-ctca-")
    try:
        inputs, grid = _write_labels(input_node, segment_mapping, work)
    except ExchangeError as exc:
        work.close(success=True)
        raise _bad_input(str(exc), "check that the input node holds an image") from exc
    except LaunchError:
        work.close(success=True)
        raise
    job_file = write_job_file(work.file("job.json"), TASK, inputs, {"volume": str(work.file("ct.nrrd"))},
                              options.model, options.params(), options.device, options.seed if options.seed >= 0 else None)
    base_name = f"{input_node.GetName()} synthetic CT"

    def collect(outputs: dict[str, str]) -> list:
        volumes = sorted((k for k in outputs if k == "volume" or k.startswith("volume_")),
                         key=lambda k: int(k.split("_")[1]) if "_" in k else 0)
        if not volumes:
            raise ExchangeError("the engine finished but reported no volume")

        def load_all(added: list) -> None:
            for n, key in enumerate(volumes):
                name = base_name if len(volumes) == 1 else f"{base_name} {n + 1}"
                node = read_volume_node(Path(outputs[key]), scene, name, grid, like=input_node)
                added.append(node)
                show_as_ct(node, CT_WINDOW_HU)

        return collect_atomically(load_all)

    return NodeJob(EngineProcess(job_file, python=python, env=env), work, collect).start()


def start_batch(labels_folder: str | Path, output_folder: str | Path, options: SynthesisOptions,
                mapping_file: str | Path | None = None, python: Sequence[str] | None = None,
                env: dict[str, str] | None = None) -> NodeJob:
    """Synthesise a CT for every label map file in a folder, into ``output_folder`` (no scene nodes)."""
    labels_folder, output_folder = Path(labels_folder), Path(output_folder)
    if not labels_folder.is_dir():
        raise _bad_input(f"'{labels_folder}' is not a folder", "choose the folder that holds the label maps")
    output_folder.mkdir(parents=True, exist_ok=True)
    work = WorkFolder("meddiff-ctca-batch-")
    inputs = {"labels": str(labels_folder)}
    if mapping_file:
        inputs["label_mapping"] = str(mapping_file)
    job_file = write_job_file(work.file("job.json"), TASK, inputs, {"volume": str(output_folder)}, options.model,
                              options.params(), options.device, options.seed if options.seed >= 0 else None)
    return NodeJob(EngineProcess(job_file, python=python, env=env), work, lambda outputs: []).start()
