"""Recon at clinical size in bounded memory (issue 17): the priors' network calls are bounded in pixels, not in
slices, and splitting the batch of slices does not change the result."""

from __future__ import annotations

import gc
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from meddiffcore.io import Volume, read_volume, write_volume
from meddiffcore.jobs import Job, run_job
from meddiffcore.progress import SilentReporter
from meddiffcore.tasks.recon.model import load_recon_model
from meddiffcore.tasks.recon.phantoms import make_phantom
from meddiffcore.tasks.recon.priors import CALL_BYTES, BYTES_PER_PIXEL_PER_CHANNEL, VolumePrior, call_pixels
from meddiffcore.tasks.recon.run import settings_from

sys.path.insert(0, str(Path(__file__).parent))
from recon_helpers import install_tiny_recon_model  # noqa: E402


class RecordingDenoiser:
    """A per-sample sigma-space denoiser (x0 = x / (1 + sigma^2)) that records each call's batch shape."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x, sigma, **cond):
        self.calls.append(tuple(x.shape))
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)


def test_calls_at_512_squared_are_bounded_in_pixels():
    """The job's priors at 512^2 take a few slices per call (64 before: 16.7 M pixels, ~12.7 GB of activations for
    the bundled priors), the coronal ones as many as fit; every slice is evaluated exactly once."""
    model = load_recon_model("recon-ct-demo")
    chunk = settings_from({}, model.card.task_config.get("defaults", {})).chunk  # the job's default cap
    primary, auxiliary = model.prior_pair(chunk)
    assert primary.pixels == auxiliary.pixels == model.call_pixels
    assert model.call_pixels * BYTES_PER_PIXEL_PER_CHANNEL * 16 <= CALL_BYTES  # the bundled priors: 16 channels
    x = torch.zeros(64, 512, 512)
    for prior in (primary, auxiliary):
        prior.denoiser = RecordingDenoiser()
        prior.predict(x, 1.0)
        calls = prior.denoiser.calls
        assert max(n * h * w for n, _, h, w in calls) <= model.call_pixels <= 1_500_000
        assert sum(n for n, *_ in calls) == (64 if prior.plane == "axial" else 512)
    assert {n for n, *_ in primary.denoiser.calls} == {4}  # 4 x 512^2 = 1 Mi pixels per call
    assert auxiliary.denoiser.calls[0][0] == model.call_pixels // (64 * 512) > 4  # coronal slices are 64 x 512


def test_chunk_stays_a_cap_on_slices_and_widths_scale_the_budget():
    model = load_recon_model("recon-ct-demo")
    primary, _ = model.prior_pair(settings_from({"chunk": 3}, {}).chunk)
    assert primary.slices_per_call(64, 64) == 3 and primary.slices_per_call(512, 512) == 3
    primary, _ = model.prior_pair(settings_from({"chunk": 64}, {}).chunk)
    assert primary.slices_per_call(512, 512) == 4  # the pixel bound wins over an old job file's chunk = 64
    assert primary.slices_per_call(2048, 2048) == 1  # one slice at least, however large
    from meddiffcore.nets.ncsnpp import NCSNppConfig

    assert abs(call_pixels(NCSNppConfig()) * 8 - call_pixels()) < 8  # 128-channel NCSN++ priors: 8x fewer pixels per call


def test_chunked_evaluation_equals_one_call_with_the_bundled_network():
    """The bundled priors on a volume whose slices need padding: one call for all slices and calls of 1-2 slices
    agree to float tolerance (x0 and eps), and so does the gradient through the network (TPDM's DPS step)."""
    torch.manual_seed(0)
    model = load_recon_model("recon-ct-demo")
    x = torch.rand(5, 30, 34)
    for plane_prior in model.prior_pair():
        whole = VolumePrior(plane_prior.denoiser, plane_prior.plane, plane_prior.size_multiple, pixels=10**9)
        for parts in (VolumePrior(plane_prior.denoiser, plane_prior.plane, plane_prior.size_multiple, chunk=2),
                      VolumePrior(plane_prior.denoiser, plane_prior.plane, plane_prior.size_multiple, pixels=1)):
            assert parts.slices_per_call(30, 34) < 5
            for a, b in zip(whole.predict(x, 0.3), parts.predict(x, 0.3)):
                assert a.shape == x.shape
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            grads = []
            for prior in (whole, parts):
                xg = x.clone().requires_grad_(True)
                x0, _ = prior.predict(xg, 0.3, with_grad=True)
                (grad,) = torch.autograd.grad((x0 ** 2).sum(), xg)
                grads.append(grad)
            torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_projector_matrices_are_built_in_bounded_memory():
    """The 256^2 x 16-view system matrix pair is built in float32 with int32 indices, a pixel block at a time: the
    NumPy peak of the build stays within 2x the two matrices' own bytes (4.4x before: float64 (pixels, angles, 4)
    arrays of the whole image, int64 index copies). Values within float32 rounding of the float64 build."""
    import tracemalloc

    import numpy as np

    from meddiffcore.physics import ParallelBeam
    from meddiffcore.physics.radon import _system_matrix_t

    beam = ParallelBeam.uniform(256, 16)
    tracemalloc.start()
    try:
        mat, mat_t = beam._matrices(torch.device("cpu"), torch.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    nnz = mat._nnz()
    assert mat_t._nnz() == nnz and mat.shape == (16 * beam.detectors, 256 * 256) == mat_t.shape[::-1]
    for m in (mat, mat_t):
        assert m.values().dtype == torch.float32 and m.col_indices().dtype == m.crow_indices().dtype == torch.int32
    held = 2 * nnz * (4 + 4)
    assert peak <= 2.0 * held, f"build peak {peak / 2**20:.0f} MB for {held / 2**20:.0f} MB of matrices"
    exact = _system_matrix_t(256, np.asarray(beam.angles_deg), beam.detectors)  # float64
    assert exact.nnz == nnz
    assert np.array_equal(exact.indices, mat_t.col_indices().numpy()) and np.array_equal(exact.indptr, mat_t.crow_indices().numpy())
    np.testing.assert_allclose(mat_t.values().numpy(), exact.data, rtol=1e-7, atol=0)


class TorchPeak(TorchDispatchMode):
    """Peak bytes of the CPU tensor storages that torch ops inside the mode allocated and that are still referenced
    (a byte count of what the code under test keeps alive, not a timing; storages made outside are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.current -= self.size.pop(key)

    @staticmethod
    def _keys(tree) -> list[tuple[torch.Tensor, int]]:
        return [(t, t.untyped_storage().data_ptr()) for t in tree_flatten(tree)[0]
                if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type == "cpu"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        outside = {key for _, key in self._keys((args, kwargs)) if key not in self.refs}
        out = func(*args, **(kwargs or {}))
        for t, key in self._keys(out):
            if not key or key in outside:  # a view of, or an in-place op on, a storage made before the mode
                continue
            storage = t.untyped_storage()
            if key not in self.refs:
                self.refs[key], self.size[key] = 0, storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


def _peak_volumes(fn, volume_bytes: int) -> float:
    with TorchPeak() as mode:
        fn()
    return mode.peak / volume_bytes


def test_solvers_hold_few_volume_sized_tensors(monkeypatch):
    """Volume-sized torch tensors alive at once (in units of one float32 volume, 16 x 128^2), before -> now:
    CT CG data consistency 7.0 -> 6.2, TV baseline 16 -> 11.2, 3 fast steps from the baseline's image 12 -> 9.2;
    MRI (4-slice FFT blocks) 12 -> 7, 20 -> 12, 17 -> 10; a prior's pass in 8 calls 4.0 -> 2.75."""
    import meddiffcore.physics.mri as mri
    from meddiffcore.physics import ParallelBeam, data_consistency_cg, make_mask
    from meddiffcore.tasks.recon.fast import sample_fast
    from meddiffcore.tasks.recon.problems import CTProblem, MRIProblem

    monkeypatch.setattr(mri, "BLOCK_ELEMENTS", 4 * 128 * 128)
    shape = (16, 128, 128)
    vol = 16 * 128 * 128 * 4
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    limits = {"ct": (6.5, 12.0, 10.0), "mri": (7.5, 12.5, 10.5)}
    for name, problem in (("ct", CTProblem(ParallelBeam.uniform(128, 16))),
                          ("mri", MRIProblem(torch.from_numpy(make_mask((128, 128), 4))))):
        y = problem.forward(x)  # the projector's matrices are built here, outside the count
        primary, auxiliary = (VolumePrior(RecordingDenoiser(), plane) for plane in ("axial", "coronal"))
        peaks = (_peak_volumes(lambda: data_consistency_cg(problem, y, x, 5, 1.0), vol),
                 _peak_volumes(lambda: problem.iterative(y), vol),
                 _peak_volumes(lambda: sample_fast(primary, auxiliary, problem, y, shape, [0.1, 0.05, 0.02, 0.0],
                                                   cg_iters=5, gamma=1.0, x_start=x,
                                                   generator=torch.Generator().manual_seed(0)), vol))
        assert all(p <= limit for p, limit in zip(peaks, limits[name])), (name, peaks)
    prior = VolumePrior(RecordingDenoiser(), "axial", chunk=2)
    assert _peak_volumes(lambda: prior.predict(x, 0.5), vol) <= 3.0  # 4.0 before (parts listed, then joined)
    assert len(prior.denoiser.calls) == 8


def test_blocked_mri_operator_equals_one_call(monkeypatch):
    """A, A^T, A^T A and the zero-filled magnitude a block of slices at a time give the values of one call."""
    import meddiffcore.physics.mri as mri
    from meddiffcore.physics import make_mask

    x = torch.rand(10, 48, 40, generator=torch.Generator().manual_seed(1))
    for cls in (mri.CartesianMRI, mri.RealCartesianMRI):
        op = cls(torch.from_numpy(make_mask((48, 40), 4, seed=2)))
        monkeypatch.setattr(mri, "BLOCK_ELEMENTS", 1 << 30)
        whole = [op.forward(x)]
        whole += [op.adjoint(whole[0]), op.magnitude(whole[0])]
        monkeypatch.setattr(mri, "BLOCK_ELEMENTS", 3 * 48 * 40)  # 4 blocks, the last one short
        parts = [op.forward(x)]
        parts += [op.adjoint(parts[0]), op.magnitude(parts[0])]
        for a, b in zip(whole, parts):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        if cls is mri.RealCartesianMRI:
            assert parts[1].dtype == torch.float32
            torch.testing.assert_close(op.normal(x), whole[1], rtol=1e-6, atol=1e-6)


def test_fast_pass_writes_eps_over_its_input():
    """``predict(overwrite=True)``, the fast sampler's pass: the same x0_hat and eps as a pass that keeps its input,
    eps in the input's own storage, and one volume fewer alive (2.75 -> 1.75 volumes at 8 calls)."""
    x = torch.rand(16, 32, 24, generator=torch.Generator().manual_seed(3))
    vol = x.numel() * 4
    for plane in ("axial", "coronal"):
        prior = VolumePrior(RecordingDenoiser(), plane, chunk=2)
        x0, eps = prior.predict(x, 0.5)
        work = x.clone()
        kept = _peak_volumes(lambda: prior.predict(x, 0.5), vol)
        with TorchPeak() as mode:
            x0_o, eps_o = prior.predict(work, 0.5, overwrite=True)
        assert eps_o.data_ptr() == work.data_ptr() and eps_o.shape == x.shape
        assert torch.equal(x0_o, x0) and torch.equal(eps_o, eps)
        assert mode.peak / vol <= kept - 0.9, (plane, mode.peak / vol, kept)
    with pytest.raises(ValueError, match="gradient"):
        prior.predict(x.clone().requires_grad_(True), 0.5, with_grad=True, overwrite=True)


class LiveAtCall:
    """Wraps ``VolumePrior.call``: at each network call, the bytes of the distinct CPU storages of at least one
    volume that live Python tensors of two or more dimensions hold (``gc``), in volumes: images and volumes, not
    the projector's 1-D CSR arrays (fixed by the geometry). Tensors only C++ holds (autograd's saved inputs) are not
    seen; the fast mode has no graph."""

    def __init__(self, volume_bytes: int) -> None:
        self.volume_bytes, self.counts = volume_bytes, []
        self.original = VolumePrior.call

    def __call__(self, prior, slices, sigma):
        storages = {}
        with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases warns
            warnings.simplefilter("ignore", FutureWarning)
            tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
        for obj in tensors:
            if obj.layout == torch.strided and obj.device.type == "cpu" and obj.ndim >= 2:
                storage = obj.untyped_storage()
                if storage.nbytes() >= self.volume_bytes:
                    storages[storage.data_ptr()] = storage.nbytes()
        self.counts.append(sum(storages.values()) / self.volume_bytes)
        return self.original(prior, slices, sigma)


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_a_recon_job_holds_two_volumes_through_its_network_calls(tmp_path, monkeypatch, modality):
    """A simulated job in fast mode from the iterative start: at every network call only the sampler's ``x`` (eps
    written over it) and x0_hat are volume-sized, besides MRI's measured k-space (complex64: 2 volumes); before, also
    the pass's separate eps, the iterative start image (``_solve`` kept it through the sampling) and, for CT, the
    simulated ground truth (``run_ct`` bound it to ``_``): 5 volumes (CT), 6 (MRI)."""
    home = tmp_path / "home"
    monkeypatch.setenv("MEDDIFF_HOME", str(home))
    install_tiny_recon_model(home, f"tiny-{modality}", modality)
    shape = (16, 32, 32)
    image = make_phantom("ct", "organ", shape, seed=3) if modality == "ct" else make_phantom("mri", None, shape, 3)
    write_volume(Volume(image, np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / "in.nii.gz")
    live = LiveAtCall(int(np.prod(shape)) * 4)
    monkeypatch.setattr(VolumePrior, "call", lambda prior, slices, sigma: live(prior, slices, sigma))
    measured = {"views": 8} if modality == "ct" else {"acceleration": 4}
    job = Job(task=f"recon.{modality}", inputs={"volume": str(tmp_path / "in.nii.gz")},
              outputs={"volume": str(tmp_path / "out.nii.gz")}, model=f"tiny-{modality}", device="cpu", seed=1,
              params={**measured, "mode": "fast", "start": "iterative", "steps": 3, "cg_iters": 2, "chunk": 4})
    assert run_job(job, SilentReporter()) == 0
    assert read_volume(tmp_path / "out.nii.gz").shape == shape
    assert len(live.counts) >= 3 * 4  # 3 steps of at least 4 calls each
    assert max(live.counts) <= (2.0 if modality == "ct" else 4.0), live.counts


class GradRecordingDenoiser(torch.nn.Module):
    """A per-slice differentiable denoiser (x0 = tanh(w x) / (1 + sigma^2), each slice on its own) that records the
    batch of each call made with gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.3))
        self.grad_calls: list[int] = []

    def forward(self, x, sigma, **cond):
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_calls.append(x.shape[0])
        return torch.tanh(self.w * x) / (1 + sigma.view(-1, 1, 1, 1) ** 2)


def test_dps_gradient_one_call_graph_at_a_time_equals_the_whole_graph():
    """``predict_and_gradient`` (TPDM's DPS step: one network call's graph at a time) gives the x0_hat, eps_hat and
    gradient of one graph over the whole pass, with the bundled network on padded slices along both planes and with
    a CT data term; its gradient calls take a quarter of the pixels of a call without gradient."""
    from meddiffcore.physics import ParallelBeam
    from meddiffcore.tasks.recon.priors import GRAD_MEMORY_FACTOR
    from meddiffcore.tasks.recon.problems import CTProblem

    torch.manual_seed(0)
    model = load_recon_model("recon-ct-demo")
    x = torch.rand(6, 30, 30)
    problem = CTProblem(ParallelBeam.uniform(30, 6))
    y = problem.forward(torch.rand(6, 30, 30))
    loss = lambda x0: 0.5 * (problem.forward(x0) - y).pow(2).sum()  # noqa: E731
    for plane_prior in model.prior_pair():
        whole = VolumePrior(plane_prior.denoiser, plane_prior.plane, plane_prior.size_multiple, pixels=10**9)
        xg = x.clone().requires_grad_(True)
        x0, eps = whole.predict(xg, 0.3, with_grad=True)
        (expected,) = torch.autograd.grad(loss(x0), xg)
        parts = VolumePrior(plane_prior.denoiser, plane_prior.plane, plane_prior.size_multiple, chunk=2)
        got = parts.predict_and_gradient(x, 0.3, loss)
        for a, b in zip((x0.detach(), eps.detach(), expected), got):
            assert b.shape == x.shape and not b.requires_grad
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    denoiser = GradRecordingDenoiser()
    prior = VolumePrior(denoiser, "axial", pixels=8 * 32 * 32)
    assert prior.slices_per_call(32, 32, grad=True) == int(8 / GRAD_MEMORY_FACTOR) == 2
    prior.predict_and_gradient(torch.rand(7, 32, 32), 0.5, lambda x0: x0.sum())
    assert denoiser.grad_calls == [2, 2, 2, 1]


def test_per_slice_solvers_in_blocks_give_the_same_iterates_in_less_memory(monkeypatch):
    """CG data consistency and the TV baseline over blocks of slices (:data:`SOLVER_BLOCK_ELEMENTS`) give the
    whole-batch solve's iterates (per-item step sizes, the whole batch's ||A^T A||), CT and MRI, a short last block
    included, and hold less: at 4 blocks, volumes alive CT 2.8 vs 6.3 (CG) and 5.6 vs 11.3 (TV), MRI 4.4 vs 7.3 and
    7.6 vs 12.3; what stays is the start image, the result, the power iteration's two volumes and, at 64^2, the
    sinograms' and k-spaces' FFT buffers, as large as the slices here.

    CG agrees to float rounding. The TV solve (lagged diffusivity, eps 1e-3) amplifies float32 rounding (torch's
    reductions over a batch of 14 and one of 4, the power iteration's ||A^T A|| to 2e-7): its blocked result moves
    by no more than the whole solve's own result moves when the data move by 1e-7 relative (~2e-3 of the range at
    the worst pixel of these phantoms)."""
    import meddiffcore.physics.mri as mri
    import meddiffcore.physics.operator as operator
    from meddiffcore.physics import ParallelBeam, data_consistency_cg, make_mask
    from meddiffcore.tasks.recon.problems import CTProblem, MRIProblem

    monkeypatch.setattr(mri, "BLOCK_ELEMENTS", 4 * 64 * 64)
    shape = (14, 64, 64)
    vol = 14 * 64 * 64 * 4
    for modality, problem in (("ct", CTProblem(ParallelBeam.uniform(64, 12))),
                              ("mri", MRIProblem(torch.from_numpy(make_mask((64, 64), 4))))):
        x = torch.from_numpy(make_phantom(modality, None, shape, 5))
        if modality == "ct":
            x = (x + 1000) / 2000  # HU -> the priors' [0, 1] units
        y = problem.forward(x)
        start = problem.baseline(y)
        monkeypatch.setattr(operator, "SOLVER_BLOCK_ELEMENTS", 1 << 30)
        whole = (data_consistency_cg(problem, y, start, 5, 0.5), problem.iterative(y))
        sensitivity = float((problem.iterative(y * (1 + 1e-7)) - whole[1]).abs().max())
        monkeypatch.setattr(operator, "SOLVER_BLOCK_ELEMENTS", 4 * 64 * 64)  # blocks of 4, 4, 4, 2 slices
        assert [b.stop - b.start for b in operator.solver_blocks(problem, shape)] == [4, 4, 4, 2]
        blocked = (data_consistency_cg(problem, y, start, 5, 0.5), problem.iterative(y))
        torch.testing.assert_close(blocked[0], whole[0], rtol=0, atol=1e-6 * float(x.max()))
        assert 0 < sensitivity < 0.01 * float(x.max())
        assert float((blocked[1] - whole[1]).abs().max()) <= 1.5 * sensitivity, (modality, sensitivity)
        peaks = {}
        for name, elements in (("whole", 1 << 30), ("blocked", 4 * 64 * 64)):
            monkeypatch.setattr(operator, "SOLVER_BLOCK_ELEMENTS", elements)
            peaks[name] = (_peak_volumes(lambda: data_consistency_cg(problem, y, start, 5, 0.5), vol),
                           _peak_volumes(lambda: problem.iterative(y), vol))
        assert all(b < 0.7 * w for b, w in zip(peaks["blocked"], peaks["whole"])), (modality, peaks)
