"""A job on scene nodes: inputs written to a work folder, one engine run, outputs loaded as new nodes.

:class:`NodeJob` ties an :class:`~.engine.EngineProcess` to its work folder and
to a ``collect`` step that turns the engine's output files into nodes. The
scene changes only when the whole job succeeded: a failed, cancelled or killed
engine, or an output that cannot be loaded, adds nothing (nodes a failed
collect had added are removed again) and keeps the work folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .engine import EngineProcess
from .errors import Failure
from .exchange import ExchangeError, WorkFolder, remove_nodes


def write_job_file(path: Path, task: str, inputs: dict[str, str], outputs: dict[str, str], model: str | None,
                   params: dict[str, Any], device: str, seed: int | None) -> Path:
    """The engine's job file (format: ``meddiffcore.jobs.Job``)."""
    job = {"task": task, "inputs": inputs, "outputs": outputs, "model": model or None, "params": params,
           "device": device, "seed": seed}
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


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
        if self.failure is not None:
            self.engine.log.append(f"work folder kept for diagnosis: {self.work.path}")
        self.work.close(success=self.failure is None)
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
