"""The procedural cardiac phantom: anatomy, HU ranges, coronary trees, seed variation."""

import numpy as np
import pytest
from scipy import ndimage

from meddiffcore.tasks.ctca.labels import CORONARY, LABELS
from meddiffcore.tasks.ctca.phantom import CORONARY_RADIUS_MM, make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(7)


def test_all_labels_present_and_ct_matches_grid(phantom):
    values = set(np.unique(phantom.labels.array).tolist())
    assert values == set(LABELS)
    assert phantom.ct.array.dtype == np.int16
    assert phantom.ct.same_grid(phantom.labels)


def test_hu_ranges_per_class(phantom):
    lab, ct = phantom.labels.array, phantom.ct.array.astype(float)
    for value in (2, 3, 4, 5, 6, 7):  # contrast blood pool and great vessels
        core = ndimage.binary_erosion(lab == value, iterations=2)
        assert core.any()
        assert 290 <= ct[core].mean() <= 460, (LABELS[value], ct[core].mean())
    myo = ndimage.binary_erosion(lab == 1)
    assert 70 <= ct[myo].mean() <= 135
    # lungs and fat: clearly negative; some voxels well below -700 (lung)
    assert (ct[lab == 0] < -700).mean() > 0.1
    # coronary lumen is enhanced above myocardium (partial volume keeps it below the aorta)
    assert ct[myo].mean() + 20 < ct[lab == CORONARY].mean() < ct[ndimage.binary_erosion(lab == 6, iterations=2)].mean() + 30


def test_coronary_trees_branch_and_taper(phantom):
    vessels = {v.name: v for v in phantom.vessels}
    assert {"left_main", "lad", "lcx", "rca"} <= set(vessels)
    branches = [v for v in phantom.vessels if v.parent is not None]
    assert len(branches) >= 4  # LAD and LCx from the left main, plus side branches
    lo, hi = CORONARY_RADIUS_MM
    assert (lo, hi) == (0.75, 2.0)  # diameters 1.5-4 mm
    for v in phantom.vessels:
        assert np.all(v.radii_mm >= lo - 1e-9) and np.all(v.radii_mm <= hi + 1e-9), v.name
        assert np.all(np.diff(v.radii_mm) <= 1e-9), f"{v.name} does not taper"
        if v.parent is not None:  # a branch starts on its parent
            gap = np.linalg.norm(vessels[v.parent].points_mm - v.points_mm[0], axis=1).min()
            assert gap < 1e-6, v.name
    assert vessels["lad"].radii_mm[0] > vessels["lad"].radii_mm[-1] + 0.5


def test_coronary_label_is_thin_and_mostly_connected():
    ph = make_phantom(3, shape=(96, 96, 96), spacing_mm=1.0)
    cor = ph.labels.array == CORONARY
    # inscribed radius of the label at 1 mm spacing stays within the tube size (+ one voxel of discretisation)
    assert ndimage.distance_transform_edt(cor).max() <= CORONARY_RADIUS_MM[1] + 1.0
    components, n = ndimage.label(cor, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    assert n <= 6 and sizes.max() >= 0.5 * cor.sum()  # two trees (left and right), a few clipped pieces at most


def test_seed_variation():
    a, b, a2 = make_phantom(1), make_phantom(2), make_phantom(1)
    assert np.array_equal(a.labels.array, a2.labels.array) and np.array_equal(a.ct.array, a2.ct.array)
    differ = (a.labels.array != b.labels.array).mean()
    assert differ > 0.01
    assert a.hu["blood_left"] != b.hu["blood_left"]
