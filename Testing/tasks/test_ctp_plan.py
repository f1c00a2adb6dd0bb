"""CTP inpainting plan: output times, bad frames, gap limits, context; slabs and their blending weights."""

from __future__ import annotations

import numpy as np
import pytest

from meddiffcore.errors import BadInputError
from meddiffcore.tasks.ctp.inpaint import slab_starts, slab_weights
from meddiffcore.tasks.ctp.plan import context_vector, make_plan, parse_bad_frames, phase_of, with_peak


def test_regular_sparse_sequence_fills_every_second():
    plan = make_plan([0, 4, 8, 12], interval_s=1.0)
    np.testing.assert_array_equal(plan.times_s, np.arange(13.0))
    assert plan.source[::4] == [0, 1, 2, 3] and plan.n_missing == 9
    t5 = plan.targets[3]  # t = 5 s: between frames 1 (4 s) and 2 (8 s)
    assert (t5.time_s, t5.left, t5.right, t5.left_gap_s, t5.right_gap_s) == (5.0, 1, 2, 1.0, 3.0)


def test_irregular_times_keep_every_acquired_frame():
    plan = make_plan([0.0, 2.5, 3.0, 9.0], interval_s=1.0)
    assert 2.5 in plan.times_s.tolist()
    np.testing.assert_array_equal(plan.times_s, [0, 1, 2, 2.5, 3, 4, 5, 6, 7, 8, 9])
    assert [s for s in plan.source if s is not None] == [0, 1, 2, 3]
    g = plan.targets[-1]
    assert (g.time_s, g.left, g.right) == (8.0, 2, 3) and g.left_gap_s == 5.0 and g.right_gap_s == 1.0


def test_bad_frames_are_replaced_from_their_good_neighbours():
    plan = make_plan(np.arange(20.0), bad_frames="12,13")
    assert len(plan.times_s) == 20 and plan.bad == [12, 13]
    assert [g.time_s for g in plan.targets] == [12.0, 13.0]
    assert all((g.left, g.right) == (11, 14) for g in plan.targets)
    assert plan.source[12] is None and plan.source[11] == 11


def test_phase_is_relative_to_the_peak():
    assert [phase_of(t, 20.0, 2.0) for t in (10, 18, 20, 22, 23)] == [0, 1, 1, 1, 2]
    plan = with_peak(make_plan([0, 8, 16, 24]), 12.0, 2.0)
    assert [g.phase for g in plan.targets][:3] == [0, 0, 0] and plan.targets[10].phase == 1  # t = 11
    v = context_vector(1.0, 7.0, 2)
    np.testing.assert_allclose(v, [0.0, 1.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("times, bad, message", [
    ([0, 4], "0", "at least two known frames"),
    ([0], None, "at least two known frames"),
    ([0, 4, 2, 8], None, "not sorted"),
    ([0, 4, 4, 8], None, "same time"),
    ([0, 10, 12], None, "10 s, longer than the 8 s"),
    ([0, 2, 4, 6, 8, 10, 12], "1,2,3,4", "longer than the 8 s"),
    ([0, 1, 2], "3", "out of range"),
    ([0, 1, 2], "-1", "out of range"),
    ([0, 1, 2], "x", "not a whole number"),
    ([0, 1, 2, 3], "0", "before the first or after the last"),
    ([0, float("nan"), 2], None, "NaN"),
])
def test_bad_plans_say_why(times, bad, message):
    with pytest.raises(BadInputError, match=message):
        make_plan(times, bad_frames=bad)


def test_a_gap_of_exactly_eight_seconds_is_allowed():
    assert make_plan([0, 8]).n_missing == 7


def test_parse_bad_frames_sorts_and_dedups():
    assert parse_bad_frames("5, 3,5", 10) == [3, 5]
    assert parse_bad_frames([], 10) == []


@pytest.mark.parametrize("n", [8, 9, 12, 16, 21])
def test_slabs_cover_every_slice_with_weights_that_sum_to_positive(n):
    starts = slab_starts(n, 8)
    assert starts[0] == 0 and starts[-1] == n - 8
    total = np.zeros(n)
    for s in starts:
        w = slab_weights(8, s, n, starts)
        assert np.all(w > 0)
        total[s:s + 8] += w
    assert np.all(total > 0)
    if len(starts) > 1:  # overlapping slabs ramp, so neighbouring slices blend smoothly
        assert np.all(np.diff(starts) <= 4)
