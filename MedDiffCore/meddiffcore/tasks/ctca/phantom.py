"""A procedural contrast-enhanced cardiac CT phantom: label map + matching CT, varied by seed.

The phantom is built in millimetres in a heart frame (RAS axes: +x patient
right, +y anterior, +z superior, origin at the volume centre), then placed with a
random rotation, scale and shift, and sampled on any grid (shape, spacing,
orientation). It is the training set of the demo model and the test data of the
CTCA tests, so it is meant to be plausible rather than anatomically exact:

* chambers (LV, RV, LA, RA) as ellipsoids, the LV myocardium as an open shell,
  ascending and descending aorta, pulmonary trunk with both branches;
* left (left main -> LAD + LCx) and right (RCA) coronary trees running in the
  epicardial fat, with 1-3 side branches each, as tubes whose diameter tapers
  from at most 4 mm to 1.5 mm (radius 2.0 -> 0.75 mm);
* CT: contrast blood pool and coronary lumen 300-450 HU (right heart a little
  darker), myocardium ~100 HU, epicardial fat, mediastinum, lungs, spine and
  sternum, partial volume (fractional vessel occupancy and a small blur) and
  correlated noise.

Coronary labels are the tube dilated to at least 0.75 voxel so that thin
vessels stay connected at coarse spacing; the CT uses the true radius, so a
thin vessel is dimmer than the aorta, as in a real scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ...io.volume import Volume, geometry_from_spacing
from .labels import CORONARY

#: Coronary radius range in mm (diameter 1.5-4 mm).
CORONARY_RADIUS_MM = (0.75, 2.0)
DEFAULT_SHAPE = (64, 64, 64)
DEFAULT_SPACING_MM = 2.0


@dataclass
class Vessel:
    name: str
    points_mm: np.ndarray  # (N, 3) RAS, after placement
    radii_mm: np.ndarray  # (N,)
    parent: str | None = None


@dataclass
class Phantom:
    labels: Volume  # uint8, values of labels.LABELS
    ct: Volume  # int16 HU
    vessels: list[Vessel] = field(default_factory=list)
    hu: dict[str, float] = field(default_factory=dict)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(axis) -> np.ndarray:
    """Rows: two unit vectors orthogonal to ``axis`` and ``axis`` itself."""
    w = _unit(axis)
    a = np.array([0.0, 0.0, 1.0]) if abs(w[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = _unit(np.cross(a, w))
    return np.stack([u, np.cross(w, u), w])


def _mat(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``points @ m.T`` for (N, 3) points, component-wise (a BLAS call on (N, 3) is slow under load)."""
    m = np.asarray(m, dtype=np.float64)
    return np.stack([points[:, 0] * m[i, 0] + points[:, 1] * m[i, 1] + points[:, 2] * m[i, 2] for i in range(3)], axis=1)


def _ellipsoid(q: np.ndarray, centre, axes: np.ndarray, radii) -> np.ndarray:
    """sum(((axes @ (q - c)) / r)^2): <= 1 inside. ``q`` (N, 3), ``axes`` rows are unit axes."""
    d = q - np.asarray(centre)
    radii = np.asarray(radii, dtype=np.float64)
    out = np.zeros(len(q))
    for i in range(3):
        out += ((d[:, 0] * axes[i, 0] + d[:, 1] * axes[i, 1] + d[:, 2] * axes[i, 2]) / radii[i]) ** 2
    return out


def _polyline(points, radii, step_mm: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Densely resample a polyline (and its radii) every ``step_mm``."""
    points = np.asarray(points, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1] + 1e-9, step_mm)
    return np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1), np.interp(t, s, radii)


class _Surface:
    """Points on an ellipsoid around both ventricles (the epicardial fat where coronaries run)."""

    def __init__(self, centre, long_axis, radius_long: float, radius_short: float, offset: float) -> None:
        self.c = np.asarray(centre, dtype=np.float64)
        self.axes = _frame(long_axis)
        self.rl, self.rs, self.offset = radius_long + offset, radius_short + offset, offset

    def point(self, t: float, phi: float) -> np.ndarray:
        """t in [-1, 1] from base (-1) to apex (+1) along the long axis; phi around it (radians)."""
        ring = np.sqrt(max(1.0 - t * t, 0.0))
        u, v, w = self.axes
        return self.c + self.rl * t * w + self.rs * ring * (np.cos(phi) * u + np.sin(phi) * v)

    @cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, phi, points) on a coarse grid of the surface, to find a point's parameters."""
        ts, ps = (a.ravel() for a in np.meshgrid(np.linspace(-0.97, 0.97, 40), np.linspace(-np.pi, np.pi, 73), indexing="ij"))
        return ts, ps, np.array([self.point(t, p) for t, p in zip(ts, ps)])

    def phi_towards(self, direction) -> float:
        u, v, _ = self.axes
        d = np.asarray(direction, dtype=np.float64)
        return float(np.arctan2(d @ v, d @ u))


def _tapered(n: int, r_start: float, r_end: float) -> np.ndarray:
    return np.linspace(r_start, r_end, n)


def _walk(surface: _Surface, rng, t0, phi0, dt, dphi, n, jitter=0.04) -> np.ndarray:
    t, phi, pts = t0, phi0, []
    for _ in range(n):
        pts.append(surface.point(float(np.clip(t, -0.97, 0.97)), phi))
        t += dt + rng.normal(0, jitter * 0.5)
        phi += dphi + rng.normal(0, jitter)
    return np.array(pts)


def _coronary_trees(rng, surface: _Surface, root_centre, root_radius, lv_dir, rv_dir) -> list[tuple[str, np.ndarray, np.ndarray, str | None]]:
    rmin, rmax = CORONARY_RADIUS_MM
    vessels: list[tuple[str, np.ndarray, np.ndarray, str | None]] = []
    phi_ant = surface.phi_towards(_unit(np.array([0.0, 1.0, 0.0]) + 0.3 * np.asarray(lv_dir)))
    phi_left = surface.phi_towards(lv_dir)
    phi_right = surface.phi_towards(rv_dir)
    # Left main: from the left side of the aortic root to the top of the anterior groove.
    lm_start = np.asarray(root_centre) + root_radius * _unit(np.asarray(lv_dir) + [0, 0.3, 0])
    lm_end = surface.point(-0.85, phi_ant + 0.35)
    lm_r0 = rng.uniform(1.8, rmax)
    lm = np.stack([lm_start, (lm_start + lm_end) / 2, lm_end])
    vessels.append(("left_main", lm, _tapered(3, lm_r0, lm_r0 * 0.95), None))
    n_lad = 18
    lad = np.vstack([lm_end, _walk(surface, rng, -0.8, phi_ant + 0.3, 1.75 / n_lad, -0.01, n_lad)])
    vessels.append(("lad", lad, _tapered(len(lad), lm_r0 * 0.9, rmin), "left_main"))
    n_lcx = 14
    sign = np.sign(np.sin(phi_left - phi_ant)) or 1.0
    lcx = np.vstack([lm_end, _walk(surface, rng, -0.82, phi_ant + 0.3, 0.015, sign * 2.2 / n_lcx, n_lcx)])
    vessels.append(("lcx", lcx, _tapered(len(lcx), lm_r0 * 0.8, rmin), "left_main"))
    # Right coronary: from the right side of the root around the right AV groove.
    rca_start = np.asarray(root_centre) + root_radius * _unit(np.asarray(rv_dir) + [0, 0.5, 0])
    n_rca = 20
    rca_walk = _walk(surface, rng, -0.85, phi_ant - 0.4, 0.02, -sign * 2.8 / n_rca, n_rca)
    rca = np.vstack([rca_start, rca_walk])
    vessels.append(("rca", rca, _tapered(len(rca), rng.uniform(1.6, rmax), rmin), None))
    # Side branches: diagonals, obtuse marginals, acute marginals.
    for parent_name, count in (("lad", rng.integers(1, 4)), ("lcx", rng.integers(1, 3)), ("rca", rng.integers(1, 3))):
        parent = next(v for v in vessels if v[0] == parent_name)
        for k in range(int(count)):
            idx = int(rng.integers(3, len(parent[1]) - 4))
            start = parent[1][idx]
            r0 = max(rmin, min(parent[2][idx] * 0.75, rmax))
            # find the surface parameters of the start point: search a coarse grid
            ts, ps, cand = surface.grid
            best = int(np.argmin(np.linalg.norm(cand - start, axis=1)))
            t0, p0 = ts[best], ps[best]
            n = int(rng.integers(7, 12))
            walk = _walk(surface, rng, t0, p0, rng.uniform(0.06, 0.1), rng.choice([-1, 1]) * rng.uniform(0.03, 0.08), n)
            pts = np.vstack([start, walk[1:]])
            vessels.append((f"{parent_name}_branch{k + 1}", pts, _tapered(len(pts), r0, rmin), parent_name))
    return vessels


def make_phantom(seed: int = 0, shape=DEFAULT_SHAPE, spacing_mm=DEFAULT_SPACING_MM, ijk_to_ras: np.ndarray | None = None,
                 with_ct: bool = True) -> Phantom:
    """A phantom sampled on a (z, y, x) grid.

    The grid is ``shape`` at ``spacing_mm`` (a number or (x, y, z)) centred on the
    heart, or any ``ijk_to_ras`` (oblique, anisotropic). Same seed, same phantom.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    if ijk_to_ras is None:
        sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
        extent = (np.array(shape[::-1]) - 1) * sp
        ijk_to_ras = geometry_from_spacing(sp, -extent / 2)
    ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
    kk, jj, ii = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    ras = _mat(ijk, ijk_to_ras[:3, :3]) + ijk_to_ras[:3, 3]
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)

    # Placement: heart frame -> RAS.
    scale = rng.uniform(0.88, 1.06)
    rot = Rotation.from_euler("xyz", rng.uniform(-8, 8, 3), degrees=True)
    shift = rng.uniform(-4, 4, 3)
    rmat = rot.as_matrix()
    q = _mat(ras - shift, rmat.T) / scale  # voxel centres in the heart frame

    def place(p):
        return _mat(np.atleast_2d(np.asarray(p, dtype=np.float64)) * scale, rmat) + shift

    jit = lambda: rng.uniform(0.9, 1.1)  # noqa: E731
    long_axis = _unit([-0.6 + rng.normal(0, 0.05), 0.45, -0.6])
    lv_axes = _frame(long_axis)
    lv_c = np.array([-12.0, -2.0, -8.0])
    lv_r = np.array([15.0 * jit(), 15.0 * jit(), 28.0 * jit()])
    wall = rng.uniform(8.0, 11.0)
    base_cut = -0.72 * lv_r[2]  # the myocardium is open at the base (valves)
    rv_c = lv_c + np.array([20.0, 14.0, 2.0])
    rv_r = np.array([17.0 * jit(), 12.0 * jit(), 25.0 * jit()])
    la_c = np.array([-8.0, -24.0, 16.0]) + rng.normal(0, 1.5, 3)
    la_r = np.array([19.0 * jit(), 13.0 * jit(), 13.0 * jit()])
    ra_c = np.array([20.0, -8.0, 14.0]) + rng.normal(0, 1.5, 3)
    ra_r = np.array([15.0 * jit(), 15.0 * jit(), 19.0 * jit()])
    eye = np.eye(3)

    labels = np.zeros(len(q), dtype=np.uint8)
    lv_local = _mat(q - lv_c, lv_axes)
    f_lv = _ellipsoid(q, lv_c, lv_axes, lv_r)
    f_epi = _ellipsoid(q, lv_c, lv_axes, lv_r + wall)
    labels[_ellipsoid(q, ra_c, eye, ra_r) <= 1] = 4
    labels[_ellipsoid(q, la_c, eye, la_r) <= 1] = 2
    labels[(_ellipsoid(q, rv_c, lv_axes, rv_r) <= 1) & (f_epi > 1)] = 5
    labels[(f_epi <= 1) & (lv_local[:, 2] >= base_cut)] = 1
    labels[(f_lv <= 1)] = 3

    # Great vessels: tubes along polylines (radius per point), aorta and pulmonary artery.
    root = lv_c + lv_axes[2] * base_cut * 1.1 + np.array([4.0, 2.0, 6.0])
    ao_r = rng.uniform(12.0, 14.5)
    ascending = [root, root + [1.0, 2.0, 20.0], root + [0.0, 0.0, 45.0], root + [-6.0, -10.0, 70.0], root + [-10.0, -24.0, 90.0]]
    desc_x, desc_y = -16.0 + rng.normal(0, 2), -40.0 + rng.normal(0, 2)
    descending = [[desc_x, desc_y, -90.0], [desc_x, desc_y, 90.0]]
    pa_root = rv_c + np.array([-6.0, 6.0, 18.0])
    pa_r = rng.uniform(11.0, 13.0)
    pa_bif = pa_root + np.array([-12.0, -10.0, 26.0])
    tubes = [
        (6, ascending, [ao_r + 1.5, ao_r, ao_r, ao_r * 0.95, ao_r * 0.9]),
        (6, descending, [ao_r * 0.8, ao_r * 0.8]),
        (7, [pa_root, pa_bif], [pa_r, pa_r]),
        (7, [pa_bif, pa_bif + [-30.0, -20.0, 4.0], pa_bif + [-60.0, -30.0, 0.0]], [pa_r * 0.75] * 3),
        (7, [pa_bif, pa_bif + [28.0, -12.0, -2.0], pa_bif + [60.0, -22.0, -6.0]], [pa_r * 0.75] * 3),
    ]
    for value, pts, radii in tubes:
        dense, r = _polyline(pts, radii, step_mm=1.0)
        tree = cKDTree(dense)
        d, idx = tree.query(q, distance_upper_bound=r.max() + 1.0)
        inside = np.isfinite(d) & (d <= r[np.minimum(idx, len(r) - 1)])
        paintable = (labels != 1) if value == 6 else (labels == 0)  # the aorta passes the LV outflow; the PA stays outside
        labels[inside & paintable] = value

    # Coronary trees on a surface around both ventricles, 2.5 mm outside the epicardium.
    vent_c = lv_c + np.array([8.0, 6.0, 0.0])
    surface = _Surface(vent_c, long_axis, lv_r[2] + wall, max(lv_r[0] + wall + 8.0, 26.0), offset=2.5)
    lv_dir = _unit(lv_c - vent_c + [-0.01, 0, 0])
    rv_dir = _unit(rv_c - vent_c)
    trees = _coronary_trees(rng, surface, root, ao_r, lv_dir, rv_dir)
    dense_pts, dense_r = [], []
    vessels = []
    for name, pts, radii, parent in trees:
        vessels.append(Vessel(name, place(pts), np.asarray(radii, dtype=np.float64), parent))
        p, r = _polyline(pts, radii, step_mm=0.25)
        dense_pts.append(p)
        dense_r.append(r)
    dense_pts_a = np.concatenate(dense_pts)
    dense_r_a = np.concatenate(dense_r)  # radii are physical, not scaled with the heart
    ctree = cKDTree(place(dense_pts_a))
    d, idx = ctree.query(ras, distance_upper_bound=6.0)
    near = np.isfinite(d)
    r_near = np.zeros(len(ras))
    r_near[near] = dense_r_a[idx[near]]
    min_label_r = 0.75 * float(spacing.max())
    coronary = near & (d <= np.maximum(r_near, min_label_r)) & ((labels == 0) | (labels == 1))
    labels[coronary] = CORONARY
    labels_zyx = labels.reshape(shape)
    label_volume = Volume(labels_zyx, ijk_to_ras, {"phantom_seed": int(seed)})
    if not with_ct:
        return Phantom(label_volume, None, vessels)  # type: ignore[arg-type]

    # --- CT
    hu = {
        "blood_left": rng.uniform(330, 450), "blood_right": rng.uniform(300, 400), "myocardium": rng.uniform(85, 125),
        "fat": rng.uniform(-120, -70), "soft": rng.uniform(30, 55), "lung": rng.uniform(-900, -800),
        "bone": rng.uniform(450, 700), "noise": rng.uniform(12, 28),
    }
    ct = np.full(len(q), hu["soft"])
    lung = (_ellipsoid(q, [-62, -15, 0], eye, [44, 58, 120]) <= 1) | (_ellipsoid(q, [64, -15, 0], eye, [42, 58, 120]) <= 1)
    ct[lung] = hu["lung"]
    fat = _ellipsoid(q, vent_c, lv_axes, [surface.rs + 5, surface.rs + 5, surface.rl + 5]) <= 1
    ct[fat] = hu["fat"]
    ct[_ellipsoid(q, [0, -62, 0], eye, [16, 14, 200]) <= 1] = hu["bone"]
    ct[_ellipsoid(q, [0, 58, 0], eye, [12, 6, 200]) <= 1] = hu["bone"] * 0.8
    rv_wall = (_ellipsoid(q, rv_c, lv_axes, rv_r + 3.0) <= 1) & (labels == 0)
    ct[rv_wall] = hu["myocardium"] * 0.9
    value_hu = {1: hu["myocardium"], 2: hu["blood_left"], 3: hu["blood_left"], 4: hu["blood_right"],
                5: hu["blood_right"], 6: hu["blood_left"], 7: hu["blood_right"]}
    for value, h in value_hu.items():
        ct[labels == value] = h
    ct = ndimage.gaussian_filter(ct.reshape(shape), sigma=0.6)  # partial volume at every edge
    # Partial volume of the coronary lumen: occupancy of the voxel by the true-radius tube.
    occ = np.zeros(len(ras))
    h = float(np.cbrt(np.prod(spacing)))
    occ[near] = np.clip((r_near[near] + h / 2 - d[near]) / h, 0.0, 1.0)
    occ = occ.reshape(shape)
    occ[(labels_zyx != 0) & (labels_zyx != 1) & (labels_zyx != CORONARY)] = 0.0
    ct = ct * (1 - occ) + hu["blood_left"] * occ
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 0.7)
    ct = ct + noise / noise.std() * hu["noise"]
    ct_volume = Volume(np.clip(np.round(ct), -1024, 3071).astype(np.int16), ijk_to_ras.copy(), {"phantom_seed": int(seed)})
    return Phantom(label_volume, ct_volume, vessels, hu)
