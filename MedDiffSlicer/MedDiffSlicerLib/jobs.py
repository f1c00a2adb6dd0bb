"""A job on scene nodes: inputs written to a work folder, one engine run, outputs loaded as new nodes.

:class:`NodeJob` ties an :class:`~.engine.EngineProcess` to its work folder and
to a ``collect`` step that turns the engine's output files into nodes. The
scene changes only when the whole job succeeded: a failed, cancelled or killed
engine, or an output that cannot be loaded, adds nothing (nodes a failed
collect had added are removed again) and keeps the work folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .engine import EngineProcess, Progress
from .errors import Failure
from .exchange import ExchangeError, WorkFolder, remove_nodes


def write_job_file(path: Path, task: str, inputs: dict[str, str], outputs: dict[str, str], model: str | None,
                   params: dict[str, Any], device: str, seed: int | None) -> Path:
    """The engine's job file (format: ``meddiffcore.jobs.Job``)."""
    job = {"task": task, "inputs": inputs, "outputs": outputs, "model": model or None, "params": params,
           "device": device, "seed": seed}
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


@dataclass
class RunOptions:
    """What every module lets the user choose; a zero/negative value or empty text means "the model card's default"."""

    model: str = ""
    steps: int = 0
    seed: int = -1
    device: str = "auto"

    @property
    def engine_seed(self) -> int | None:
        return self.seed if self.seed >= 0 else None

    def step_params(self) -> dict:
        return {"steps": int(self.steps)} if self.steps > 0 else {}


class EngineChain:
    """Engine runs one after another (a later job may read an earlier one's output), seen as one engine.

    Has the interface of :class:`~.engine.EngineProcess` that :class:`NodeJob`
    uses. The next run starts only when the previous one succeeded; a failure or
    a cancel ends the chain, so the job's outputs are all or nothing.
    """

    def __init__(self, job_files: Sequence[Path], python: Sequence[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        if not job_files:
            raise ValueError("an engine chain needs at least one job file")
        self.engines = [EngineProcess(f, python=python, env=env) for f in job_files]
        self.log: list[str] = []
        self.warnings: list[str] = []
        for engine in self.engines:
            engine.log = self.log  # one log and one list of warnings for the whole chain, in order
            engine.warnings = self.warnings
        self._index = 0
        self.outputs: dict[str, str] | None = None
        self.failure = None
        self.returncode: int | None = None

    @property
    def current(self) -> EngineProcess:
        return self.engines[self._index]

    @property
    def progress(self) -> Progress:
        return self.current.progress

    @property
    def pid(self) -> int | None:
        return self.current.pid

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def succeeded(self) -> bool:
        return self.finished and self.failure is None

    @property
    def cancel_requested(self) -> bool:
        return self.current.cancel_requested

    def start(self) -> "EngineChain":
        self.current.start()
        return self

    def poll(self) -> list[dict]:
        if self.finished:
            return []
        events = self.current.poll()
        if self.current.finished:
            if self.current.succeeded and self._index + 1 < len(self.engines):
                self._index += 1
                self.current.start()
            else:
                self._end()
        return events

    def wait(self, timeout_s: float | None = None, interval_s: float = 0.05) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.poll()
            time.sleep(interval_s)
        return self.succeeded

    def cancel(self) -> None:
        self.current.cancel()

    def _end(self) -> None:
        self.failure = self.current.failure
        if self.failure is None:
            self.outputs = {}
            for engine in self.engines:
                self.outputs.update(engine.outputs or {})
        self.returncode = self.current.returncode


def launch(work, task: str, inputs: dict[str, str], outputs: dict[str, str], options: RunOptions, params: dict,
           collect: Callable[[dict[str, str]], list], python: Sequence[str] | None = None,
           env: dict[str, str] | None = None) -> "NodeJob":
    """Write the job file into ``work`` and start one engine run whose outputs ``collect`` turns into nodes."""
    job_file = write_job_file(work.file("job.json"), task, inputs, outputs, options.model,
                              {**options.step_params(), **params}, options.device, options.engine_seed)
    return NodeJob(EngineProcess(job_file, python=python, env=env), work, collect).start()


class NodeJob:
    """One engine run whose outputs become new nodes. Poll from a timer or wait."""

    def __init__(self, engine: EngineProcess, work: WorkFolder, collect: Callable[[dict[str, str]], list]) -> None:
        self.engine = engine
        self.work = work
        self._collect = collect
        self.nodes: list = []
        self.failure: Failure | None = None
        self.done = False

    @property
    def progress(self):
        return self.engine.progress

    @property
    def log(self) -> list[str]:
        return self.engine.log

    @property
    def warnings(self) -> list[str]:
        """The engine's warnings about the result (an input outside the model's training domain, ...)."""
        return self.engine.warnings

    @property
    def succeeded(self) -> bool:
        return self.done and self.failure is None

    def start(self) -> "NodeJob":
        self.engine.start()
        return self

    def poll(self) -> bool:
        """Follow the engine; once it ended, load its outputs (or record why not). Returns whether the job is over."""
        if self.done:
            return True
        self.engine.poll()
        if self.engine.finished:
            self._finish()
        return self.done

    def wait(self, timeout_s: float | None = None) -> bool:
        self.engine.wait(timeout_s)
        if self.engine.finished:
            self._finish()
        return self.succeeded

    def cancel(self) -> None:
        self.engine.cancel()

    def _finish(self) -> None:
        if self.done:
            return
        self.failure = self.engine.failure
        if self.failure is None:
            try:
                self.nodes = self._collect(self.engine.outputs or {})
            except ExchangeError as exc:
                self.failure = Failure("OUTPUT_MISSING", str(exc))
                self.engine.log.append(self.failure.text())
        keep = self.failure is not None and not self.failure.cancelled  # a cancelled job has nothing to diagnose
        if keep:
            self.engine.log.append(f"work folder kept for diagnosis: {self.work.path}")
        self.work.close(success=not keep)
        self.done = True


def collect_atomically(load_all: Callable[[list], None]) -> list:
    """Run ``load_all(added)``, which appends each node it adds; on ExchangeError remove them and re-raise."""
    added: list = []
    try:
        load_all(added)
    except ExchangeError:
        remove_nodes(added)
        raise
    return added
