"""The engine process speaks JSON lines, cancels within 2 s, and never leaves a partial output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_module
from meddiffcore.errors import EXIT_STATUS, ErrorCode
from meddiffcore.io import read_volume


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _job(tmp_path, model, **overrides) -> str:
    job = {"task": "uncond.generate", "model": model, "outputs": {"volume": str(tmp_path / "out.nii.gz")},
           "params": {"steps": 4, "sampler": "dpmpp_2m", "spacing": [0.8, 0.8, 2.0]}, "device": "cpu", "seed": 3}
    job.update(overrides)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return str(path)


def test_job_runs_and_reports_started_progress_done(tmp_path, meddiff_home, tiny_uncond_model):
    result = run_module("meddiffcore.worker", _job(tmp_path, tiny_uncond_model), env_home=meddiff_home)
    assert result.returncode == 0, result.stdout + result.stderr
    events = _events(result.stdout)
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["engine", "started"] and kinds[-1] == "done"
    assert events[0]["pid"] > 0 and events[0]["meddiffcore"].endswith("meddiffcore")
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and all(e["total"] == 4 for e in progress)
    assert progress[-1]["eta_s"] is not None and progress[-1]["phase"] == "sampling"
    volume = read_volume(events[-1]["outputs"]["volume"])
    assert volume.shape == (8, 16, 16)
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.0))


def test_same_seed_same_result(tmp_path, meddiff_home, tiny_uncond_model):
    first = tmp_path / "a"
    second = tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        assert run_module("meddiffcore.worker", _job(folder, tiny_uncond_model), env_home=meddiff_home).returncode == 0
    assert (read_volume(first / "out.nii.gz").array == read_volume(second / "out.nii.gz").array).all()


def _start_long_job(tmp_path, model, home, *worker_args, command=("-m", "meddiffcore.worker")):
    """A 1000-step job in a real worker process, returned once sampling is under way (with the events so far)."""
    job = _job(tmp_path, model, params={"steps": 1000, "sampler": "ancestral"})
    env = dict(os.environ, MEDDIFF_HOME=str(home), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *command, job, *worker_args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:  # wait until sampling is under way
        seen.append(json.loads(line))
        if seen[-1]["event"] == "progress":
            return proc, seen
    raise AssertionError(f"the job never started sampling: {proc.stderr.read()}")


def _assert_cancelled_within_2_s(proc, sent: float, tmp_path) -> None:
    if proc.stdin is not None and proc.stdin.closed:
        proc.stdin = None  # communicate() would flush it
    # The 2 s promise holds by construction (the job stops at its next step, or GracePeriod exits hard after
    # CANCEL_GRACE_S); how long that takes here depends on the machine's load, so the time is only a generous guard
    # against a job that ran on to its end (1000 steps).
    rest, _ = proc.communicate(timeout=60)
    elapsed = time.monotonic() - sent
    assert elapsed < 30, f"cancel took {elapsed:.2f} s: the job was not stopped"
    assert proc.returncode == EXIT_STATUS[ErrorCode.CANCELLED] == 130
    errors = [e for e in _events(rest) if e["event"] in ("error", "done")]
    assert len(errors) == 1 and errors[0]["code"] == "CANCELLED"  # exactly one final event
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("out")]  # no output, no temporary file


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_within_two_seconds_and_leaves_no_output(tmp_path, meddiff_home, tiny_uncond_model, sig):
    proc, _ = _start_long_job(tmp_path, tiny_uncond_model, meddiff_home)
    sent = time.monotonic()
    proc.send_signal(sig)
    _assert_cancelled_within_2_s(proc, sent, tmp_path)


@pytest.mark.parametrize("how", ["cancel line", "stdin closed", "cancel file", "controller gone"])
def test_the_controller_cancels_without_any_signal(tmp_path, meddiff_home, tiny_uncond_model, how):
    """What a launcher that forwards no signals (PythonSlicer) lets through: stdin, a file, the controller's end."""
    cancel_file = tmp_path / "job.cancel"
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc, seen = _start_long_job(tmp_path, tiny_uncond_model, meddiff_home, "--control", "--cancel-file", str(cancel_file),
                                 "--parent-pid", str(controller.pid))
    assert seen[0]["event"] == "engine" and seen[0]["pid"] == proc.pid
    sent = time.monotonic()
    if how == "cancel line":
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
    elif how == "stdin closed":
        proc.stdin.close()
    elif how == "cancel file":
        cancel_file.write_text("")
    else:
        controller.kill()
    try:
        _assert_cancelled_within_2_s(proc, sent, tmp_path)
    finally:
        controller.kill()
        controller.wait()


def test_the_worker_needs_no_posix_only_call(tmp_path, meddiff_home, tiny_uncond_model):
    """Windows has no pthread_sigmask, sigwait, killpg or SIGKILL: the worker runs and cancels without them."""
    strip = ("import os, runpy, signal, sys\n"
             "for module, name in ((signal, 'pthread_sigmask'), (signal, 'sigwait'), (signal, 'SIGKILL'), (os, 'killpg'),"
             " (os, 'setsid'), (os, 'getpgid')):\n"
             "    delattr(module, name)\n"
             "sys.argv = ['worker', *sys.argv[1:]]\n"
             "runpy.run_module('meddiffcore.worker', run_name='__main__', alter_sys=True)\n")
    proc, _ = _start_long_job(tmp_path, tiny_uncond_model, meddiff_home, "--control", command=("-c", strip))
    sent = time.monotonic()
    proc.stdin.close()
    _assert_cancelled_within_2_s(proc, sent, tmp_path)


@pytest.mark.parametrize("after", ["started", "progress"])  # while the model loads, and while it samples
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_meddiff_run_from_a_terminal_cancels_on_a_signal(tmp_path, meddiff_home, tiny_uncond_model, sig, after):
    job = _job(tmp_path, tiny_uncond_model, params={"steps": 1000, "sampler": "ancestral"})
    env = dict(os.environ, MEDDIFF_HOME=str(meddiff_home), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "meddiffcore.cli", "run", job, "--progress", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if json.loads(line)["event"] == after:
            break
    sent = time.monotonic()
    proc.send_signal(sig)
    _assert_cancelled_within_2_s(proc, sent, tmp_path)


def test_missing_model_is_a_model_error(tmp_path, meddiff_home):
    result = run_module("meddiffcore.worker", _job(tmp_path, "no-such-model"), env_home=meddiff_home)
    assert result.returncode == 5
    error = _events(result.stdout)[-1]
    assert error["event"] == "error" and error["code"] == "MODEL" and "no-such-model" in error["message"] and error["hint"]
    assert not (tmp_path / "out.nii.gz").exists()


def test_tampered_model_is_refused_before_use(tmp_path, meddiff_home, tiny_uncond_model):
    weights = meddiff_home / "models" / "tiny-uncond.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    result = run_module("meddiffcore.worker", _job(tmp_path, tiny_uncond_model), env_home=meddiff_home)
    assert result.returncode == 5 and "do not match" in _events(result.stdout)[-1]["message"]
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"task": "nope"}', "unknown job task"),
                                              ('{"task": "uncond.generate", "colour": 1}', "unknown key 'colour'")])
def test_bad_job_files(tmp_path, meddiff_home, content, message):
    path = tmp_path / "job.json"
    path.write_text(content)
    result = run_module("meddiffcore.worker", str(path), env_home=meddiff_home)
    assert result.returncode == 4
    assert message in _events(result.stdout)[-1]["message"]


def test_cli_runs_the_same_job_with_json_progress(tmp_path, meddiff_home, tiny_uncond_model):
    out = tmp_path / "gen.nrrd"
    result = run_module("meddiffcore.cli", "generate", "--model", tiny_uncond_model, "--out", str(out), "--samples", "2",
                        "--steps", "3", "--device", "cpu", "--seed", "1", "--progress", "json", "--preview", str(tmp_path / "p.png"),
                        env_home=meddiff_home)
    assert result.returncode == 0, result.stderr
    done = _events(result.stdout)[-1]
    assert set(done["outputs"]) == {"volume_1", "volume_2", "preview"}
    assert (tmp_path / "gen_01.nrrd").is_file() and (tmp_path / "gen_02.nrrd").is_file() and (tmp_path / "p.png").is_file()


def test_info_json(meddiff_home):
    result = run_module("meddiffcore.cli", "info", "--json", env_home=meddiff_home)
    report = json.loads(result.stdout)
    assert report["meddiff_home"] == str(meddiff_home) and "torch" in report and report["cuda_available"] in (True, False)


def test_the_signal_wakeup_socket_outlives_its_setup():
    """The C-level handler writes to the wake-up socket; a collected socket would make every signal print
    'Bad file descriptor' and leave the watcher thread asleep (cancel then waits for the main thread)."""
    import gc

    from meddiffcore.cancel import cancel_on_signals
    from meddiffcore.progress import CancelToken

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert cancel_on_signals(CancelToken())
        gc.collect()
        fd = signal.set_wakeup_fd(-1)
        assert fd >= 0
        os.fstat(fd)  # still open
    finally:
        signal.set_wakeup_fd(-1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


