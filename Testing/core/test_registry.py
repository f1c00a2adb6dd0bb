"""Every registered job, trainable task and CLI command resolves to real code, and CI runs README's test command."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import pytest

from meddiffcore.cli import build_parser, command_modules
from meddiffcore.jobs import JOB_RUNNERS, runner_for
from meddiffcore.tasks.base import TRAINABLE_TASKS, trainable_task

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(JOB_RUNNERS))
def test_job_runner_imports(name):
    assert callable(runner_for(name))


@pytest.mark.parametrize("name", sorted(TRAINABLE_TASKS))
def test_trainable_task_has_the_protocol(name):
    task = trainable_task(name)
    assert task.name == name
    for method in ("build_network", "build_dataset", "training_loss", "preview", "model_card"):
        assert callable(getattr(task, method)), f"{name} lacks {method}"
    fields = task.config_class.__dataclass_fields__
    assert "train" in fields and "name" in fields


def test_cli_builds_and_command_modules_import_nothing_heavy():
    code = ("import sys; import meddiffcore.cli as c; c.build_parser(); "
            "heavy = [m for m in ('torch', 'nibabel', 'SimpleITK') if m in sys.modules]; print(heavy)")
    out = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"meddiff --help imports {out.strip()}"
    assert build_parser().parse_args(["info"]).handler
    assert all(importlib.import_module(m) for m in command_modules())


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    marker = readme.index("<!-- test-command -->")
    block = readme[marker:].split("```")[1]
    command = block.split("\n", 1)[1].strip()
    printed = subprocess.run(["bash", str(REPO / ".ci" / "run"), "--print-command"], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == command
    assert command.index("pip install torch==") < command.index("pip install -e")


def test_job_preconditions_name_what_is_missing(tmp_path):
    from meddiffcore.errors import ConfigError
    from meddiffcore.io import volume_files
    from meddiffcore.errors import BadInputError
    from meddiffcore.jobs import Job

    job = Job(task="uncond.generate", params={"samples": 0})
    with pytest.raises(ConfigError, match="no model given"):
        job.require_model()
    with pytest.raises(ConfigError, match="no 'volume' output"):
        job.require_output("volume")
    with pytest.raises(ConfigError, match="at least 1"):
        job.sample_count()
    assert Job(task="x", params={}).sample_count() == 1
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "notes.gz").write_bytes(b"")
    assert volume_files(tmp_path) == [tmp_path / "a.nii.gz"]
    with pytest.raises(BadInputError, match="no volume files"):
        volume_files(tmp_path / "empty")
