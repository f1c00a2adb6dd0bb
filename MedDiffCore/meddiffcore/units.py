"""Checks that an input is in the units a model expects, before it is mapped into the model's window.

A CT read from a source that did not apply the rescale slope and intercept holds stored values (air near
0, soft tissue near 1000-1100) rather than HU (air -1000, soft tissue 0-100); put through a model's HU
window, it would come out wrong with no error. MR has no absolute unit: models for it normalise per volume
(recorded on their cards), so only CT is checked here.
"""

from __future__ import annotations

import numpy as np

from .errors import BadInputError


def check_hu(array: np.ndarray, what: str) -> None:
    """BadInputError when ``array`` looks like stored CT values rather than HU: nothing below -50 HU (no air,
    no fat, no lung) and a median of 700 or more (a CT in HU has a median of air or soft tissue)."""
    flat = np.asarray(array).ravel()
    values = flat[::max(1, flat.size // 1_000_000)].astype(np.float32)  # a strided sample of at most ~1M values
    low, median = (float(v) for v in np.percentile(values, [0.1, 50]))
    if low >= -50.0 and median >= 700.0:
        raise BadInputError(
            f"{what} does not look like a CT in HU (lowest values {low:.0f}, median {median:.0f}: no air at -1000 HU, "
            "soft tissue near 1000); it seems to hold stored values without the rescale slope and intercept",
            "convert it to HU first: HU = stored value x RescaleSlope + RescaleIntercept (usually -1024)")
