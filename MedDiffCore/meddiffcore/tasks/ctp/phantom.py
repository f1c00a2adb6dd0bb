"""A brain CT perfusion phantom with ground-truth perfusion maps.

A slab of ``slices`` axial slices through a head: skull, grey and white matter,
deep grey nuclei, ventricles and a sulcal CSF rim, arteries (MCA and ACA
segments) and the superior sagittal sinus. Contrast follows the indicator-dilution
model used by CT perfusion software:

* arterial input function (AIF): a gamma variate
  ``a(t) = A ((t - t0) / tp)^alpha exp(alpha (1 - (t - t0) / tp))`` for ``t > t0``
  (peak ``A`` HU above baseline at ``t0 + tp``) plus a small recirculation bump;
* tissue: ``C(t) = f * (a conv R)(t)`` with ``f = CBF / 6000`` (1/s, CBF in
  ml/100 ml/min) and the delayed exponential residue function
  ``R(t) = exp(-(t - d) / MTT)`` for ``t >= d`` (0 before): ``Tmax = d`` (s),
  ``CBV = 100 f MTT`` (ml/100 ml), so ``MTT = 60 CBV / CBF`` (s). The haematocrit
  correction is taken as 1 (the maps are what deconvolution of these curves gives);
* an infarct core (CBF and CBV strongly reduced) and a penumbra (CBF reduced,
  CBV kept, Tmax delayed by several seconds) in one MCA territory;
* Gaussian noise (HU) added to every frame independently.

The convolution is integrated exactly for the exponential kernel on a 0.1 s grid
(recursive filter, trapezoidal input), then sampled at the frame times.
Everything is drawn from ``numpy.random.default_rng(seed)``: a seed gives the
same phantom on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddiffcore.errors import BadInputError
from meddiffcore.io import Sequence, Volume

#: Label values of the tissue label map written with a phantom.
LABELS = {0: "background", 1: "skull", 2: "csf", 3: "grey matter", 4: "white matter", 5: "artery", 6: "vein"}
#: Label values of the lesion map.
LESION_LABELS = {0: "normal", 1: "infarct core", 2: "penumbra"}

#: Baseline (unenhanced) HU per tissue label.
BASELINE_HU = {0: -1000.0, 1: 1200.0, 2: 8.0, 3: 40.0, 4: 28.0, 5: 45.0, 6: 45.0}

FIELD_OF_VIEW_MM = 220.0
SLICE_THICKNESS_MM = 5.0
FINE_STEP_S = 0.1


@dataclass
class AIFParams:
    """Gamma-variate arterial input function (HU above baseline)."""

    t0_s: float
    tp_s: float
    alpha: float
    peak_hu: float
    recirculation: float = 0.08

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return self._gv(t, self.t0_s, self.tp_s, self.peak_hu) + self._gv(
            t, self.t0_s + self.tp_s + 9.0, 2.0 * self.tp_s, self.recirculation * self.peak_hu)

    def _gv(self, t, t0, tp, peak):
        s = np.clip((t - t0) / tp, 0.0, None)
        with np.errstate(divide="ignore"):
            out = peak * np.exp(self.alpha * (np.log(np.where(s > 0, s, 1.0)) + 1.0 - s))
        return np.where(s > 0, out, 0.0)


@dataclass
class CTPPhantom:
    """A phantom sequence (HU, 1 s frames by default) and its ground truth."""

    sequence: Sequence
    cbf: np.ndarray  # ml/100 ml/min, (z, y, x)
    cbv: np.ndarray  # ml/100 ml
    mtt: np.ndarray  # s
    tmax: np.ndarray  # s
    labels: np.ndarray  # uint8, LABELS
    lesion: np.ndarray  # uint8, LESION_LABELS
    aif: AIFParams
    info: dict = field(default_factory=dict)
    noise_free: np.ndarray | None = None
    """(T, z, y, x) float32 HU before the noise: what a noise-free scanner would show (for evaluation)."""

    def truth_volumes(self) -> dict[str, Volume]:
        """Ground-truth maps as volumes on the sequence's grid."""
        m = self.sequence.ijk_to_ras
        return {
            "cbf": Volume(self.cbf.astype(np.float32), m.copy(), {"unit": "ml/100ml/min"}),
            "cbv": Volume(self.cbv.astype(np.float32), m.copy(), {"unit": "ml/100ml"}),
            "mtt": Volume(self.mtt.astype(np.float32), m.copy(), {"unit": "s"}),
            "tmax": Volume(self.tmax.astype(np.float32), m.copy(), {"unit": "s"}),
            "labels": Volume(self.labels, m.copy()),
            "lesion": Volume(self.lesion, m.copy()),
        }

    @property
    def perfused(self) -> np.ndarray:
        """Voxels with a tissue curve (grey and white matter, lesion included)."""
        return (self.labels == 3) | (self.labels == 4)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], scale: float) -> np.ndarray:
    """A smooth random field in [-1, 1] (sum of a few random low-frequency cosines)."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    out = np.zeros(shape)
    for _ in range(6):
        k = rng.normal(0, scale, 3) * np.array([0.3, 1.0, 1.0])
        out += np.cos(np.pi * (k[0] * z + k[1] * y + k[2] * x) + rng.uniform(0, 2 * np.pi))
    return out / 6.0 * 1.5


def tissue_curves(aif: AIFParams, times_s: np.ndarray, flow_per_s: np.ndarray, mtt_s: np.ndarray,
                  delay_s: np.ndarray) -> np.ndarray:
    """(T, V) concentration curves (HU) of V voxels: ``f * (aif conv R)`` sampled at ``times_s``."""
    times_s = np.asarray(times_s, dtype=np.float64)
    h = FINE_STEP_S
    n_fine = int(np.ceil(times_s.max() / h)) + 1
    decay = np.exp(-h / mtt_s)
    y = np.zeros_like(flow_per_s)
    x_prev = aif(0.0 - delay_s)
    out = np.zeros((len(times_s), flow_per_s.size))
    sample_steps = np.rint(times_s / h).astype(int)
    want = {int(s): i for i, s in enumerate(sample_steps)}
    if 0 in want:
        out[want[0]] = 0.0
    for n in range(1, n_fine):
        x = aif(n * h - delay_s)
        y = decay * y + 0.5 * h * (x + decay * x_prev)
        x_prev = x
        if n in want:
            out[want[n]] = flow_per_s * y
    return out


def make_ctp_phantom(seed: int = 0, *, slices: int = 8, size: int = 128, frames: int | None = None,
                     interval_s: float = 1.0, noise_hu: float | None = None) -> CTPPhantom:
    """Draw a phantom. ``frames`` defaults to 40-60 (drawn); ``noise_hu`` to 1-3 HU (drawn); 0 gives a noise-free one."""
    if slices < 1 or size < 16:
        raise BadInputError(f"phantom size {slices} x {size} x {size} is too small", "use at least 1 slice of 16 x 16")
    if interval_s <= 0:
        raise BadInputError(f"interval must be positive, got {interval_s}", "give the frame interval in seconds, e.g. 1")
    rng = np.random.default_rng(seed)
    n_frames = int(frames) if frames is not None else int(rng.integers(40, 61))
    if n_frames < 2:
        raise BadInputError(f"a phantom needs at least 2 frames, got {n_frames}", "use --frames 40 or more")
    noise = float(rng.uniform(1.0, 3.0)) if noise_hu is None else float(noise_hu)

    shape = (slices, size, size)
    zc = np.linspace(-1, 1, slices) if slices > 1 else np.zeros(1)
    yc = np.linspace(-1, 1, size)
    z, y, x = np.meshgrid(zc, yc, yc, indexing="ij")
    px = 2.0 / size

    # head outline: a rotated ellipse shrinking slightly away from the slab centre
    theta = rng.uniform(-0.15, 0.15)
    xr = np.cos(theta) * x - np.sin(theta) * y
    yr = np.sin(theta) * x + np.cos(theta) * y
    ax, ay = rng.uniform(0.72, 0.8), rng.uniform(0.86, 0.94)
    shrink = 1.0 - 0.06 * z**2
    r_head = np.sqrt((xr / (ax * shrink)) ** 2 + (yr / (ay * shrink)) ** 2)
    skull_t = rng.uniform(0.06, 0.09)
    labels = np.zeros(shape, np.uint8)
    labels[r_head < 1.0] = 1
    brain = r_head < 1.0 - skull_t
    r_brain = r_head / (1.0 - skull_t)
    texture = _smooth_field(rng, shape, 2.0)
    labels[brain] = 3
    labels[brain & (r_brain < 0.74 + 0.06 * texture)] = 4
    for sx in (-1, 1):  # deep grey nuclei
        d = ((xr - sx * 0.27) / 0.1) ** 2 + ((yr - 0.02) / 0.14) ** 2
        labels[brain & (d < 1)] = 3
    vent_w = rng.uniform(0.05, 0.09)
    for sx in (-1, 1):  # lateral ventricles
        d = ((xr - sx * 0.11) / vent_w) ** 2 + ((yr + 0.05) / 0.24) ** 2
        labels[brain & (d < 1)] = 2
    labels[brain & (r_brain > 0.97)] = 2  # sulcal CSF rim

    # vessels: ACA pair and MCA segments (arteries), superior sagittal sinus (vein)
    artery = np.zeros(shape, bool)
    r_v = max(0.022, 0.75 * px)
    for sx in (-1, 1):
        artery |= (np.hypot(xr - sx * 0.05, yr + 0.5) < r_v)
        mid = np.abs(z) <= (0.35 if slices > 2 else 1.0)
        # MCA: a segment from near the midline out to the sylvian fissure
        px0, py0, px1, py1 = sx * 0.08, -0.12, sx * 0.55, -0.2
        t = np.clip(((xr - px0) * (px1 - px0) + (yr - py0) * (py1 - py0)) / ((px1 - px0) ** 2 + (py1 - py0) ** 2), 0, 1)
        artery |= mid & (np.hypot(xr - (px0 + t * (px1 - px0)), yr - (py0 + t * (py1 - py0))) < r_v)
    artery &= brain
    vein = (np.hypot(xr, yr - (ay * shrink * (1 - skull_t) - 0.05)) < max(0.035, px)) & (labels > 0)
    labels[artery] = 5
    labels[vein] = 6

    # lesion in one MCA territory: a wedge of the hemisphere
    side = float(rng.choice([-1.0, 1.0]))
    ang = np.arctan2(-yr, side * xr)  # 0 along the lateral axis of the affected side
    centre = rng.uniform(-0.3, 0.3)
    half = rng.uniform(0.5, 0.8)
    wedge = (np.abs(ang - centre) < half) & (r_brain > 0.3)
    core = (np.abs(ang - centre) < half * rng.uniform(0.35, 0.55)) & (r_brain > rng.uniform(0.5, 0.65)) & (r_brain < 0.95)
    perfused = (labels == 3) | (labels == 4)
    lesion = np.zeros(shape, np.uint8)
    lesion[perfused & wedge] = 2
    lesion[perfused & core] = 1

    # perfusion parameters
    gm, wm = labels == 3, labels == 4
    cbf = np.zeros(shape)
    cbv = np.zeros(shape)
    delay = np.zeros(shape)
    tex = 1.0 + 0.1 * _smooth_field(rng, shape, 3.0)
    cbf[gm] = rng.uniform(52, 68)
    cbv[gm] = rng.uniform(3.6, 4.6)
    cbf[wm] = rng.uniform(20, 28)
    cbv[wm] = rng.uniform(1.8, 2.5)
    cbf *= tex
    cbv *= tex ** 0.5
    delay[perfused] = rng.uniform(0.0, 1.0) + 0.3 * (tex[perfused] - 1.0) / 0.1
    delay = np.clip(delay, 0.0, None)
    pen, cor = lesion == 2, lesion == 1
    cbf[pen] *= rng.uniform(0.35, 0.5)
    cbv[pen] *= rng.uniform(0.9, 1.05)
    delay[pen] = rng.uniform(5.0, 8.0) + 0.5 * (tex[pen] - 1.0) / 0.1
    cbf[cor] *= rng.uniform(0.12, 0.2)
    cbv[cor] *= rng.uniform(0.3, 0.45)
    delay[cor] = rng.uniform(4.0, 7.0) + 0.5 * (tex[cor] - 1.0) / 0.1
    mtt = np.zeros(shape)
    mtt[perfused] = 60.0 * cbv[perfused] / cbf[perfused]

    aif = AIFParams(t0_s=float(rng.uniform(4.0, 10.0)), tp_s=float(rng.uniform(3.5, 6.0)),
                    alpha=float(rng.uniform(2.5, 4.0)), peak_hu=float(rng.uniform(250.0, 450.0)))
    times = np.arange(n_frames, dtype=np.float64) * float(interval_s)

    base = np.zeros(shape, np.float64)
    for lab, hu in BASELINE_HU.items():
        base[labels == lab] = hu
    base[labels == 1] += 150.0 * texture[labels == 1]
    base[brain] += 1.5 * texture[brain]
    hu = np.repeat(base[None], n_frames, axis=0)
    idx = np.nonzero(perfused)
    conc = tissue_curves(aif, times, cbf[idx] / 6000.0, mtt[idx], delay[idx])
    hu[(slice(None),) + idx] += conc
    hu[:, artery] += aif(times)[:, None]
    vein_aif = AIFParams(aif.t0_s + 5.0, aif.tp_s * 1.6, aif.alpha, aif.peak_hu * 0.7, aif.recirculation)
    hu[:, vein] += vein_aif(times)[:, None]
    noise_free = hu.astype(np.float32)
    if noise > 0:
        hu += rng.normal(0.0, noise, hu.shape)

    spacing = (FIELD_OF_VIEW_MM / size, FIELD_OF_VIEW_MM / size, SLICE_THICKNESS_MM)
    origin = (-FIELD_OF_VIEW_MM / 2, -FIELD_OF_VIEW_MM / 2, -SLICE_THICKNESS_MM * (slices - 1) / 2)
    seq = Sequence(hu.astype(np.float32), Volume.from_spacing(np.zeros(shape, np.uint8), spacing, origin).ijk_to_ras,
                   times, {"phantom": "ctp", "seed": int(seed)})
    tmax = np.where(perfused, delay, 0.0)
    info = {"seed": int(seed), "frames": n_frames, "interval_s": float(interval_s), "noise_hu": noise,
            "lesion_side": "left" if side < 0 else "right",
            "aif": {"t0_s": aif.t0_s, "tp_s": aif.tp_s, "alpha": aif.alpha, "peak_hu": aif.peak_hu}}
    return CTPPhantom(seq, cbf, cbv, mtt, tmax, labels, lesion, aif, info, noise_free)
