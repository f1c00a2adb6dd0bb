"""Jobs: one unit of work (synthesize, inpaint, reconstruct, generate) described as data.

A job is what the Slicer module writes to ``JOB.json`` for the engine process,
and what each CLI command builds from its arguments, so the GUI and the terminal
run exactly the same code. A job names its inputs and outputs by path, the
model, the device and task parameters. Runners are looked up by name and
imported only when needed, so the engine starts fast and imports no task it
does not run.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import from_dict, to_dict
from .devices import set_threads, translate_out_of_memory
from .domain import warn_out_of_domain
from .errors import CancelledError, ConfigError, DependencyError, ErrorCode, MedDiffError
from .progress import Reporter

#: Job name -> "module:function". A runner is ``run(job, reporter) -> dict[str, str]`` of written outputs.
JOB_RUNNERS: dict[str, str] = {
    "wdm.generate": "meddiffcore.tasks.wdm.run:run_generate",
    "sr.generate": "meddiffcore.tasks.sr.run:run_generate",
    "sr.upscale": "meddiffcore.tasks.sr.run:run_upscale",
    "recon.ct": "meddiffcore.tasks.recon.run:run_ct",
    "recon.mri": "meddiffcore.tasks.recon.run:run_mri",
    "recon.zsr": "meddiffcore.tasks.recon.run:run_zsr",
    "recon.phantom": "meddiffcore.tasks.recon.run:run_phantom",
    "ctp.inpaint": "meddiffcore.tasks.ctp.run:run_inpaint",
    "ctp.perfusion": "meddiffcore.tasks.ctp.run:run_perfusion",
    "ctp.phantom": "meddiffcore.tasks.ctp.run:run_phantom",
    "uncond.generate": "meddiffcore.tasks.uncond:run_generate",
    "ctca.synthesize": "meddiffcore.tasks.ctca.run:run_synthesize",
}


@dataclass
class Job:
    """A job file: what to run, on which files, with which model and settings."""

    task: str
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int | None = None
    threads: int | None = None
    """CPU threads for torch; None chooses them from the cores that are free now (see devices.set_threads)."""

    @classmethod
    def from_file(cls, path: str | Path) -> "Job":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"job file '{path}' does not exist", "check the path passed to the worker") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"job file '{path}' is not valid JSON: {exc}", "write the job as one JSON object") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"job file '{path}' must hold a JSON object", "see the job format in the README")
        return from_dict(cls, data, where="job")

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2)

    def output_paths(self) -> list[Path]:
        return [Path(p) for p in self.outputs.values() if p]

    def require_model(self) -> str:
        """The model reference, or a ConfigError saying how to give one."""
        if not self.model:
            raise ConfigError("no model given", "pass --model NAME (see `meddiff models list`)")
        return self.model

    def require_output(self, name: str = "volume") -> Path:
        """The path of output ``name``, or a ConfigError naming it."""
        if not self.outputs.get(name):
            raise ConfigError(f"the job names no '{name}' output", f"set outputs.{name} to a .nii.gz/.nrrd path")
        return Path(self.outputs[name])

    def sample_count(self) -> int:
        """``params.samples`` (default 1), at least 1."""
        samples = int(self.params.get("samples", 1))
        if samples < 1:
            raise ConfigError(f"samples must be at least 1, got {samples}", "ask for 1 or more samples")
        return samples


def runner_for(task: str) -> Callable[[Job, Reporter], dict[str, str]]:
    if task not in JOB_RUNNERS:
        raise ConfigError(f"unknown job task '{task}'", f"known tasks: {', '.join(sorted(JOB_RUNNERS))}")
    module_name, func_name = JOB_RUNNERS[task].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def model_paths(job: Job) -> list[tuple[str, Path]]:
    """The files of the job's models (``model``, ``params.hr_model``) that can be found, as labelled inputs."""
    from .models import find_model

    found = []
    for label, ref in (("model", job.model), ("hr_model", job.params.get("hr_model"))):
        if not isinstance(ref, str) or not ref:
            continue
        try:
            files = find_model(ref)
        except MedDiffError:
            continue  # the runner reports a missing model with its own advice
        found += [(f"{label} card", files.card_path), (f"{label} weights", files.weights_path)]
    return found


def check_job(job: Job) -> None:
    """What every job is checked for before its runner starts: every value within its documented range
    (:data:`meddiffcore.checks.VALUE_RANGES`), and no output onto an input or a model file."""
    from .checks import check_outputs_not_inputs, check_value, check_values

    for section, paths in (("inputs", job.inputs), ("outputs", job.outputs)):
        for key, value in paths.items():
            if not isinstance(value, str):
                raise ConfigError(f"{section}.{key} must be a path (a string), got {value!r}",
                                  f"give {section}.{key} as a file or folder path in quotes")
    check_value("seed", job.seed)
    check_value("threads", job.threads)
    check_values(job.params, {k: f"params.{k}" for k in job.params})
    inputs = [(f"inputs.{k}", v) for k, v in job.inputs.items()] + model_paths(job)
    check_outputs_not_inputs(inputs, [(f"outputs.{k}", v) for k, v in job.outputs.items()])


def run_job(job: Job, reporter: Reporter) -> int:
    """Run a job, reporting every outcome as an event; return the process exit status."""
    try:
        runner = runner_for(job.task)
        check_job(job)
        threads = set_threads(job.threads)
        reporter.started(job.task, model=job.model, device=job.device, threads=threads)
        warn_out_of_domain(job, reporter, runner)  # before minutes of work, for every task alike
        with translate_out_of_memory(f"job '{job.task}'"):
            outputs = runner(job, reporter)
        reporter.done({k: str(v) for k, v in outputs.items()})
        return 0
    except MedDiffError as error:
        reporter.error(error)
        return error.exit_status
    except KeyboardInterrupt:
        error = cancelled_error()
        reporter.error(error)
        return error.exit_status
    except ModuleNotFoundError as exc:  # an incomplete installation, not a bug
        package = (exc.name or str(exc)).split(".")[0]
        error = DependencyError(f"the Python package '{package}' is not installed for this Python ({sys.executable})",
                                f"install it (`pip install {package}`; in Slicer: 'Install dependencies'), then run again")
        reporter.error(error)
        return error.exit_status
    except Exception as exc:  # a bug: say so plainly, with the traceback in the log
        reporter.log(traceback.format_exc(), level="debug")
        error = MedDiffError(
            f"internal error in '{job.task}': {type(exc).__name__}: {exc}",
            "this is a bug in MedDiff; please report it with the job file and this message",
            code=ErrorCode.INTERNAL,
        )
        reporter.error(error)
        return error.exit_status


def cancelled_error() -> CancelledError:
    return CancelledError("the job was cancelled", "nothing was written; run it again when ready")


def run_cancellable(job: Job, reporter: Reporter, watch_signals: bool = True) -> int:
    """Run ``job`` in this process so that cancelling it (SIGINT, SIGTERM, or any watcher that sets the
    reporter's cancel token) ends it the same way everywhere: one CANCELLED error event, status 130, no
    output; a job that has not stopped ``CANCEL_GRACE_S`` after the request has its temporary files
    removed and the process exits at once (see :mod:`meddiffcore.cancel`)."""
    from .cancel import GracePeriod, cancel_on_signals, remove_temporaries

    token = reporter.cancel_token
    if watch_signals:
        cancel_on_signals(token)

    def give_up() -> None:
        remove_temporaries(job.output_paths())
        reporter.error(cancelled_error())

    grace = GracePeriod(token, give_up, ErrorCode.CANCELLED.exit_status)
    try:
        if token.cancelled:
            give_up()
            return ErrorCode.CANCELLED.exit_status
        return run_job(job, reporter)
    finally:
        grace.finished()
