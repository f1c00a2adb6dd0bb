"""The engine's warnings about a result reach the module: kept apart from the log lines, for one run and for a chain."""

import json
import sys

from MedDiffSlicerLib.engine import EngineProcess
from MedDiffSlicerLib.jobs import EngineChain

WARNS = """
import json, sys
print(json.dumps({"event": "log", "level": "info", "message": "ordinary"}), flush=True)
print(json.dumps({"event": "log", "level": "warning", "message": next(a for a in sys.argv if a.endswith(".json")), "hint": "what it means"}), flush=True)
print(json.dumps({"event": "done", "outputs": {}}), flush=True)
"""


def _engine(tmp_path, name: str) -> EngineProcess:
    (tmp_path / f"{name}.json").write_text("{}")
    # The warning names the job file it was started with (one of the script's arguments).
    return EngineProcess(tmp_path / f"{name}.json", python=[sys.executable, "-c", WARNS])


def test_a_warning_event_is_kept_as_a_warning_and_shown_in_the_log(tmp_path):
    engine = _engine(tmp_path, "a").start()
    assert engine.wait(60), engine.log
    job_file = str(tmp_path / "a.json")
    assert engine.warnings == [f"{job_file} what it means"]
    assert "ordinary" in engine.log and f"warning: {job_file} what it means" in engine.log


def test_a_chain_keeps_the_warnings_of_every_run_in_order(tmp_path):
    chain = EngineChain([tmp_path / "first.json", tmp_path / "second.json"], python=[sys.executable, "-c", WARNS])
    for name in ("first", "second"):
        (tmp_path / f"{name}.json").write_text(json.dumps({}))
    chain.start()
    assert chain.wait(120), chain.log
    assert [w.split()[0] for w in chain.warnings] == [str(tmp_path / "first.json"), str(tmp_path / "second.json")]
