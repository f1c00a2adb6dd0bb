"""The CTP authors' inference conventions (Bae et al. 2024), for their imported model.

A card with ``task_config["peak_rule"] == "authors"`` (set by the importer) is run
with these instead of MedDiff's own:

* tissue mask: voxels whose windowed value summed over the acquired frames is
  positive (some frame above 0 HU), connected objects under 6000 voxels removed
  (face connectivity), holes filled;
* bolus peak: the acquired frame with the largest whole-volume sum of windowed
  values when the acquired frames are at most 2 s apart, otherwise the mean of the
  two largest frames' times, truncated to whole seconds after the first frame;
* phase of a gap (its two bracketing acquired frames, not the target time):
  rising if both lie before the peak (the right one may be the peak), falling if
  both lie after it (the left one may be the peak), around the peak otherwise.

The local context and the window are the ones MedDiff's models use already
(:func:`~meddiffcore.tasks.ctp.plan.local_context`, :func:`~meddiffcore.tasks.ctp.config.hu_to_model`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .config import window_bounds
from .plan import InpaintPlan, Target

#: Connected tissue objects smaller than this (voxels) are not tissue (the authors' remove_small_objects).
MIN_OBJECT_VOXELS = 6000
#: Frames at most this far apart (s): the peak is the largest frame; otherwise the mean of the two largest.
SINGLE_PEAK_GAP_S = 2.0

PHASE_RISING, PHASE_PEAK, PHASE_FALLING = 0, 1, 2


def uses_authors_rules(task_config: dict) -> bool:
    return task_config.get("peak_rule") == "authors"


def windowed(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU clipped to the window, in the window's own units ([0, 80] for WL 40 / WW 80)."""
    lo, hi = window_bounds(level, width)
    return np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo


def tissue_mask(known_hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """(Z, Y, X) bool mask from the (K, Z, Y, X) acquired frames."""
    mask = windowed(known_hu, level, width).sum(axis=0) > 0
    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= MIN_OBJECT_VOXELS
        keep[0] = False
        mask = keep[labels]
    return ndimage.binary_fill_holes(mask)


def peak_time(known_hu: np.ndarray, known_times_s: np.ndarray, level: float, width: float) -> float:
    """The estimated bolus peak time (s) from the acquired frames."""
    t = np.asarray(known_times_s, dtype=np.float64)
    sums = windowed(known_hu, level, width).reshape(len(t), -1).sum(axis=1, dtype=np.float64)
    if len(t) < 2 or np.max(np.diff(t)) <= SINGLE_PEAK_GAP_S + 1e-6:
        return float(t[int(np.argmax(sums))])
    top = np.argsort(sums, kind="stable")[::-1][:2]
    return float(t[0] + np.floor(np.mean(t[top] - t[0])))


def gap_phase(left_s: float, right_s: float, peak_s: float) -> int:
    """The authors' global context of the gap between acquired frames at ``left_s`` < ``right_s``."""
    if left_s < peak_s and right_s <= peak_s:
        return PHASE_RISING
    if left_s >= peak_s and right_s > peak_s:
        return PHASE_FALLING
    return PHASE_PEAK


def with_authors_phases(plan: InpaintPlan, times_s: np.ndarray, peak_s: float) -> InpaintPlan:
    """The plan with every target's phase set by the authors' rule for its gap."""
    targets = [Target(g.time_s, g.left, g.right, g.left_gap_s, g.right_gap_s,
                      gap_phase(float(times_s[g.left]), float(times_s[g.right]), peak_s)) for g in plan.targets]
    return InpaintPlan(plan.times_s, plan.source, targets, plan.known, plan.bad, float(peak_s))
