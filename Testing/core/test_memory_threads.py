"""Out of memory is OUT_OF_MEMORY with a fix, never "a bug in MedDiff"; CTP chooses its batch from free memory
and halves a batch that does not fit; CPU threads come from --threads / the job, or from the free cores.

The memory tests run real processes under a real address-space limit (RLIMIT_AS, Linux), no mocks: the
limit is set a measured amount above what the same process needs before the work starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from meddiffcore.devices import free_cores, is_out_of_memory, out_of_memory_error, usable_cores
from meddiffcore.errors import EXIT_STATUS, ErrorCode

resource = pytest.importorskip("resource")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(resource, "RLIMIT_AS"),
                                reason="RLIMIT_AS and /proc are Linux's")
MiB = 2**20


def _limited(limit_bytes: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return set_limit


def _python(code: str, limit_bytes: int | None = None, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=_limited(limit_bytes) if limit_bytes else None)


def _vm_peak_after(code: str, env=None) -> int:
    """VmPeak (bytes) of a process that ran ``code``: what the work needs before its big allocations."""
    probe = "\nprint('VMPEAK', [l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])"
    result = _python(textwrap.dedent(code) + probe, env=env)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("VMPEAK")[1].split()[0]) * 1024


@linux_only
def test_real_allocation_failures_are_recognised_and_named():
    """torch's CPU allocator (a RuntimeError) and numpy (MemoryError) failing under a real limit."""
    setup = "import numpy, torch, meddiffcore.devices as d\n"
    base = _vm_peak_after(setup)
    code = setup + textwrap.dedent("""
        out = []
        for make in (lambda: torch.empty(2**31, dtype=torch.uint8), lambda: numpy.ones(2**31, numpy.uint8)):
            try:
                make()
                out.append("allocated")
            except Exception as exc:
                err = d.out_of_memory_error(exc, "the test")
                out.append([type(exc).__name__, d.is_out_of_memory(exc), err.code.value, err.message, err.hint])
        print(out)
    """)
    result = _python(code, base + 256 * MiB)
    assert result.returncode == 0, result.stderr
    rows = eval(result.stdout)  # noqa: S307 - our own child's repr of plain lists
    assert [r[0] for r in rows] == ["RuntimeError", "MemoryError"]
    for _, recognised, code_value, message, hint in rows:
        assert recognised and code_value == "OUT_OF_MEMORY"
        assert "main memory" in message and hint


def test_other_runtime_errors_stay_bugs():
    assert not is_out_of_memory(RuntimeError("shape mismatch: [2, 3] vs [3, 2]"))
    assert is_out_of_memory(MemoryError())
    error = out_of_memory_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "job 'x'", "lower --batch-size")
    assert "GPU memory" in error.message and error.hint == "lower --batch-size"


_CTP_SETUP = """
import numpy, torch
torch.set_num_threads(1)
from meddiffcore.tasks.ctp.model import load_for_inference
from meddiffcore.tasks.ctp.phantom import make_ctp_phantom
from meddiffcore.jobs import Job
m = load_for_inference("ctp-demo", torch.device("cpu"))
seq = make_ctp_phantom(3, slices=8, size=256, frames=9).sequence
"""


@pytest.fixture(scope="module")
def ctp_case(tmp_path_factory):
    """An 8 x 256^2 phantom sequence (one item needs ~0.7-0.8 GiB) and the memory its inpaint needs before sampling."""
    from meddiffcore.tasks.ctp.phantom import make_ctp_phantom
    from meddiffcore.tasks.ctp.sequences import write_ctp_sequence

    folder = tmp_path_factory.mktemp("ctp_oom")
    write_ctp_sequence(make_ctp_phantom(3, slices=8, size=256, frames=9).sequence, folder / "seq.seq.nrrd")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return folder, _vm_peak_after(_CTP_SETUP, env), env


#: Address space above the set-up's peak that holds one 8x256x256 item (about 0.65 GiB) with room, not three.
ROOMY_LIMIT = 1500 * MiB


def _inpaint(folder, limit, env, *extra):
    out = folder / "filled.seq.nrrd"
    out.unlink(missing_ok=True)
    result = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "inpaint", "--sequence", str(folder / "seq.seq.nrrd"),
                             "--out", str(out), "--bad-frames", "3,4,5", "--threads", "1", "--progress", "json", *extra],
                            capture_output=True, text=True, timeout=900, env=env, preexec_fn=_limited(limit))
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, events, out


@linux_only
def test_ctp_out_of_memory_at_batch_one_is_out_of_memory_with_a_fix(ctp_case):
    """Under a limit that one item does not fit in, the job ends OUT_OF_MEMORY (exit 6) naming the fix, not
    INTERNAL "a bug in MedDiff" (exit 1, as it did), and writes nothing."""
    folder, base, env = ctp_case
    result, events, out = _inpaint(folder, base + 200 * MiB, env, "--batch-size", "1")
    assert result.returncode == EXIT_STATUS[ErrorCode.OUT_OF_MEMORY], result.stdout + result.stderr
    error = [e for e in events if e["event"] == "error"][-1]
    assert error["code"] == "OUT_OF_MEMORY" and "main memory" in error["message"] and error["hint"]
    assert not out.exists()


@linux_only
def test_ctp_halves_a_batch_that_does_not_fit(ctp_case):
    """--batch-size 8 (3 items, about 2 GiB) under a limit that holds one item (about 0.65 GiB) with room to spare
    but not all three: the batch is halved and the job finishes. The room is wide (1.5 GiB) because the address
    space a failed attempt leaves behind varies from run to run (1.2 GiB was once too little for one item)."""
    folder, base, env = ctp_case
    result, events, out = _inpaint(folder, base + ROOMY_LIMIT, env, "--batch-size", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [e["message"] for e in events if e["event"] == "log" and e.get("level") == "warning"]
    assert any("did not fit in memory" in w for w in warnings), warnings
    assert out.exists()


@linux_only
def test_ctp_chooses_its_batch_from_free_memory(ctp_case):
    """The default batch under the same limit is chosen from the address space left: no failed batch at all."""
    folder, base, env = ctp_case
    result, events, out = _inpaint(folder, base + ROOMY_LIMIT, env)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = [e for e in events if e["event"] == "log"]
    assert not any("did not fit" in e["message"] for e in logs)
    chosen = [e["message"] for e in logs if "chosen from free memory" in e["message"]]
    assert chosen and "of up to 1 " in chosen[0], chosen  # 3 items, but half of 1.5 GiB holds one (estimated 0.8 GiB)


def test_free_cores_subtracts_the_load():
    assert free_cores(load=3.1, cores=2) == 1  # a shared 2-core machine: one thread, not two
    assert free_cores(load=0.2, cores=16) == 16
    assert free_cores(load=5.4, cores=16) == 11
    assert free_cores(load=40.0, cores=8) == 1
    assert 1 <= free_cores() <= usable_cores() <= (os.cpu_count() or 1)


def _phantom_job(tmp_path, **extra):
    job = {"task": "ctp.phantom", "outputs": {"sequence": str(tmp_path / "p.seq.nrrd")},
           "params": {"size": 16, "slices": 2, "frames": 3}, "seed": 0, **extra}
    (tmp_path / "job.json").write_text(json.dumps(job))
    return subprocess.run([sys.executable, "-m", "meddiffcore.cli", "run", str(tmp_path / "job.json"), "--progress",
                           "json"], capture_output=True, text=True, timeout=300)


def test_threads_from_the_job_file_and_the_default(tmp_path):
    started = lambda r: [json.loads(l) for l in r.stdout.splitlines() if '"started"' in l][0]  # noqa: E731
    result = _phantom_job(tmp_path, threads=1)
    assert result.returncode == 0, result.stderr
    assert started(result)["threads"] == 1
    result = _phantom_job(tmp_path)
    assert result.returncode == 0, result.stderr
    assert 1 <= started(result)["threads"] <= usable_cores()
    for bad in (0, 100_000_000):
        result = _phantom_job(tmp_path, threads=bad)
        assert result.returncode == EXIT_STATUS[ErrorCode.BAD_CONFIG], (bad, result.stdout)
        assert "threads" in result.stdout and "1 to 1024" in result.stdout
    result = _phantom_job(tmp_path, threads="2")
    assert result.returncode == EXIT_STATUS[ErrorCode.BAD_CONFIG] and "threads" in result.stdout


def test_threads_option_is_ranged_on_the_command_line(tmp_path):
    out = tmp_path / "p.seq.nrrd"
    result = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "phantom", "ctp", "--out", str(out), "--size", "16",
                             "--slices", "2", "--frames", "3", "--threads", "100000000"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_STATUS[ErrorCode.BAD_CONFIG], result.stderr
    assert "threads" in result.stderr and not out.exists()
    shown = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "phantom", "ctp", "--help"],
                           capture_output=True, text=True, timeout=300).stdout
    assert "1 to 1024" in " ".join(shown.split())


def test_threads_option_of_every_job_command(tmp_path):
    out = tmp_path / "p.seq.nrrd"
    result = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "phantom", "ctp", "--out", str(out), "--size", "16",
                             "--slices", "2", "--frames", "3", "--threads", "1", "--progress", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [json.loads(l) for l in result.stdout.splitlines() if '"started"' in l][0]["threads"] == 1
    saved = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "phantom", "ctp", "--out", str(out), "--threads", "2",
                            "--save-job", str(tmp_path / "j.json")], capture_output=True, text=True, timeout=300)
    assert saved.returncode == 0, saved.stderr
    assert json.loads((tmp_path / "j.json").read_text())["threads"] == 2
