"""The CTP authors' inference rules the imported model runs with: window, tissue mask, peak, phase of a gap."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from meddiffcore.tasks.ctp import authors
from meddiffcore.tasks.ctp.config import hu_to_model, model_to_hu

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
from published_helpers import CTP  # noqa: E402


def test_the_window_is_the_authors_0_80_mapping_both_ways():
    fixture = np.load(CTP / "ctp_window_fixture.npz")
    np.testing.assert_allclose(hu_to_model(fixture["hu_like"]), fixture["scaled"], atol=1e-7)
    np.testing.assert_allclose(model_to_hu(fixture["scaled"]), fixture["inverse_of_scaled"], atol=1e-5)


def test_tissue_mask_is_positive_somewhere_in_time_without_small_objects_and_holes():
    frames = np.full((3, 8, 40, 40), -1000.0, np.float32)
    frames[:, :, 5:35, 5:35] = 30.0  # a head: 8 x 30 x 30 = 7200 voxels
    frames[:, 2:6, 15:20, 15:20] = -5.0  # an enclosed hole (at most 0 HU in every frame): filled
    frames[:, :, 25:28, 25:28] = -5.0  # a channel through every slice reaches the border in 3D: not filled
    frames[1, :, 37:39, 37:39] = 60.0  # a small object, positive in one frame: removed
    frames[2, 2, 6, 6] = -1000.0  # one frame dark: still tissue (the sum over time is positive)
    mask = authors.tissue_mask(frames, 40.0, 80.0)
    assert mask[:, 5:25, 5:25].all() and mask.sum() == 8 * 30 * 30 - 8 * 9
    small = frames.copy()
    small[:, :, 5:35, 5:35] = -1000.0
    small[:, :, 10:30, 10:30] = 30.0  # 3200 voxels: under 6000, not tissue
    assert not authors.tissue_mask(small, 40.0, 80.0).any()


def test_peak_is_the_largest_frame_at_2_s_and_the_mean_of_the_two_largest_otherwise():
    frames = np.zeros((5, 1, 2, 2), np.float32)
    for k, value in enumerate((5, 20, 60, 50, 10)):
        frames[k] = value
    assert authors.peak_time(frames, np.array([3.0, 5.0, 7.0, 9.0, 11.0]), 40.0, 80.0) == 7.0
    # 4 s apart: the two largest frames at 12 and 16 s -> 4 + int(mean(8, 12)) = 14 s
    assert authors.peak_time(frames, np.array([4.0, 8.0, 12.0, 16.0, 20.0]), 40.0, 80.0) == 14.0
    # truncated to whole seconds after the first frame: 4 + int(mean(7, 12)) = 13 s
    assert authors.peak_time(frames, np.array([4.0, 8.0, 11.0, 16.0, 20.0]), 40.0, 80.0) == 13.0


def test_phase_is_decided_by_the_gap_not_the_target_time():
    assert authors.gap_phase(0.0, 4.0, 4.0) == authors.PHASE_RISING  # the right frame may be the peak
    assert authors.gap_phase(4.0, 8.0, 4.0) == authors.PHASE_FALLING  # the left frame may be the peak
    assert authors.gap_phase(2.0, 6.0, 4.0) == authors.PHASE_PEAK
    assert authors.gap_phase(0.0, 4.0, 3.0) == authors.PHASE_PEAK
