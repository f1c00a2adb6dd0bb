"""A stand-in for Slicer's ``PythonSlicer``, which is a CTKAppLauncher in front of the real interpreter.

Read in CTKAppLauncher's source (``Base/ctkAppLauncher.cpp``): the launcher starts the real
interpreter as its *child* (QProcess, forwarded stdin/stdout/stderr, same process group), waits
for it, and exits with its exit code; if the child dies abnormally (a signal: a crash, the
out-of-memory killer) it prints ``[<program>] exit abnormally - Report the problem.`` and exits
with status 1. It handles no signals itself: SIGTERM or SIGINT end the launcher and leave the
child running. This script does the same with the interpreter that installed it.

What it does not reproduce: the launcher's settings file (library paths, ``PYTHONHOME``,
Slicer's own ``PYTHONPATH`` entries, which it would prepend to the environment's) and Windows.

:func:`install` writes it as an executable named ``PythonSlicer`` into a folder, for ``PATH``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def main() -> int:
    real = sys.executable
    child = subprocess.Popen([real, *sys.argv[1:]])  # stdin, stdout and stderr are the launcher's own
    status = child.wait()
    if status < 0:
        print(f"[{real}] exit abnormally - Report the problem.", file=sys.stderr, flush=True)
        return 1
    return status


def install(folder: Path, python: str = sys.executable) -> Path:
    """Write an executable ``PythonSlicer`` launcher for ``python`` into ``folder``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    launcher = folder / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    launcher.write_text(f"#!{python}\n" + Path(__file__).read_text(encoding="utf-8"), encoding="utf-8")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return launcher


if __name__ == "__main__":
    sys.exit(main())
