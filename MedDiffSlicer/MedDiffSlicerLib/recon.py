"""Sparse-view CT, compressed-sensing MRI and MRI z-axis super-resolution on scene nodes.

Runs the engine jobs ``recon.ct``, ``recon.mri`` and ``recon.zsr`` (see
``meddiffcore.tasks.recon.run``). A simulation starts from a fully sampled
volume: the engine measures it (N parallel-beam views, an undersampled k-space,
or thick slices) and reconstructs, so the result can be compared side by side
with the classical baselines (FBP or zero-filled, the iterative TV
reconstruction, interpolated) and with the volume itself. A real sinogram comes as a volume (z = slice, y = angle, x =
detector bin) with one angle in degrees per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import Failure, LaunchError
from .exchange import ExchangeError, Grid, WorkFolder, read_volume_node, show_with_window, write_volume_node
from .jobs import NodeJob, RunOptions, collect_atomically, launch

#: Problem -> (engine task, what the user gives, the baseline's name, the iterative baseline's name or None).
PROBLEMS = {
    "ct-simulate": ("recon.ct", "a CT volume to measure with N parallel-beam views", "FBP", "TV iterative"),
    "ct-sinogram": ("recon.ct", "a sinogram volume (z, angle, detector) and its angles", "FBP", "TV iterative"),
    "mri-simulate": ("recon.mri", "an MR volume to undersample in k-space", "zero-filled", "CS iterative"),
    "zsr-simulate": ("recon.zsr", "a thin-slice MR volume to average into thick slices", "interpolated", None),
    "zsr": ("recon.zsr", "a thick-slice MR volume", "interpolated", None),
}
#: Display window (level, width) in HU for CT results; MR results use automatic windows.
CT_WINDOW_HU = (40.0, 400.0)
MASK_KINDS = ("uniform", "equispaced", "poisson")


@dataclass
class ReconOptions(RunOptions):
    """The problem (a key of PROBLEMS) and its settings; ``K``/``lam`` <= 0 mean the model card's default."""

    problem: str = "ct-simulate"
    mode: str = "fast"
    K: float = 0.0
    lam: float = -1.0
    views: int = 16
    angles_deg: Sequence[float] = ()
    acceleration: float = 8.0
    mask_kind: str = "uniform"
    factor: int = 4

    def params(self) -> dict:
        params: dict = {"mode": self.mode}
        if self.K > 0:
            params["K"] = float(self.K)
        if self.lam >= 0:
            params["lambda"] = float(self.lam)
        if self.problem == "ct-simulate":
            params["views"] = int(self.views)
        elif self.problem == "mri-simulate":
            params.update(acceleration=float(self.acceleration), mask_kind=self.mask_kind)
        elif self.problem.startswith("zsr"):
            params.update(factor=int(self.factor), simulate=self.problem == "zsr-simulate")
        return params

    @property
    def modality(self) -> str:
        return "ct" if self.problem.startswith("ct") else "mri"


def _bad_input(message: str, hint: str) -> LaunchError:
    return LaunchError(Failure("BAD_INPUT", message, hint))


def parse_angles(text: str) -> list[float]:
    """``"0, 11.25, 22.5"`` -> degrees; ``"0:180:16"`` -> 16 views evenly over [0, 180) degrees."""
    text = text.strip()
    try:
        if text.count(":") == 2:
            start, stop, count = (float(v) for v in text.split(":"))
            return [start + (stop - start) * i / int(count) for i in range(int(count))]
        return [float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise _bad_input(f"cannot read angles from {text!r}",
                         "give degrees separated by commas, or start:stop:count such as 0:180:16") from None


def start_reconstruction(volume_node, options: ReconOptions, python: Sequence[str] | None = None,
                         env: dict[str, str] | None = None) -> NodeJob:
    """Start the reconstruction of ``volume_node`` (the sinogram for ``ct-sinogram``); returns the running job.

    The job's nodes on success: the reconstruction, the baseline, then (CT and MRI) the
    iterative baseline (TV least squares / TV compressed sensing from the same measurements);
    ``job.warnings`` says where the model's card measured it worse than the iterative baseline.
    Raises LaunchError (scene unchanged) when the input cannot be used.
    """
    if options.problem not in PROBLEMS:
        raise LaunchError(Failure("BAD_CONFIG", f"unknown problem '{options.problem}'", f"use one of {', '.join(PROBLEMS)}"))
    task, what, baseline_name, iterative_name = PROBLEMS[options.problem]
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA(
            "vtkMRMLLabelMapVolumeNode"):
        raise _bad_input("no scalar volume selected as input", f"select {what}")
    scene = volume_node.GetScene()
    work = WorkFolder("meddiff-recon-")
    inputs = {}
    try:
        if options.problem == "ct-sinogram":
            rows = volume_node.GetImageData().GetDimensions()[1] if volume_node.GetImageData() else 0
            angles = list(options.angles_deg) or [180.0 * i / rows for i in range(rows)]
            if len(angles) != rows:
                raise _bad_input(f"{len(angles)} angles given for a sinogram with {rows} rows (y axis)",
                                 "give one angle in degrees per sinogram row, or leave the angles empty for 0-180")
            work.file("angles.txt").write_text("\n".join(f"{a:.9g}" for a in angles) + "\n", encoding="utf-8")
            inputs = {"sinogram": str(write_volume_node(volume_node, work.file("sinogram.nrrd"))),
                      "angles": str(work.file("angles.txt"))}
        else:
            inputs = {"volume": str(write_volume_node(volume_node, work.file("input.nrrd")))}
    except ExchangeError as exc:
        work.close(success=True)
        raise _bad_input(str(exc), "check that the input node holds an image") from exc
    except LaunchError:
        work.close(success=True)
        raise
    # the simulations reconstruct on the input's own grid; the others on the grid the engine derives
    grid = Grid.of(volume_node) if options.problem in ("ct-simulate", "mri-simulate", "zsr-simulate") else None
    window = CT_WINDOW_HU if options.modality == "ct" else None
    base = volume_node.GetName()
    names = {"volume": f"{base} {options.mode.upper()} recon", "baseline": f"{base} {baseline_name}",
             "iterative": f"{base} {iterative_name}"}

    def collect(outputs: dict[str, str]) -> list:
        if "volume" not in outputs:
            raise ExchangeError("the engine finished but reported no volume")

        def load_all(added: list) -> None:
            for key in ("volume", "baseline", "iterative"):
                if key in outputs:
                    node = read_volume_node(Path(outputs[key]), scene, names[key], grid, like=volume_node)
                    added.append(node)
                    show_with_window(node, window)

        return collect_atomically(load_all)

    outputs = {"volume": str(work.file("recon.nrrd")), "baseline": str(work.file("baseline.nrrd")),
               **({"iterative": str(work.file("iterative.nrrd"))} if iterative_name else {})}
    return launch(work, task, inputs, outputs, options, options.params(), collect, python=python, env=env)
