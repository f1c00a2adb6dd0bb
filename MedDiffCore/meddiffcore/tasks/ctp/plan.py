"""Which output times are kept, synthesized or repaired, and what conditions each (pure logic, no torch).

Output times: the target grid ``t0 + k * interval`` from the first to the last
good (known) frame, plus every input time in that range not on the grid, so no
acquired frame is dropped. A good input frame is copied bit-exactly; every other
output time (a missing grid time, or a listed bad frame) is synthesized from the
nearest good frame before it and after it. Their distances give the local
context, the phase relative to the bolus peak (estimated from the good frames)
the global context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddiffcore.errors import BadInputError, ConfigError

from .config import LOCAL_CONTEXT_SCALE_S, MAX_GAP_S, PHASES

#: Two times closer than this (s) are the same time.
TIME_TOLERANCE_S = 1e-4
#: Most output frames one inpainting job writes (a 1 s grid over ~3 h); checked before anything is allocated.
MAX_OUTPUT_FRAMES = 10_000


@dataclass(frozen=True)
class Target:
    """One output frame to synthesize."""

    time_s: float
    left: int  # input index of the good frame before
    right: int  # input index of the good frame after
    left_gap_s: float  # time - left time
    right_gap_s: float  # right time - time
    phase: int  # index into PHASES


@dataclass
class InpaintPlan:
    times_s: np.ndarray  # output times
    source: list[int | None]  # per output frame: input index copied, or None (synthesized)
    targets: list[Target]  # the synthesized frames, in output order
    known: list[int]  # input indices of the good frames
    bad: list[int] = field(default_factory=list)
    peak_s: float = 0.0

    @property
    def n_missing(self) -> int:
        return len(self.targets)


def check_times(times_s) -> np.ndarray:
    """Times as float64; BadInputError for NaN, unsorted or duplicate times."""
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(t)):
        raise BadInputError("the frame times contain NaN or inf", "give one finite time (s) per frame")
    for i in range(1, t.size):
        if abs(t[i] - t[i - 1]) <= TIME_TOLERANCE_S:
            raise BadInputError(f"frames {i - 1} and {i} have the same time ({t[i]:g} s)",
                                "remove the duplicate frame or fix the frame times")
        if t[i] < t[i - 1]:
            raise BadInputError(f"frame times are not sorted: frame {i} (t={t[i]:g} s) comes after frame {i - 1} "
                                f"(t={t[i - 1]:g} s)", "sort the frames by acquisition time")
    return t


def parse_bad_frames(value, n_frames: int) -> list[int]:
    """``"12,13"`` or a list of ints -> sorted unique 0-based indices; BadInputError when out of range."""
    if value is None or value == "" or value == []:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            idx = int(str(item).strip())
        except ValueError:
            raise BadInputError(f"bad-frame index {item!r} is not a whole number",
                                "list 0-based frame indices separated by commas, e.g. 12,13") from None
        if not 0 <= idx < n_frames:
            raise BadInputError(f"bad-frame index {idx} is out of range: the sequence has {n_frames} frames",
                                f"use 0-based indices from 0 to {n_frames - 1}")
        out.append(idx)
    return sorted(set(out))


def local_context(left_gap_s: float, right_gap_s: float) -> tuple[float, float]:
    """The seed's local context ((p - 1) / 6, (tr - p - 1) / 6), for any distances in seconds."""
    return ((left_gap_s - 1.0) / LOCAL_CONTEXT_SCALE_S, (right_gap_s - 1.0) / LOCAL_CONTEXT_SCALE_S)


def phase_of(time_s: float, peak_s: float, margin_s: float) -> int:
    """0 rising (before the peak), 1 around the peak (within ``margin_s``), 2 falling."""
    if time_s < peak_s - margin_s:
        return 0
    if time_s > peak_s + margin_s:
        return 2
    return 1


def context_vector(left_gap_s: float, right_gap_s: float, phase: int) -> np.ndarray:
    """(2 + len(PHASES),) float32: local context then the one-hot phase."""
    out = np.zeros(2 + len(PHASES), np.float32)
    out[:2] = local_context(left_gap_s, right_gap_s)
    out[2 + phase] = 1.0
    return out


def estimate_peak(times_s: np.ndarray, mean_intensity: np.ndarray) -> float:
    """Time of the largest mean tissue intensity among the frames given (the seed's peak estimate)."""
    return float(np.asarray(times_s)[int(np.argmax(mean_intensity))])


def make_plan(times_s, *, interval_s: float = 1.0, bad_frames=(), max_gap_s: float = MAX_GAP_S,
              peak_s: float | None = None, peak_margin_s: float = 2.0) -> InpaintPlan:
    """Plan an inpainting job; BadInputError for anything the model cannot do.

    ``peak_s`` None: phases are left at 'peak' (set them with :func:`with_peak` once
    the intensities are known).
    """
    t = check_times(times_s)
    if not np.isfinite(interval_s) or interval_s <= 0:
        raise BadInputError(f"the output interval must be a positive number of seconds, got {interval_s}",
                            "use e.g. --interval 1")
    bad = parse_bad_frames(bad_frames, t.size)
    known = [i for i in range(t.size) if i not in set(bad)]
    if len(known) < 2:
        raise BadInputError(f"the sequence has {len(known)} good frame(s); at least two known frames are needed",
                            "give a sequence with two or more frames and fewer bad frames")
    t_first, t_last = t[known[0]], t[known[-1]]
    outside = [i for i in bad if t[i] < t_first or t[i] > t_last]
    if outside:
        raise BadInputError(
            f"bad frame(s) {', '.join(map(str, outside))} lie before the first or after the last good frame",
            "frames can only be repaired between two good frames; trim the sequence instead")
    span = float(t_last - t_first)
    if span / interval_s + t.size > MAX_OUTPUT_FRAMES:
        raise ConfigError(
            f"an interval of {interval_s:g} s over the {span:g} s between the first and last good frames gives about "
            f"{span / interval_s + 1:.3g} output frames, more than the {MAX_OUTPUT_FRAMES} one job may write",
            f"use an interval of at least {span / (MAX_OUTPUT_FRAMES - t.size):.3g} s (e.g. --interval 1)")
    n_grid = int(np.floor(span / interval_s + TIME_TOLERANCE_S)) + 1
    grid = t_first + interval_s * np.arange(n_grid, dtype=np.float64)
    known_t = t[known]
    out_times: list[float] = []
    source: list[int | None] = []
    candidates = sorted(set(grid.tolist()) | set(t[(t >= t_first) & (t <= t_last)].tolist()))
    for time in candidates:
        if out_times and time - out_times[-1] <= TIME_TOLERANCE_S:
            continue  # a grid time and an input time that are the same time
        j = int(np.argmin(np.abs(known_t - time)))
        if abs(known_t[j] - time) <= TIME_TOLERANCE_S:
            out_times.append(float(known_t[j]))
            source.append(known[j])
        else:
            out_times.append(float(time))
            source.append(None)
    targets = []
    for time, src in zip(out_times, source):
        if src is not None:
            continue
        r = int(np.searchsorted(known_t, time))
        left, right = known[r - 1], known[r]
        gap = t[right] - t[left]
        if gap > max_gap_s + TIME_TOLERANCE_S:
            raise BadInputError(
                f"the gap between known frames {left} (t={t[left]:g} s) and {right} (t={t[right]:g} s) is {gap:g} s, "
                f"longer than the {max_gap_s:g} s the model supports",
                f"acquire or keep a frame at least every {max_gap_s:g} s (list fewer bad frames)")
        targets.append(Target(time, left, right, time - t[left], t[right] - time, 1))
    plan = InpaintPlan(np.array(out_times), source, targets, known, bad, 0.0)
    return with_peak(plan, peak_s, peak_margin_s) if peak_s is not None else plan


def with_peak(plan: InpaintPlan, peak_s: float, margin_s: float) -> InpaintPlan:
    """The plan with every target's phase set relative to the bolus peak at ``peak_s``."""
    targets = [Target(g.time_s, g.left, g.right, g.left_gap_s, g.right_gap_s, phase_of(g.time_s, peak_s, margin_s))
               for g in plan.targets]
    return InpaintPlan(plan.times_s, plan.source, targets, plan.known, plan.bad, float(peak_s))
