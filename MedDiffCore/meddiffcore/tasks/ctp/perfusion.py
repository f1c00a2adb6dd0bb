"""Perfusion maps (CBF, CBV, MTT, Tmax) by block-circulant SVD deconvolution.

For every tissue voxel the concentration curve ``C`` (HU above the pre-bolus
baseline) is modelled as ``C = dt * A k`` with ``A`` the block-circulant matrix of
the arterial input function (AIF) zero-padded to twice the sequence length (Wu et
al., MRM 2003: insensitive to a delay between AIF and tissue), and ``k = f R``
the flow-scaled residue function. ``k = A^+ C`` with singular values below
``svd_threshold * s_max`` dropped. Then

* ``CBF = 6000 * max(k)`` ml/100 ml/min,
* ``CBV = 100 * sum(C) / sum(AIF)`` ml/100 ml,
* ``MTT = 60 * CBV / CBF`` s,
* ``Tmax = argmax(k) * dt`` s.

The haematocrit and tissue-density corrections are 1 (as in the phantom). The AIF
is chosen automatically (earliest, strongest enhancing voxels outside bone) or
given as a mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meddiffcore.errors import BadInputError
from meddiffcore.io import Sequence

#: Default relative SVD threshold (fraction of the largest singular value).
DEFAULT_SVD_THRESHOLD = 0.1
#: Voxels whose baseline lies in this HU range can be tissue (excludes air and bone).
TISSUE_BASELINE_HU = (-20.0, 100.0)
#: A voxel enhancing more than this (HU) is a vessel, not tissue.
VESSEL_ENHANCEMENT_HU = 100.0


@dataclass
class PerfusionMaps:
    cbf: np.ndarray  # ml/100 ml/min (z, y, x)
    cbv: np.ndarray  # ml/100 ml
    mtt: np.ndarray  # s
    tmax: np.ndarray  # s
    tissue: np.ndarray  # bool: voxels the maps are computed for
    aif_hu: np.ndarray  # (T,) AIF above baseline
    aif_voxels: np.ndarray  # (N, 3) (z, y, x) indices averaged into the AIF
    baseline_frames: int

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"cbf": self.cbf, "cbv": self.cbv, "mtt": self.mtt, "tmax": self.tmax}


def uniform_step(times_s: np.ndarray) -> float:
    """The frame interval of evenly spaced times; BadInputError otherwise."""
    t = np.asarray(times_s, dtype=np.float64)
    if t.size < 3:
        raise BadInputError(f"perfusion needs at least 3 frames, got {t.size}", "give a full perfusion sequence")
    d = np.diff(t)
    if np.any(d <= 0):
        raise BadInputError("frame times must increase for perfusion analysis", "sort the frames by time")
    if not np.allclose(d, d[0], rtol=1e-4, atol=1e-6):
        raise BadInputError(
            f"perfusion analysis needs evenly spaced frames, got intervals from {d.min():g} to {d.max():g} s",
            "fill the sequence to a regular grid first: meddiff inpaint --sequence IN --out OUT --interval 1")
    return float(d[0])


def _voxel_blocks(hu: np.ndarray, chunk: int):
    """(flat voxel slice, (T, n) float64 curves) of ``hu`` (T, Z, Y, X), ``chunk`` voxels at a time: the sequence
    is never converted whole (a float64 copy of it is 4x an int16 sequence, 2x a float32 one)."""
    flat = np.ascontiguousarray(hu).reshape(hu.shape[0], -1)  # a view of a sequence's (contiguous) array
    for start in range(0, flat.shape[1], chunk):
        part = slice(start, start + chunk)
        yield part, np.asarray(flat[:, part], dtype=np.float64)


def select_aif(hu: np.ndarray, times_s: np.ndarray, n_voxels: int = 8, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Automatic AIF: among voxels with a soft-tissue baseline and a strong early bolus, the
    ``n_voxels`` with the highest peak whose time to peak is within 2 s of the earliest.

    Returns the (T,) AIF (HU above baseline) and the (N, 3) voxel indices.
    """
    base = np.asarray(hu[0], dtype=np.float64)
    peak = np.empty(base.shape)
    ttp = np.empty(base.shape)
    for part, curves in _voxel_blocks(hu, chunk):
        conc = curves - base.reshape(-1)[part][None]
        peak.reshape(-1)[part] = conc.max(axis=0)
        ttp.reshape(-1)[part] = times_s[np.argmax(conc, axis=0)]
    candidate = (base > TISSUE_BASELINE_HU[0]) & (base < TISSUE_BASELINE_HU[1])
    if not candidate.any():
        raise BadInputError("no soft-tissue voxels to pick an AIF from", "check that the sequence is a CT perfusion in HU")
    threshold = max(np.percentile(peak[candidate], 99.5), 30.0)
    strong = candidate & (peak >= threshold)
    if not strong.any():
        raise BadInputError("no enhancing artery found for the AIF (no voxel rises 30 HU above baseline)",
                            "give the AIF with --aif-mask, or check that the sequence covers the bolus")
    early = strong & (ttp <= ttp[strong].min() + 2.0)
    idx = np.argwhere(early)
    order = np.argsort(-peak[early])[:n_voxels]
    idx = idx[order]
    aif = (_curves_at(hu, tuple(idx.T)) - base[tuple(idx.T)][None]).mean(axis=1)
    return aif, idx


def _curves_at(hu: np.ndarray, where: tuple) -> np.ndarray:
    """(T, n) float64 curves of the voxels ``where`` (index arrays or a mask)."""
    return np.asarray(hu[(slice(None),) + tuple(where)] if isinstance(where, tuple) else hu[:, where], np.float64)


def _baseline_frames(aif: np.ndarray) -> int:
    """Frames before the bolus arrives (AIF below 10 % of its peak), at least one."""
    above = np.nonzero(aif > 0.1 * aif.max())[0]
    first = int(above[0]) if above.size else 1
    return max(1, first - 1)


def bsvd_residues(aif: np.ndarray, conc: np.ndarray, dt: float, svd_threshold: float) -> np.ndarray:
    """(T, V) flow-scaled residue functions ``k`` of V curves ``conc`` (T, V) by block-circulant SVD."""
    n = aif.shape[0]
    length = 2 * n
    a = np.zeros(length)
    a[:n] = aif
    cols = np.arange(length)
    circ = dt * a[(cols[:, None] - cols[None, :]) % length]
    u, s, vt = np.linalg.svd(circ)
    keep = s >= svd_threshold * s.max()
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    c = np.zeros((length, conc.shape[1]))
    c[:n] = conc
    k = vt.T @ (inv[:, None] * (u.T @ c))
    return k[:n]


def compute_perfusion(seq: Sequence, *, aif_mask: np.ndarray | None = None,
                      svd_threshold: float = DEFAULT_SVD_THRESHOLD, chunk: int = 65536) -> PerfusionMaps:
    """CBF, CBV, MTT and Tmax of a CT perfusion sequence in HU (evenly spaced frames)."""
    if not 0 < svd_threshold < 1:
        raise BadInputError(f"svd threshold must be in (0, 1), got {svd_threshold}", "use e.g. 0.1 (noisy) or 0.02 (clean)")
    dt = uniform_step(seq.times_s)
    hu = seq.array  # in its own dtype: converted to float64 ``chunk`` voxels at a time, never whole
    if hu.dtype.kind == "f" and not all(np.isfinite(frame).all() for frame in hu):
        raise BadInputError("the sequence contains NaN or inf values", "replace them before perfusion analysis")
    if aif_mask is not None:
        aif_mask = np.asarray(aif_mask) != 0
        if aif_mask.shape != seq.frame_shape:
            raise BadInputError(f"AIF mask has shape {aif_mask.shape}, the sequence frames {seq.frame_shape}",
                                "draw the AIF mask on the sequence's grid")
        if not aif_mask.any():
            raise BadInputError("the AIF mask is empty", "mark at least one arterial voxel")
        idx = np.argwhere(aif_mask)
        given = _curves_at(hu, aif_mask)
        aif = (given - given[0][None]).mean(axis=1)  # refined below with the baseline
    else:
        aif, idx = select_aif(hu, seq.times_s, chunk=chunk)
    nb = _baseline_frames(aif)
    shape = seq.frame_shape
    base, peak = np.empty(shape), np.empty(shape)
    for part, curves in _voxel_blocks(hu, chunk):
        b = curves[:nb].mean(axis=0)
        base.reshape(-1)[part] = b
        peak.reshape(-1)[part] = (curves - b[None]).max(axis=0)
    aif = np.clip((_curves_at(hu, tuple(idx.T)) - base[tuple(idx.T)][None]).mean(axis=1), 0.0, None)
    if aif.max() <= 0:
        raise BadInputError("the AIF does not enhance", "give an arterial AIF mask with --aif-mask")
    tissue = (base > TISSUE_BASELINE_HU[0]) & (base < TISSUE_BASELINE_HU[1]) & (peak < VESSEL_ENHANCEMENT_HU)
    cbf, cbv, mtt, tmax = (np.zeros(shape, np.float32) for _ in range(4))
    where = np.nonzero(tissue)
    aif_area = aif.sum() * dt
    for start in range(0, where[0].size, chunk):
        sl = tuple(w[start:start + chunk] for w in where)
        part = _curves_at(hu, sl) - base[sl][None]
        k = bsvd_residues(aif, part, dt, svd_threshold)
        f = np.clip(k.max(axis=0), 0.0, None)
        cbf[sl] = 6000.0 * f
        cbv[sl] = np.clip(100.0 * part.sum(axis=0) * dt / aif_area, 0.0, None)
        tmax[sl] = np.argmax(k, axis=0) * dt
    ok = cbf > 1e-3
    mtt[ok] = 60.0 * cbv[ok] / cbf[ok]
    return PerfusionMaps(cbf, cbv, mtt, tmax, tissue, aif, idx, nb)


def map_errors(maps: dict[str, np.ndarray], truth: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float]:
    """Mean absolute error of each map over ``mask`` (units of the map)."""
    return {name: float(np.mean(np.abs(maps[name][mask] - truth[name][mask]))) for name in ("cbf", "cbv", "mtt", "tmax")}
