"""The engine's start and cancel path holds on Windows and macOS by construction: no OS-specific call unguarded.

Windows cannot run here, so this reads the code: every use of a call that exists (or means the same) on one
family of systems only must sit in a branch of an ``if os.name ...`` test. ``Testing/core/test_worker.py`` also
runs the worker with the POSIX-only calls deleted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_AND_CANCEL_PATH = [ROOT / "MedDiffSlicer" / "MedDiffSlicerLib" / "engine.py",
                         ROOT / "MedDiffCore" / "meddiffcore" / "worker.py",
                         ROOT / "MedDiffCore" / "meddiffcore" / "cancel.py",
                         ROOT / "MedDiffCore" / "meddiffcore" / "jobs.py",
                         ROOT / "MedDiffCore" / "meddiffcore" / "cli" / "__init__.py"]
#: (module, name) pairs that are POSIX-only, or mean something else on Windows (os.kill(pid, 0) sends Ctrl-C there).
POSIX_ONLY = {("os", "killpg"), ("os", "kill"), ("os", "setsid"), ("os", "getpgid"), ("os", "setpgrp"), ("os", "fork"),
              ("signal", "SIGKILL"), ("signal", "pthread_sigmask"), ("signal", "sigwait"), ("signal", "SIGSTOP"),
              ("signal", "SIGHUP"), ("signal", "SIGUSR1")}
WINDOWS_ONLY = {("signal", "CTRL_BREAK_EVENT"), ("signal", "CTRL_C_EVENT"), ("ctypes", "windll"), ("ctypes", "WinDLL"),
                ("subprocess", "CREATE_NO_WINDOW"), ("subprocess", "CREATE_NEW_PROCESS_GROUP"), ("subprocess", "STARTUPINFO")}
POSIX_KEYWORDS = {"start_new_session", "preexec_fn", "process_group"}


def _uses(tree) -> list[tuple[ast.AST, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in POSIX_ONLY | WINDOWS_ONLY:
                found.append((node, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.keyword) and node.arg in POSIX_KEYWORDS:
            found.append((node, f"{node.arg}="))
        elif isinstance(node, ast.Dict):
            found += [(key, f"{key.value}=") for key in node.keys
                      if isinstance(key, ast.Constant) and key.value in POSIX_KEYWORDS]
    return found


def _guarded(node, parents) -> bool:
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.If) and node is not parent.test and "os.name" in ast.unparse(parent.test):
            return True
        node = parent
    return False


@pytest.mark.parametrize("path", START_AND_CANCEL_PATH, ids=lambda p: p.name)
def test_os_specific_calls_sit_behind_an_os_name_test(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    unguarded = [f"{path.name}:{node.lineno} {name}" for node, name in _uses(tree) if not _guarded(node, parents)]
    assert not unguarded, f"OS-specific calls outside an `if os.name ...` branch: {unguarded}"


def test_the_check_finds_an_unguarded_call():
    tree = ast.parse("import os, signal\nos.killpg(1, signal.SIGKILL)\nif os.name == 'nt':\n    pass\nelse:\n    os.kill(1, 0)\n")
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    assert sorted(name for node, name in _uses(tree) if not _guarded(node, parents)) == ["os.killpg", "signal.SIGKILL"]
