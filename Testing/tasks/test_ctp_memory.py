"""CTP inpainting in bounded memory (issue 17): the output plus a working set that does not grow with the number of
frames, with results identical to the frames assembled the old way (all synthesized frames held in float32, then
copied into the output), and sequence files read and written without a second copy.

Memory is measured with tracemalloc (every NumPy array is traced; torch's own buffers, the network's working set,
are not): deterministic allocation sizes, no timing. Limits are generous (the old code is several times over them).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiffcore.io import Sequence, Volume, read_sequence, write_sequence
from meddiffcore.jobs import Job, run_job
from meddiffcore.progress import SilentReporter
from meddiffcore.tasks.ctp.phantom import make_ctp_phantom

from test_ctp_engine import TINY, home, one_thread  # noqa: F401  (the tiny random-weight model, one thread)


def _sequence(slices: int, size: int, last_s: float, every_s: float = 4.0, dtype=np.int16, seed: int = 5) -> Sequence:
    """Acquired frames every ``every_s`` s from 0 to ``last_s`` of a phantom, in ``dtype``."""
    n = int(last_s) + 1
    ph = make_ctp_phantom(seed, slices=slices, size=size, frames=n)
    idx = np.arange(0, n, int(every_s))
    arr = ph.sequence.array[idx]
    arr = np.rint(arr).astype(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else arr.astype(dtype)
    geo = Volume.from_spacing(np.zeros((slices, size, size)), (0.8, 0.8, 5.0)).ijk_to_ras
    return Sequence(arr, geo, ph.sequence.times_s[idx])


def _traced_peak(fn) -> tuple[int, object]:
    """(peak bytes of NumPy/Python allocations while ``fn`` runs, above what was held before, its result)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        return tracemalloc.get_traced_memory()[1] - before, result
    finally:
        tracemalloc.stop()


def _inpaint_job(src: Path, out: Path, **params) -> int:
    job = Job(task="ctp.inpaint", inputs={"sequence": str(src)}, outputs={"sequence": str(out)},
              params={"interval": 1.0, "batch_size": 4, **params}, model=TINY, seed=0, device="cpu")
    return run_job(job, SilentReporter())


def test_inpaint_memory_does_not_grow_with_the_number_of_frames(tmp_path, home):
    """The whole job (read, fill, write) for 17 and for 49 output frames: beyond the input and the output arrays,
    the traced peak stays the same and under 40 float32 frames. The old code held every synthesized frame in
    float32 about three times over (accumulator, HU, blended) next to the output: 4.7 MB (64 float32 frames) more
    for 24 more synthesized frames here; now 0.2 MB (the reader's chunk buffers filling up to their size)."""
    frame_f32 = 8 * 48 * 48 * 4
    extra = {}
    for last in (4, 16, 48):  # a first job that imports and caches what the job path needs, not measured; then
        # 5 -> 17 and 13 -> 49 frames (12 and 36 synthesized)
        seq = _sequence(8, 48, last)
        src, out = tmp_path / f"in{last}.seq.nrrd", tmp_path / f"out{last}.seq.nrrd"
        write_sequence(seq, src)
        peak, rc = _traced_peak(lambda: _inpaint_job(src, out))
        assert rc == 0
        res = read_sequence(out)
        assert len(res) == last + 1 and res.dtype == np.int16
        extra[last] = peak - seq.array.nbytes - res.array.nbytes
    assert extra[48] < extra[16] + 6 * frame_f32, extra  # the same working set for 3x the frames
    assert extra[48] < 40 * frame_f32, extra


def _old_way(hu, times, plan, model, generator, batch):
    """The frames as the code before issue 17 computed them: every target's slabs accumulated in one float32 array
    of all targets, the model frames of all targets in HU, the linear fill of all targets, then assembled."""
    from meddiffcore.tasks.ctp import inpaint as ip
    from meddiffcore.tasks.ctp.config import hu_to_model, model_to_hu, tissue_mask, window_bounds
    from meddiffcore.tasks.ctp.model import in_plane_padding
    from meddiffcore.tasks.ctp.plan import with_peak

    level, width = model.window_level_hu, model.window_width_hu
    lo, hi = window_bounds(level, width)
    n_z, n_y, n_x = hu.shape[1:]
    slab, m = model.slab_slices, ip.KNOWN_MARGIN
    mask = tissue_mask(hu[plan.known[0]], level, width * (1.0 + 2.0 * m))
    plan = with_peak(plan, ip.peak_time(hu, times, plan.known, mask), model.diffusion.peak_margin_s)
    pad_z = max(0, slab - n_z)
    pad_y, pad_x = in_plane_padding(model.net, max(n_z, slab), n_y, n_x)
    zs = n_z + pad_z
    starts = ip.slab_starts(zs, slab)
    lo, hi = lo - m * width, hi + m * width
    padded = {k: np.pad(hu_to_model(hu[k], level, width, ip.INPUT_MARGIN), ((0, pad_z), (0, pad_y), (0, pad_x)),
                        mode="edge") for k in sorted({k for g in plan.targets for k in (g.left, g.right)})}
    items = [(ti, s) for ti in range(len(plan.targets)) for s in starts]
    acc = np.zeros((len(plan.targets), zs, n_y + pad_y, n_x + pad_x), np.float32)
    wsum = np.zeros(zs, np.float32)
    for s in starts:
        wsum[s:s + slab] += ip.slab_weights(slab, s, zs, starts)
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        out = ip._estimate_chunk(model, chunk, plan, padded, slab, torch.device("cpu"), estimate="mean",
                                 sampler="dpmpp_2m", steps=1, generator=generator, callback=None, margin=m)
        for (ti, s), o in zip(chunk, out):
            acc[ti, s:s + slab] += o * ip.slab_weights(slab, s, zs, starts)[:, None, None]
    acc /= wsum[None, :, None, None]
    model_hu = model_to_hu(acc[:, :n_z, :n_y, :n_x], level, width, m)
    frames = ip.linear_fill(hu, plan)
    for ti, g in enumerate(plan.targets):
        a, c = hu[g.left], hu[g.right]
        use = mask & (a >= lo) & (a <= hi) & (c >= lo) & (c <= hi)
        frames[ti] = np.where(use, model_hu[ti], frames[ti])
    return frames, ip.assemble(hu, plan, frames)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_filled_sequence_equals_the_old_assembly_bit_for_bit(home, dtype):
    """Two overlapping slabs (12 slices), in-plane padding (33 -> 34), a replaced bad frame, batches of 3 that
    straddle targets: the streamed output equals the old way's exactly, acquired and filled frames alike (the
    same float32 operations on each voxel, in the same order), for integer and float input."""
    from meddiffcore.tasks.ctp.inpaint import fill_sequence, inpaint_frames, linear_fill
    from meddiffcore.tasks.ctp.model import load_for_inference
    from meddiffcore.tasks.ctp.plan import make_plan

    model = load_for_inference(TINY, torch.device("cpu"))
    seq = _sequence(12, 33, 16, dtype=dtype)
    plan = make_plan(seq.times_s, interval_s=1.0, bad_frames=[2], max_gap_s=model.max_gap_s)
    assert plan.n_missing == 13 and len(plan.times_s) == 17
    options = dict(steps=1, sampler="dpmpp_2m", device=torch.device("cpu"), estimate="mean", batch_size=3)
    frames_old, out_old = _old_way(seq.array, seq.times_s, plan, model, torch.Generator().manual_seed(3), 3)
    out, stats = fill_sequence(seq.array, seq.times_s, plan, model, generator=torch.Generator().manual_seed(3),
                               **options)
    assert stats["slabs"] == 2 and stats["items"] == 26 and out.dtype == dtype
    assert np.array_equal(out, out_old)
    frames, _ = inpaint_frames(seq.array, seq.times_s, plan, model, generator=torch.Generator().manual_seed(3),
                               **options)
    assert np.array_equal(frames, frames_old)
    assert not np.allclose(frames, linear_fill(seq.array, plan), atol=0.5)  # the network filled: not a vacuous test


def test_cli_output_unchanged_on_a_small_sequence(tmp_path, home):
    """``meddiff inpaint`` on a .seq.nrrd writes exactly the old way's sequence (same seed, same batches)."""
    from meddiffcore.cli import main as cli_main
    from meddiffcore.tasks.ctp.model import load_for_inference
    from meddiffcore.tasks.ctp.plan import make_plan

    seq = _sequence(12, 32, 12)
    src, out = tmp_path / "in.seq.nrrd", tmp_path / "out.seq.nrrd"
    write_sequence(seq, src)
    assert cli_main(["inpaint", "--sequence", str(src), "--out", str(out), "--interval", "1", "--model", TINY,
                     "--seed", "0", "--batch-size", "3", "--device", "cpu", "--progress", "none"]) == 0
    model = load_for_inference(TINY, torch.device("cpu"))
    plan = make_plan(seq.times_s, interval_s=1.0, max_gap_s=model.max_gap_s)
    _, expected = _old_way(seq.array, seq.times_s, plan, model, torch.Generator().manual_seed(0), 3)
    res = read_sequence(out)
    assert np.array_equal(res.array, expected) and np.array_equal(res.times_s, plan.times_s)
    assert np.array_equal(res.ijk_to_ras, seq.ijk_to_ras)


@pytest.mark.parametrize("compress", [True, False])
def test_sequence_files_are_read_and_written_without_a_second_copy(tmp_path, compress):
    """An 8 MB .seq.nrrd (gzip and raw): reading holds the array plus a few MB of chunks (it held the decoded
    bytes, their join and a copy: 2.7x), and writing the array the reader gave (``<i2``, native on this machine)
    holds a few MB (it copied the whole array to relabel its byte order, then compressed it in 16 MB pieces)."""
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(16, 16, 128, 128), dtype=np.int16)
    path = tmp_path / "big.seq.nrrd"
    write_sequence(Sequence(arr, np.eye(4), np.arange(16.0)), path, compress=compress)
    peak, seq = _traced_peak(lambda: read_sequence(path))
    assert np.array_equal(seq.array, arr) and seq.array.dtype.isnative
    assert peak < arr.nbytes + 6 * 2**20, peak / 2**20
    little = Sequence(seq.array.astype("<i2"), seq.ijk_to_ras, seq.times_s)
    again = tmp_path / "again.seq.nrrd"
    peak, _ = _traced_peak(lambda: write_sequence(little, again, compress=compress))
    assert peak < 6 * 2**20, peak / 2**20
    assert np.array_equal(read_sequence(again).array, arr)


def test_seed_layout_npy_is_written_slice_by_slice_and_byte_identical(tmp_path):
    """The .npy output ([slices, H, W, T]) is the file np.save writes of the moved array, without holding it."""
    from meddiffcore.tasks.ctp.sequences import write_ctp_sequence

    arr = np.random.default_rng(1).normal(size=(20, 8, 64, 64)).astype(np.float32)
    seq = Sequence(arr, np.eye(4), np.arange(20.0))
    path = tmp_path / "out.npy"
    peak, _ = _traced_peak(lambda: write_ctp_sequence(seq, path))
    reference = tmp_path / "ref.npy"
    np.save(reference, np.ascontiguousarray(np.moveaxis(arr, 0, -1)), allow_pickle=False)
    assert path.read_bytes() == reference.read_bytes()
    assert peak < arr.nbytes / 4, peak / 2**20  # one slice of all frames at a time (1/8 here), not the whole


def test_perfusion_maps_convert_the_sequence_a_block_of_voxels_at_a_time():
    """compute_perfusion of a 43-frame int16 sequence: the traced peak stays under twice the input (frame-sized maps
    and baselines, one block of curves); it was 12x (float64 copies of the whole sequence and of its concentration
    curves, 4x the input each). The maps do not depend on the block size."""
    from meddiffcore.tasks.ctp.perfusion import compute_perfusion

    ph = make_ctp_phantom(0, slices=16, size=96, frames=43)
    seq = Sequence(np.rint(ph.sequence.array).astype(np.int16), ph.sequence.ijk_to_ras, ph.sequence.times_s)
    peak, maps = _traced_peak(lambda: compute_perfusion(seq, svd_threshold=0.02, chunk=2048))
    assert peak < 2 * seq.array.nbytes, (peak / 2**20, seq.array.nbytes / 2**20)
    whole = compute_perfusion(seq, svd_threshold=0.02, chunk=16 * 96 * 96)
    for name, value in maps.as_dict().items():
        np.testing.assert_allclose(value, whole.as_dict()[name], rtol=1e-5, atol=1e-4, err_msg=name)
    assert maps.tissue.sum() > 1000 and np.array_equal(maps.aif_hu, whole.aif_hu)


def test_per_frame_conversions_equal_the_clip_formulas_bit_for_bit():
    """The per-frame steps outside the network (window units <-> HU, the linear fill, rounding into the output's
    dtype) now work in place with a maximum and a minimum instead of ``np.clip`` and temporaries (at 512² x 16 they
    took 40 % of the data path); the bits are those of the formulas they replace."""
    from types import SimpleNamespace

    from meddiffcore.tasks.ctp.config import clip, hu_to_model, model_to_hu, window_bounds
    from meddiffcore.tasks.ctp.inpaint import in_dtype, linear_frame

    rng = np.random.default_rng(5)
    hu = np.concatenate([rng.normal(40, 300, 5000), [-1024, 3071, 0, 40, 80, -32768, 32767]]).astype(np.float32)
    for level, width, margin in ((40.0, 80.0, 0.0), (40.0, 80.0, 0.25), (35.5, 101.0, 0.1)):
        lo, hi = window_bounds(level, width)
        near = (hu >= lo - margin * width) & (hu <= hi + margin * width)
        expected = (np.where(near, hu, np.clip(hu, lo, hi)) - lo) / (hi - lo) * 2.0 - 1.0
        got = hu_to_model(hu, level, width, margin)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
        x = rng.normal(0, 1.5, 5000).astype(np.float32)
        expected = (np.clip(x, -1.0 - 2 * margin, 1.0 + 2 * margin) + 1.0) / 2.0 * (hi - lo) + lo
        assert np.array_equal(model_to_hu(x, level, width, margin), expected)
        assert np.array_equal(x, x.copy())  # the input is left alone
    frames = rng.integers(-1024, 3000, (5, 4, 6, 7)).astype(np.int16)
    target = SimpleNamespace(left=1, right=3, left_gap_s=1.0, right_gap_s=2.0)
    w = 1.0 / 3.0
    expected = (1 - w) * frames[1].astype(np.float32) + w * frames[3].astype(np.float32)
    assert np.array_equal(linear_frame(frames, target), expected)
    big = (rng.normal(0, 20000, 5000)).astype(np.float32)
    for dtype in (np.int16, np.uint8, np.float32):
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            expected = np.clip(np.rint(big), info.min, info.max).astype(dtype)
        else:
            expected = big.astype(dtype)
        assert np.array_equal(in_dtype(big.copy(), dtype), expected)
    assert clip(np.float32(5.0), 0.0, 1.0) == 1.0 and np.array_equal(clip(big, -1.0, 1.0), np.clip(big, -1.0, 1.0))
