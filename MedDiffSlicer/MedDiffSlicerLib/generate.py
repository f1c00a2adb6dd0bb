"""New volumes from generative models, and slice-by-slice super-resolution of a volume, as scene nodes.

Runs the engine jobs ``wdm.generate`` (3D wavelet diffusion; with a condition
volume for a translating cWDM model), ``sr.generate`` (2D slices through the
whole cascade) and ``sr.upscale`` (see ``meddiffcore.tasks.wdm.run`` and
``meddiffcore.tasks.sr.run``). Unconditional samples have no patient to sit
in, so their spacing is the user's (or the model card's) and they are centred
at the origin; a translated volume takes its condition's grid; an upscaled one
covers the input's extent with a finer in-plane grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import Failure, LaunchError
from .exchange import ExchangeError, Grid, WorkFolder, read_volume_node, show_with_window, write_volume_node
from .jobs import NodeJob, RunOptions, collect_atomically, launch

#: Kind -> (engine task, the model card's task).
KINDS = {"wdm": ("wdm.generate", "wdm"), "cascade": ("sr.generate", "sr"), "upscale": ("sr.upscale", "sr")}


@dataclass
class GenerateOptions(RunOptions):
    """``spacing_mm`` (x, y, z) all zero means the model card's spacing; ``stages`` 0 means every remaining SR stage."""

    kind: str = "wdm"
    samples: int = 1
    spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stages: int = 0

    def params(self) -> dict:
        params: dict = {}
        if self.kind != "upscale":
            params["samples"] = int(self.samples)
            if all(s > 0 for s in self.spacing_mm):
                params["spacing"] = [float(s) for s in self.spacing_mm]
        elif self.stages > 0:
            params["stages"] = int(self.stages)
        return params


def _bad_input(message: str, hint: str) -> LaunchError:
    return LaunchError(Failure("BAD_INPUT", message, hint))


def _output_keys(outputs: dict[str, str]) -> list[str]:
    keys = [k for k in outputs if k == "volume" or k.startswith("volume_")]
    return sorted(keys, key=lambda k: int(k.split("_")[1]) if "_" in k else 0)


def condition_names(card: dict | None) -> list[str]:
    """The source contrasts a translating model names (a published cWDM: ``["t1n", "t2w", "t2f"]``), else ``[]``."""
    return [str(n) for n in ((card or {}).get("task_config") or {}).get("conditions") or []]


def start_generation(options: GenerateOptions, input_node=None, scene=None, python: Sequence[str] | None = None,
                     env: dict[str, str] | None = None, conditions: dict | None = None) -> NodeJob:
    """Start a generation (``input_node``: the cWDM condition, or the volume to upscale); returns the running job.

    A model that takes several named source contrasts gets them as ``conditions`` (name -> volume node, in the
    card's order; the result lies on the first one's grid). ``scene`` is where unconditional samples go (the
    input's scene otherwise). Raises LaunchError (scene unchanged) when the input cannot be used.
    """
    if conditions:
        missing = [name for name, node in conditions.items() if node is None]
        if missing:
            raise _bad_input(f"model '{options.model}' needs the contrasts {', '.join(conditions)}; "
                             f"none selected for {', '.join(missing)}", "select a volume for each contrast")
        input_node = next(iter(conditions.values()))
    if options.kind not in KINDS:
        raise LaunchError(Failure("BAD_CONFIG", f"unknown generation kind '{options.kind}'", f"use one of {', '.join(KINDS)}"))
    if not options.model:
        raise LaunchError(Failure("BAD_CONFIG", "no model chosen", "choose or import a model in the Models section"))
    task, _ = KINDS[options.kind]
    if options.kind == "upscale" and input_node is None:
        raise _bad_input("no volume selected to upscale", "select the low-resolution volume")
    if options.kind == "cascade" and input_node is not None:
        raise _bad_input("the 2D cascade generates new slices and takes no input volume",
                         "clear the input, or choose 'upscale' to super-resolve the selected volume")
    if input_node is not None and (not input_node.IsA("vtkMRMLScalarVolumeNode") or input_node.IsA(
            "vtkMRMLLabelMapVolumeNode")):
        raise _bad_input(f"'{input_node.GetName()}' is not a scalar volume", "select a scalar (grey-value) volume")
    scene = input_node.GetScene() if input_node is not None else scene
    if scene is None:
        raise LaunchError(Failure("USAGE", "no scene to add the generated volumes to", "pass the scene"))
    work = WorkFolder("meddiff-generate-")
    named = conditions or ({"condition" if options.kind == "wdm" else "image": input_node} if input_node is not None else {})
    inputs = {}
    for name, node in named.items():
        if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            work.close(success=True)
            raise _bad_input(f"'{node.GetName()}' is not a scalar volume", "select a scalar (grey-value) volume")
        try:
            inputs[name] = str(write_volume_node(node, work.file(f"{name}.nrrd")))
        except ExchangeError as exc:
            work.close(success=True)
            raise _bad_input(str(exc), "check that the input node holds an image") from exc
    grid = Grid.of(input_node) if options.kind == "wdm" and input_node is not None else None
    if options.kind == "upscale":
        base_name = f"{input_node.GetName()} super-resolved"
    elif input_node is not None:
        base_name = f"{input_node.GetName()} translated"
    else:
        base_name = f"{options.model} sample"

    def collect(outputs: dict[str, str]) -> list:
        keys = _output_keys(outputs)
        if not keys:
            raise ExchangeError("the engine finished but reported no volume")

        def load_all(added: list) -> None:
            for n, key in enumerate(keys):
                name = base_name if len(keys) == 1 else f"{base_name} {n + 1}"
                node = read_volume_node(Path(outputs[key]), scene, name, grid, like=input_node)
                added.append(node)
                show_with_window(node)

        return collect_atomically(load_all)

    return launch(work, task, inputs, {"volume": str(work.file("generated.nrrd"))}, options, options.params(), collect,
                  python=python, env=env)
