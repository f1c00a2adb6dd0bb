"""CTP inpainting end to end: known frames bit-exact, exact times and geometry, slabs, readers, CLI, worker, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiffcore.cli import main as cli_main
from meddiffcore.errors import BadInputError
from meddiffcore.io import Sequence, Volume, read_sequence, write_sequence, write_volume
from meddiffcore.jobs import Job, run_job
from meddiffcore.progress import SilentReporter
from meddiffcore.tasks.ctp.phantom import make_ctp_phantom

TINY = "ctp-tiny"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared CPU, spinning OpenMP threads make small convolutions 20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A private MEDDIFF_HOME holding a random-weight CTP model named ctp-tiny."""
    from meddiffcore.models import save_model
    from meddiffcore.tasks.ctp.config import CTPConfig, default_network
    from meddiffcore.tasks.ctp.train import TASK

    home = tmp_path / "home"
    monkeypatch.setenv("MEDDIFF_HOME", str(home))
    torch.manual_seed(0)
    config = CTPConfig(name=TINY)
    config.network = dataclasses.replace(default_network(), base_channels=8, channel_mult=(1, 2),
                                         down_strides=((1, 2, 2),), norm_groups=4)
    net = TASK.build_network(config)
    with torch.no_grad():  # the output layer starts at zero; make the network do something
        for p in net.out.parameters():
            p.normal_(0, 0.05)
    save_model(home / "models", TASK.model_card(config), net.state_dict())
    return home


def _sparse_seq(slices=8, size=32, every=4, dtype=np.int16) -> tuple[Sequence, np.ndarray]:
    ph = make_ctp_phantom(7, slices=slices, size=size, frames=25)
    idx = np.arange(0, 25, every)
    geo = Volume.from_spacing(np.zeros((slices, size, size)), (0.9, 0.8, 5.0), (10.0, -20.0, 33.0),
                              [[0, -1, 0], [1, 0, 0], [0, 0, 1]]).ijk_to_ras
    arr = np.rint(ph.sequence.array[idx]).astype(dtype) if dtype != np.float32 else ph.sequence.array[idx]
    return Sequence(arr, geo, ph.sequence.times_s[idx] + 3.0), idx


def _run(task, inputs, outputs, params, model=TINY, seed=0):
    return run_job(Job(task=task, inputs=inputs, outputs=outputs, params=params, model=model, seed=seed, device="cpu"),
                   SilentReporter())


def test_inpaint_keeps_known_frames_bit_exact_with_exact_times_and_geometry(tmp_path, home):
    seq, _ = _sparse_seq()
    src = tmp_path / "in.seq.nrrd"
    write_sequence(seq, src)
    before = src.read_bytes()
    out = tmp_path / "out.seq.nrrd"
    assert _run("ctp.inpaint", {"sequence": str(src)}, {"sequence": str(out)},
                {"interval": 1.0, "bad_frames": "3", "steps": 2}) == 0
    res = read_sequence(out)
    np.testing.assert_array_equal(res.times_s, 3.0 + np.arange(25.0))
    assert np.array_equal(res.ijk_to_ras, seq.ijk_to_ras) and res.dtype == np.int16
    for k in (0, 1, 2, 4, 5, 6):  # good input frames, copied bit-exactly
        assert np.array_equal(res.array[4 * k], seq.array[k])
    assert not np.array_equal(res.array[12], seq.array[3])  # the bad frame was replaced
    assert src.read_bytes() == before  # the input is untouched


def test_slabs_odd_sizes_and_seeds(home):
    from meddiffcore.tasks.ctp.inpaint import inpaint_frames
    from meddiffcore.tasks.ctp.model import load_for_inference
    from meddiffcore.tasks.ctp.plan import make_plan

    model = load_for_inference(TINY, torch.device("cpu"))
    for slices, size in ((11, 30), (5, 34)):
        ph = make_ctp_phantom(2, slices=slices, size=size, frames=9)
        hu = ph.sequence.array[[0, 4, 8]]
        plan = make_plan([0.0, 4.0, 8.0])
        runs = [inpaint_frames(hu, np.array([0.0, 4.0, 8.0]), plan, model, steps=2, sampler="dpmpp_2m",
                               device=torch.device("cpu"), generator=torch.Generator().manual_seed(s), batch_size=4)
                for s in (1, 1, 2)]
        frames, stats = runs[0]
        assert frames.shape == (6, slices, size, size) and np.all(np.isfinite(frames))
        assert stats["slabs"] == (2 if slices == 11 else 1) and stats["items"] == 6 * stats["slabs"]
        assert np.array_equal(frames, runs[1][0]) and not np.array_equal(frames, runs[2][0])
        # outside the window (air, bone) the frame is the linear interpolation of its neighbours
        air = hu[0] < -500
        np.testing.assert_allclose(frames[0][air], (0.75 * hu[0] + 0.25 * hu[1])[air], rtol=1e-5)


class CountingNet(torch.nn.Module):
    """The real tiny network, counting its forward calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.config = net, 0, net.config

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


def test_mean_estimate_is_the_interpolation_plus_the_residual_in_one_evaluation(home):
    from meddiffcore.tasks.ctp.inpaint import inpaint_frames, linear_fill
    from meddiffcore.tasks.ctp.model import load_for_inference
    from meddiffcore.tasks.ctp.plan import make_plan

    model = load_for_inference(TINY, torch.device("cpu"))
    ph = make_ctp_phantom(4, slices=8, size=32, frames=9)
    hu, times = ph.sequence.array[[0, 4, 8]], np.array([0.0, 4.0, 8.0])
    plan = make_plan(times)
    model.net = CountingNet(model.net)
    frames, stats = inpaint_frames(hu, times, plan, model, steps=5, sampler="dpmpp_2m", device=torch.device("cpu"),
                                   estimate="mean", generator=torch.Generator().manual_seed(0), batch_size=4)
    assert stats["batches"] == 2 and model.net.calls == 2 == stats["network_evaluations"]
    linear = linear_fill(hu, plan)
    assert not np.allclose(frames, linear, atol=0.5)  # the (random) network adds a residual
    model.net.calls = 0
    _, stats = inpaint_frames(hu, times, plan, model, steps=5, sampler="dpmpp_2m", device=torch.device("cpu"),
                              estimate="sample", generator=torch.Generator().manual_seed(0), batch_size=4)
    assert model.net.calls == stats["network_evaluations"] == 2 * 5  # 2 batches of 5 dpmpp_2m steps
    # a network whose residual output is zero (v = 0) leaves the linear interpolation (up to sqrt(alpha_bar) x_T / 10)
    with torch.no_grad():
        for p in model.net.net.out.parameters():
            p.zero_()
    frames, _ = inpaint_frames(hu, times, plan, model, steps=5, sampler="dpmpp_2m", device=torch.device("cpu"),
                               estimate="mean", generator=torch.Generator().manual_seed(0), batch_size=4)
    np.testing.assert_allclose(frames, linear, atol=0.5)


def test_residual_loss_targets_the_scaled_difference_from_the_interpolation():
    from meddiffcore.tasks.ctp.config import CTPDiffusionConfig
    from meddiffcore.tasks.ctp.model import linear_between, residual_loss

    known = torch.stack([torch.full((1, 2, 4, 4), -0.5), torch.full((1, 2, 4, 4), 0.5)], dim=1)[:, :, 0]
    weight = torch.tensor([0.25])
    np.testing.assert_allclose(linear_between(known, weight).numpy(), -0.25)
    diffusion = CTPDiffusionConfig(prediction="x0", loss="x0_mse")
    batch = {"known": known, "weight": weight, "context": torch.zeros(1, 5),
             "target": torch.full((1, 1, 2, 4, 4), -0.15)}  # 0.1 above the line: residual 10 x 0.1 = 1

    def predicts(value):
        return lambda x, t, **cond: torch.full_like(x, value)

    assert residual_loss(predicts(1.0), batch, diffusion)[0].item() == pytest.approx(0.0, abs=1e-10)
    assert residual_loss(predicts(0.0), batch, diffusion)[0].item() == pytest.approx(1.0, rel=1e-5)


def test_evaluate_reports_model_linear_and_the_noise_free_oracle(home):
    from meddiffcore.tasks.ctp.evaluate import evaluate, format_report

    result = evaluate(TINY, phantoms=1, size=32, intervals=(4,), device="cpu")
    s = result["summary"]["4s"]
    assert result["estimate"] == "mean" and set(s) >= {"model", "linear", "oracle", "full_1s"}
    # the noise-free frames beat the interpolation of noisy ones against the acquired frames, but not by much:
    # the acquired frames' own noise bounds every method
    assert s["linear"]["psnr"] < s["oracle"]["psnr"] < s["linear"]["psnr"] + 6
    assert s["linear"]["psnr"] < s["linear"]["psnr_noise_free"]
    assert 0 < s["linear"]["ssim_noise_free"] < 1 and "ssim_noise_free" not in s["oracle"]
    assert s["oracle"]["map_relative_error"] < s["linear"]["map_relative_error"]
    assert "oracle" in format_report(result) and "inf" not in json.dumps(result)


def test_readers_folder_npy_nifti(tmp_path):
    from meddiffcore.tasks.ctp.sequences import read_ctp_sequence

    seq, _ = _sparse_seq(size=16 * 2, dtype=np.float32)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(len(seq)):
        write_volume(seq.frame(k), folder / f"f{k:02d}.nrrd")
    (folder / "times.txt").write_text("\n".join(str(t) for t in seq.times_s))
    got = read_ctp_sequence(folder)
    assert np.array_equal(got.array, seq.array) and np.allclose(got.times_s, seq.times_s)
    np.save(tmp_path / "s.npy", np.moveaxis(seq.array, 0, -1))  # the seed's [slices, H, W, T]
    got = read_ctp_sequence(tmp_path / "s.npy", times="4")
    assert np.array_equal(got.array, seq.array) and np.allclose(got.times_s, 4.0 * np.arange(len(seq)))
    with pytest.raises(BadInputError, match="--times"):
        read_ctp_sequence(tmp_path / "s.npy")
    write_sequence(seq, tmp_path / "s.nii.gz")
    got = read_ctp_sequence(tmp_path / "s.nii.gz")
    assert np.allclose(got.times_s, seq.times_s)
    assert np.allclose(read_ctp_sequence(tmp_path / "s.nii.gz", times="0,1,2,3,4,5,6").times_s, np.arange(7))


def _env(home):
    return {**os.environ, "MEDDIFF_HOME": str(home), "OMP_NUM_THREADS": "1"}


def test_cli_phantom_inpaint_perfusion_and_worker(tmp_path, home):
    seq_path = tmp_path / "ph.seq.nrrd"
    assert cli_main(["phantom", "ctp", "--out", str(seq_path), "--seed", "3", "--size", "32", "--frames", "21",
                     "--progress", "none"]) == 0
    assert (tmp_path / "ph_truth" / "cbf.nrrd").is_file()
    sparse = read_sequence(seq_path)
    sparse = Sequence(sparse.array[::4], sparse.ijk_to_ras, sparse.times_s[::4])
    write_sequence(sparse, tmp_path / "sparse.seq.nrrd")
    out = tmp_path / "filled.seq.nrrd"
    proc = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "inpaint", "--sequence", str(tmp_path / "sparse.seq.nrrd"),
                           "--out", str(out), "--model", TINY, "--steps", "2", "--seed", "1", "--progress", "json"],
                          capture_output=True, text=True, env=_env(home), timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "started" and events[-1]["event"] == "done"
    assert any(e["event"] == "progress" and e["phase"] == "sampling" for e in events)
    assert len(read_sequence(out)) == 21
    job = tmp_path / "job.json"
    job.write_text(Job(task="ctp.perfusion", inputs={"sequence": str(out)}, outputs={"maps": str(tmp_path / "maps")},
                       device="cpu").to_json())
    proc = subprocess.run([sys.executable, "-m", "meddiffcore.worker", str(job)], capture_output=True, text=True,
                          env=_env(home), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and set(done["outputs"]) == {"cbf", "cbv", "mtt", "tmax"}
    cbf = read_sequence(done["outputs"]["cbf"])  # a 3D file reads as a one-frame sequence
    assert cbf.same_grid(sparse) and cbf.array.max() > 0


def _bad_inputs(tmp_path):
    seq, _ = _sparse_seq(size=32, dtype=np.float32)
    cases = {}
    write_sequence(Sequence(seq.array[:1], seq.ijk_to_ras, seq.times_s[:1]), tmp_path / "one.seq.nrrd")
    cases["one frame"] = (["--sequence", str(tmp_path / "one.seq.nrrd")], "at least two known frames")
    write_sequence(seq, tmp_path / "ok.seq.nrrd")
    cases["unsorted"] = (["--sequence", str(tmp_path / "ok.seq.nrrd"), "--times", "0,4,2,8,12,16,20"], "not sorted")
    cases["duplicate"] = (["--sequence", str(tmp_path / "ok.seq.nrrd"), "--times", "0,4,4,8,12,16,20"], "same time")
    cases["gap"] = (["--sequence", str(tmp_path / "ok.seq.nrrd"), "--times", "0,4,8,20,24,28,32"], "longer than the 8 s")
    cases["bad index"] = (["--sequence", str(tmp_path / "ok.seq.nrrd"), "--bad-frames", "7"], "out of range")
    nan = seq.array.copy()
    nan[2, 0, 0, 0] = np.nan
    write_sequence(Sequence(nan, seq.ijk_to_ras, seq.times_s), tmp_path / "nan.seq.nrrd")
    cases["nan"] = (["--sequence", str(tmp_path / "nan.seq.nrrd")], "non-finite")
    grids = tmp_path / "grids"
    grids.mkdir()
    for k in range(3):
        v = seq.frame(k)
        write_volume(v if k != 1 else Volume(v.array[:, :16], v.ijk_to_ras), grids / f"f{k}.nrrd")
    (grids / "times.txt").write_text("0 4 8")
    cases["grids"] = (["--sequence", str(grids)], "shape")
    return cases


def test_bad_input_exit_code_three_and_no_output(tmp_path, home, capsys):
    for name, (args, message) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}.seq.nrrd"
        status = cli_main(["inpaint", *args, "--out", str(out), "--model", TINY, "--steps", "1", "--progress", "none"])
        assert status == 3, name
        assert not out.exists() and not list(tmp_path.glob(f"{out.name}*")), name
    proc = subprocess.run([sys.executable, "-m", "meddiffcore.cli", "inpaint", "--sequence", str(tmp_path / "ok.seq.nrrd"),
                           "--times", "0,4,8,20,24,28,32", "--out", str(tmp_path / "o.seq.nrrd"), "--model", TINY],
                          capture_output=True, text=True, env=_env(home), timeout=300)
    assert proc.returncode == 3 and "longer than the 8 s" in proc.stderr and not (tmp_path / "o.seq.nrrd").exists()


def test_bad_input_messages(tmp_path, home):
    for name, (args, message) in _bad_inputs(tmp_path).items():
        job = Job(task="ctp.inpaint", inputs={"sequence": args[1]}, outputs={"sequence": str(tmp_path / "x.seq.nrrd")},
                  model=TINY, params={"times": args[3]} if "--times" in args else
                  ({"bad_frames": args[3]} if "--bad-frames" in args else {}), device="cpu")
        reporter = SilentReporter()
        assert run_job(job, reporter) == 3, name
        error = reporter.events[-1]
        assert error["event"] == "error" and error["code"] == "BAD_INPUT" and message in error["message"], (name, error)


def test_training_a_few_steps_exports_a_loadable_model(tmp_path, monkeypatch):
    from meddiffcore.tasks.ctp.model import load_for_inference
    from meddiffcore.train import load_training_config
    from meddiffcore.train.loop import train

    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    config_path = Path(__file__).resolve().parents[2] / "MedDiffCore" / "meddiffcore" / "configs" / "ctp-demo.toml"
    task, config = load_training_config(config_path, [
        "name=ctp-test", "data.phantoms=1", "data.size=32", "data.crop=16", "network.base_channels=8",
        "network.norm_groups=4", "train.steps=2", "train.batch_size=2", f"train.out_dir={tmp_path / 'run'}"])
    files = train(task, config)
    model = load_for_inference(str(files.card_path), torch.device("cpu"))
    assert model.card.task == "ctp" and model.window_level_hu == 40.0 and model.window_width_hu == 80.0
    assert model.max_gap_s == 8.0 and model.card.training["steps"] == 2


def test_training_targets_are_noise_free_or_acquired_and_the_known_frames_always_acquired():
    from meddiffcore.errors import ConfigError
    from meddiffcore.tasks.ctp.config import CTPDataConfig, hu_to_model
    from meddiffcore.tasks.ctp.data import CTPTupleDataset

    def item(target_frames):
        data = CTPDataConfig(phantoms=1, phantom_seed=3, size=32, crop=32, hflip=False, target_frames=target_frames)
        return CTPTupleDataset(data, peak_margin_s=2.0, seed=0)[5]

    clean, noisy = item("noise_free"), item("acquired")
    ph = make_ctp_phantom(3, slices=8, size=32)
    acquired, noise_free = hu_to_model(ph.sequence.array), hu_to_model(ph.noise_free)
    # the same draw (start, gap, target) either way: identical known frames, targets that differ by the noise
    torch.testing.assert_close(clean["known"], noisy["known"])
    assert not torch.equal(clean["target"], noisy["target"])

    def frame_of(x, frames):
        errors = [float(np.abs(frames[t] - x.numpy()).max()) for t in range(len(frames))]
        return int(np.argmin(errors)), min(errors)

    t, err = frame_of(clean["target"][0], noise_free)
    assert err < 1e-2  # float16 storage
    assert frame_of(noisy["target"][0], acquired) == (t, pytest.approx(0.0, abs=1e-2))
    assert frame_of(clean["known"][0], acquired)[1] < 1e-2 and frame_of(clean["known"][0], noise_free)[1] > 1e-2
    with pytest.raises(ConfigError, match="target_frames"):
        CTPDataConfig(target_frames="clean")


def test_bundled_demo_model_beats_linear_interpolation_on_a_held_out_phantom():
    """The shipped ``ctp-demo`` against the issue's figure: +2 dB over linear interpolation at 4 s against the
    ground truth (the noise-free frames), and better perfusion maps."""
    from meddiffcore.tasks.ctp.evaluate import evaluate

    s = evaluate("ctp-demo", phantoms=1, size=48, intervals=(4,), device="cpu")["summary"]["4s"]
    assert s["psnr_noise_free_gain_db"] > 2.0
    assert s["psnr_gain_db"] > 0.5  # against the acquired frames too
    assert s["map_error_ratio"] < 0.9
