"""Bounded-memory pre- and post-processing (issue 17): chunked resampling equals the whole-volume one, and the
NumPy memory a job's pre/post-processing allocates stays within a few times its input + output.

Memory is measured with ``tracemalloc`` (NumPy reports every array allocation to it): a deterministic byte count,
not a timing. The limits are generous against the bounded code and still far below what whole-volume float
copies needed (the old code's figures are in each test's docstring).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ctca_helpers import save_tiny_model
from meddiffcore.cli import main as cli_main
from meddiffcore.io import Volume, read_volume
from meddiffcore.io.resample import (LINEAR_TOLERANCE, TRUNCATE, grown_box, lowpass, lowpass_radius, lowpass_sigma,
                                    resample, zyx_affine)
from meddiffcore.io.volume import geometry_from_spacing
from meddiffcore.tasks.ctca.grid import CORONARY_KEEP_FRACTION, resample_labels, synthesis_grid
from meddiffcore.tasks.ctca.labels import CORONARY, NUM_CLASSES, one_hot, to_label_array
from meddiffcore.tasks.ctca.phantom import make_phantom

DATA = Path(__file__).resolve().parents[1] / "data"


def _oblique(shape, spacing) -> np.ndarray:
    a, b = np.radians(15), np.radians(10)  # the clinical benchmark's obliquity
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    d = rz @ rx
    sp = np.asarray(spacing, dtype=np.float64)
    return geometry_from_spacing(sp, -(d @ ((np.array(shape[::-1]) - 1) / 2 * sp)), d)


@pytest.fixture(scope="module")
def labels() -> Volume:
    """Phantom heart labels (all 9 classes) on an oblique, anisotropic 45 x 70 x 66 grid."""
    shape = (45, 70, 66)
    return make_phantom(0, shape=shape, ijk_to_ras=_oblique(shape, (1.6, 1.6, 2.0)), with_ct=False).labels


def _whole_volume_labels(lab, src, dst, shape):
    """The reference: every class's fraction resampled in one piece (low-pass + linear), arg-max, coronary rule."""
    matrix, offset = zyx_affine(src, dst)
    sigma = lowpass_sigma(matrix, 1)
    fractions = np.zeros((NUM_CLASSES,) + tuple(shape), np.float32)
    for value in np.unique(lab):
        mask = (lab == value).astype(np.float32)
        if sigma > 0:
            mask = ndimage.gaussian_filter(mask, sigma)
        fractions[value] = ndimage.affine_transform(mask, matrix, offset, output_shape=tuple(shape), order=1,
                                                    mode="constant", cval=1.0 if value == 0 else 0.0)
    out = fractions.argmax(axis=0).astype(np.uint8)
    out[fractions[CORONARY] >= CORONARY_KEEP_FRACTION] = CORONARY
    return out


@pytest.mark.parametrize("spacing_mm", [1.0, 2.0, 4.0])  # no low-pass, low-pass, strong low-pass
def test_chunked_label_resampling_equals_the_whole_volume_one_exactly(labels, spacing_mm):
    grid, shape = synthesis_grid(labels, spacing_mm)
    expected = _whole_volume_labels(labels.array, labels.ijk_to_ras, grid, shape)
    got = resample_labels(labels.array, labels.ijk_to_ras, grid, shape, chunk_voxels=777)  # slabs of a few rows
    assert shape[0] * shape[1] * shape[2] > 10 * 777 and np.array_equal(got, expected)
    assert set(np.unique(got)) == set(range(NUM_CLASSES))


@pytest.mark.parametrize("sigma", [0.75, 2.0])
def test_slab_wise_lowpass_equals_the_whole_volume_gaussian_bit_for_bit(sigma):
    """The z pass reads a halo, the y and x passes run on the slab alone: the same float32 bits as
    ``gaussian_filter`` on the whole volume, for slabs of one row to the whole volume."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3, (37, 23, 29)).astype(np.uint8)
    expected = ndimage.gaussian_filter(data == 1, sigma, output=np.float32, truncate=TRUNCATE)
    for chunk in (1, 23 * 29 * 3, 10**9):
        assert np.array_equal(lowpass(data, sigma, lambda b: b == 1, chunk_voxels=chunk), expected)
    values = rng.normal(size=(20, 31, 17)).astype(np.float32)
    assert np.array_equal(lowpass(values, sigma, chunk_voxels=100),
                          ndimage.gaussian_filter(values, sigma, output=np.float32, truncate=TRUNCATE))


def test_lowpass_in_a_box_is_exact_where_it_claims():
    """Data zero outside a box: filtering the box grown by the radius is exact everywhere; any box is exact where
    the kernel's window lies inside it, and ``fill`` outside it."""
    sigma = 1.5
    r = lowpass_radius(sigma)
    data = np.zeros((40, 50, 45), np.float32)
    support = (slice(12, 25), slice(3, 30), slice(20, 41))  # touches the volume's edges at y 0..3 after growing
    data[support] = np.random.default_rng(2).uniform(0, 1, data[support].shape)
    whole = ndimage.gaussian_filter(data, sigma, output=np.float32, truncate=TRUNCATE)
    assert np.array_equal(lowpass(data, sigma, box=grown_box(support, r, data.shape), chunk_voxels=500), whole)
    ones = np.ones_like(data)
    ones[support] = data[support]
    box = grown_box(support, 2 * r, data.shape)
    got = lowpass(ones, sigma, box=box, fill=7.0, chunk_voxels=500)
    inner = grown_box(support, r, data.shape)
    whole_ones = ndimage.gaussian_filter(ones, sigma, output=np.float32, truncate=TRUNCATE)
    assert np.array_equal(got[inner], whole_ones[inner])
    outside = np.ones(data.shape, bool)
    outside[box] = False
    assert np.all(got[outside] == 7.0)


def test_label_resampling_of_a_heart_in_a_large_field_is_exact_at_a_fraction_of_the_filtering(labels, monkeypatch):
    """A heart in a field of view twice its size, downsampled (low-pass first): the labels are bit for bit those of
    whole-volume filtering, while the Gaussian passes cover less than one whole-volume filter for all classes
    together; filtering every class over the whole map (the code before) did 9 such filters and more."""
    import scipy.ndimage._filters as filters

    field = np.zeros((70, 140, 132), np.uint8)
    field[12:57, 35:105, 33:99] = labels.array
    src = labels.ijk_to_ras @ np.array([[1, 0, 0, -33], [0, 1, 0, -35], [0, 0, 1, -12], [0, 0, 0, 1.0]])
    big = Volume(field, src)
    grid, shape = synthesis_grid(big, 4.0)
    expected = _whole_volume_labels(field, src, grid, shape)
    original, passes = ndimage.gaussian_filter1d, []

    def counted(array, *args, **kwargs):
        passes.append(np.asarray(array).size)
        return original(array, *args, **kwargs)

    monkeypatch.setattr(ndimage, "gaussian_filter1d", counted)
    monkeypatch.setattr(filters, "gaussian_filter1d", counted)  # what ndimage.gaussian_filter calls
    got = resample_labels(field, src, grid, shape, chunk_voxels=5000)
    assert np.array_equal(got, expected) and set(np.unique(got)) == set(range(NUM_CLASSES))
    whole_volume_filters = sum(passes) / (3 * field.size)
    assert 0 < whole_volume_filters < 1.0, whole_volume_filters


def test_slabs_run_on_the_jobs_threads_with_the_same_bits(labels, monkeypatch):
    """With the job's 2 threads (devices.set_threads) the slabs of resampling and low-pass run in parallel, and
    labels, linear values and int16 HU are bit for bit those of one thread."""
    import threading

    from meddiffcore import devices

    grid, shape = synthesis_grid(labels, 4.0)
    single = resample_labels(labels.array, labels.ijk_to_ras, grid, shape, chunk_voxels=777)
    x = np.random.default_rng(3).uniform(-1, 1, shape).astype(np.float32)
    kwargs = dict(order=1, mode="nearest", dtype=np.int16, chunk_voxels=1000, convert=lambda s: np.round(s * 1000.0))
    hu = resample(x, grid, labels.ijk_to_ras, labels.shape, workers=1, **kwargs)
    monkeypatch.setattr(devices, "_JOB_THREADS", 2)
    threads = set()

    def seen(block):
        threads.add(threading.get_ident())
        return block
    assert np.array_equal(resample_labels(labels.array, labels.ijk_to_ras, grid, shape, chunk_voxels=777), single)
    assert np.array_equal(resample(x, grid, labels.ijk_to_ras, labels.shape, prepare=seen, **kwargs), hu)
    assert len(threads) == 2
    data = labels.array == 3
    assert np.array_equal(lowpass(data, 1.2, chunk_voxels=2000), lowpass(data, 1.2, chunk_voxels=2000, workers=1))


def test_chunked_linear_resampling_equals_the_whole_volume_one(labels):
    grid, shape = synthesis_grid(labels, 2.0)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    matrix, offset = zyx_affine(grid, labels.ijk_to_ras)
    expected = ndimage.affine_transform(x, matrix, offset, output_shape=labels.shape, order=1, mode="nearest")
    got = resample(x, grid, labels.ijk_to_ras, labels.shape, order=1, mode="nearest", chunk_voxels=1000)
    assert got.dtype == np.float32 and np.max(np.abs(got - expected)) <= LINEAR_TOLERANCE * 2.0
    nearest = resample(x, grid, labels.ijk_to_ras, labels.shape, order=0, mode="nearest", chunk_voxels=1000)
    assert np.array_equal(nearest, ndimage.affine_transform(x, matrix, offset, output_shape=labels.shape, order=0,
                                                           mode="nearest"))
    hu = resample(x, grid, labels.ijk_to_ras, labels.shape, order=1, dtype=np.int16, chunk_voxels=1000,
                  convert=lambda slab: np.round(slab * 1000.0))
    assert hu.dtype == np.int16 and np.max(np.abs(hu - np.round(expected * 1000.0))) <= 1


def _numpy_peak(fn) -> int:
    """Peak bytes NumPy (and Python) allocated while ``fn`` ran, beyond what existed before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del result
    return peak


@pytest.fixture(scope="module")
def big_labels() -> Volume:
    """A 96 x 256 x 256 label map at 0.8 x 0.8 x 1 mm (a 1.6 x 1.6 x 2 mm phantom, each voxel repeated 2 x 2 x 2):
    several slabs of io.resample.CHUNK_VOXELS, made in a second."""
    coarse = make_phantom(1, shape=(48, 128, 128), ijk_to_ras=_oblique((48, 128, 128), (1.6, 1.6, 2.0)), with_ct=False)
    fine = coarse.labels.array.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    return Volume(np.ascontiguousarray(fine), _oblique(fine.shape, (0.8, 0.8, 1.0)))


def test_synthesis_pre_and_post_processing_stay_within_3x_input_plus_output(big_labels, tmp_path, monkeypatch):
    """The issue's target on what NumPy allocates: one synthesis (tiny model, 1 step) of a label map larger than a
    slab peaks below 3x (label map + int16 CT): 2.0x measured; the whole-volume code (a float32 mask and its
    filtered copy per class, four float32 copies of the output) peaked at 4.0x."""
    import torch

    from meddiffcore.tasks.ctca.model import load_ctca_model
    from meddiffcore.tasks.ctca.synthesis import SynthesisSettings, synthesize

    save_tiny_model(tmp_path / "models", "ctca-tiny")
    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path))
    model = load_ctca_model("ctca-tiny", "cpu")
    settings = SynthesisSettings(steps=1, seed=0)
    in_out = big_labels.array.nbytes * 3  # uint8 labels + int16 CT
    peak = _numpy_peak(lambda: synthesize(big_labels, model, settings, generator=torch.Generator().manual_seed(0)))
    assert peak < 3 * in_out, f"peak {peak / 2**20:.1f} MiB for {in_out / 2**20:.1f} MiB in + out"


def test_label_resampling_allocates_no_float_array_per_class(big_labels):
    """Onto a grid of about the same resolution (no low-pass): the whole-volume code held one float32 fraction per
    class on the output grid and a float32 copy of the source per class (80x the uint8 output measured); a running
    arg-max keeps a few arrays of the output and reads the source box by box (11x measured)."""
    grid, shape = synthesis_grid(big_labels, 0.9)
    out_bytes = int(np.prod(shape))
    peak = _numpy_peak(lambda: resample_labels(big_labels.array, big_labels.ijk_to_ras, grid, shape))
    assert peak < 16 * out_bytes, f"peak {peak / out_bytes:.1f}x the uint8 output"


def test_label_validation_and_one_hot_make_no_int64_copy(big_labels):
    """A mapped label map was looked up through an int64 copy (16x the map measured, now 1.2x) and one-hot encoded
    from an int64 copy."""
    lab = big_labels.array
    mapping = {v: v for v in range(NUM_CLASSES)}
    assert _numpy_peak(lambda: to_label_array(lab, mapping)) < 2 * lab.nbytes
    assert _numpy_peak(lambda: to_label_array(lab)) < 0.5 * lab.nbytes  # a uint8 map is used as it is
    small = lab[:8]
    assert _numpy_peak(lambda: one_hot(small)) < 2 * small.nbytes
    expected = (small[None] == np.arange(NUM_CLASSES)[:, None, None, None]).astype(np.float32)
    assert np.array_equal(one_hot(small).numpy(), expected)
    with pytest.raises(ValueError, match="0..8"):
        one_hot(np.array([[[0, 9]]]))


def test_cli_synthesis_is_unchanged_by_the_bounded_processing(tmp_path, monkeypatch):
    """``meddiff synthesize`` (tiny deterministic model, 2 steps, seed 0) on an oblique 1.9 x 1.9 x 2.5 mm label map
    gives the CT the whole-volume code wrote (stored in Testing/data, made with main at 5355cf5)."""
    save_tiny_model(tmp_path / "models", "ctca-tiny")
    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path))
    out = tmp_path / "ct.nii.gz"
    rc = cli_main(["synthesize", "--labels", str(DATA / "ctca_tiny_synthesis_labels.nii.gz"), "--out", str(out),
                   "--model", "ctca-tiny", "--steps", "2", "--seed", "0", "--progress", "none"])
    assert rc == 0
    got, expected = read_volume(out), read_volume(DATA / "ctca_tiny_synthesis_reference.nii.gz")
    assert got.array.dtype == np.int16 and got.same_grid(expected)
    diff = np.abs(got.array.astype(np.int32) - expected.array)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())  # float32 rounding of HU, at most


def test_resampling_writes_into_the_output_dtype_without_float_copies(big_labels):
    """The CT is resampled from the synthesis grid straight into int16: the old code made a float32 output and
    three float32 copies for HU, rounding and clipping (>= 8x the int16 output)."""
    grid, shape = synthesis_grid(big_labels, 2.0)
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    out_bytes = big_labels.array.size * 2
    peak = _numpy_peak(lambda: resample(x, grid, big_labels.ijk_to_ras, big_labels.shape, order=1, dtype=np.int16,
                                        convert=lambda s: np.clip(np.round(np.multiply(s, 1e3, out=s), out=s), -1024, 3071, out=s)))
    assert peak < 2 * out_bytes, f"peak {peak / out_bytes:.2f}x the int16 output"


# ------------------------------------------------------------------------------------------------ recon
def test_recon_output_is_one_float32_copy_of_the_solution():
    """Prior units -> HU / MRI units: the solver's tensor is copied once and scaled in place (the old lambda made
    three volume-sized float arrays); the solver's tensor itself is never modified."""
    import torch

    from meddiffcore.tasks.recon.run import output_array

    x = torch.linspace(-0.5, 1.5, 64 * 96 * 96, dtype=torch.float32).reshape(64, 96, 96)
    before = x.clone()
    peak = _numpy_peak(lambda: output_array(x, 2000.0, -1000.0))
    assert peak < 1.2 * x.numel() * 4, f"peak {peak / (x.numel() * 4):.2f}x the output"
    hu = output_array(x, 2000.0, -1000.0)
    assert hu.dtype == np.float32 and np.array_equal(hu, (before.numpy() * 2000.0 - 1000.0).astype(np.float32))
    assert torch.equal(x, before)
    assert np.array_equal(output_array(x, 3.0, low=0.0), (before.clamp(min=0).numpy() * 3.0).astype(np.float32))


@pytest.fixture()
def recon_home(tmp_path, monkeypatch):
    from recon_helpers import install_tiny_recon_model

    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    install_tiny_recon_model(tmp_path / "home", "tiny-mri", "mri")
    return tmp_path / "home"


def _mri_input(path: Path, shape=(32, 128, 128)) -> np.ndarray:
    from meddiffcore.tasks.recon.phantoms import make_phantom

    arr = make_phantom("mri", None, shape, 0).astype(np.float32)
    from meddiffcore.io import write_volume

    write_volume(Volume.from_spacing(arr, (1.0, 1.0, 1.0)), path)
    return arr


def test_mri_simulation_in_complex64_matches_the_float64_one(tmp_path, recon_home):
    """The simulated k-space is made in complex64 (the old code went through float64 and complex128 copies of the
    volume, 6x its size): the same measurements to float32 precision."""
    import torch

    from meddiffcore.jobs import Job
    from meddiffcore.tasks.recon.model import load_recon_model
    from meddiffcore.tasks.recon.run import mri_problem_from_job

    arr = _mri_input(tmp_path / "mr.nii.gz", (16, 64, 64))
    job = Job(task="recon.mri", inputs={"volume": str(tmp_path / "mr.nii.gz")}, outputs={}, params={"acceleration": 4},
              seed=0)
    problem, y, shape, template, scale = mri_problem_from_job(job, load_recon_model("tiny-mri"), torch.device("cpu"))
    exact = problem.forward(torch.from_numpy(arr.astype(np.float64))) / scale
    assert y.dtype == torch.complex64 and shape == arr.shape and template.array.strides == (0, 0, 0)  # a zero-byte view
    assert float((y - exact).abs().max() / exact.abs().max()) < 1e-5


def test_mri_job_numpy_memory_stays_within_2x_input_plus_output(tmp_path, recon_home):
    """``meddiff recon mri`` in-process (tiny prior, 1 step): what NumPy allocates (reading, simulation, output,
    writing; the solver's torch tensors are not NumPy's) stays below 2.3x input + output: 1.7x measured, 2.7x before."""
    arr = _mri_input(tmp_path / "mr.nii.gz")
    args = ["recon", "mri", "--simulate-from", str(tmp_path / "mr.nii.gz"), "--out", str(tmp_path / "out.nii.gz"),
            "--model", "tiny-mri", "--mode", "fast", "--steps", "1", "--cg-iters", "1", "--device", "cpu",
            "--progress", "none", "--seed", "1"]
    peak = _numpy_peak(lambda: cli_main(args))
    assert read_volume(tmp_path / "out.nii.gz").shape == arr.shape
    assert peak < 2.3 * 2 * arr.nbytes, f"peak {peak / (2 * arr.nbytes):.2f}x input + output"
