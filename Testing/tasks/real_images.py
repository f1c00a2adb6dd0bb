"""Real images that ship inside packages the tests install, as 2D arrays in their own units.

Not phantoms: a CT slice in HU and an MR slice in raw scanner units from pydicom's test files, an EPI slice
from nibabel's test data, and the MNI152 T1 template from nilearn (skipped where nilearn is missing).
Each is (H, W) float32, square, with a side that is a power of two (cropped at the centre).
"""

from __future__ import annotations

import os

import numpy as np


def _centre_square(a: np.ndarray, side: int) -> np.ndarray:
    y0, x0 = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
    return a[y0:y0 + side, x0:x0 + side]


def ct_small_hu() -> np.ndarray:
    """pydicom's CT_small.dcm, 128 x 128, in HU (stored value x slope + intercept)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return (ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def mr_small() -> np.ndarray:
    """pydicom's MR_small.dcm, 64 x 64, raw scanner units (no rescale in the file)."""
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)


def nibabel_epi() -> np.ndarray:
    """The middle axial slice of the first volume of nibabel's example4d.nii.gz (an EPI), centre 64 x 64."""
    import nibabel

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "example4d.nii.gz")
    a = np.asarray(nibabel.load(path).dataobj[..., 0], dtype=np.float32)  # (x, y, z)
    return _centre_square(a[:, :, a.shape[2] // 2].T, 64).astype(np.float32)


def mni_t1() -> np.ndarray:
    """The middle axial slice of nilearn's MNI152 T1 template (2 mm), centre 64 x 64 (ImportError without nilearn)."""
    from nilearn.datasets import load_mni152_template

    a = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)  # (x, y, z)
    return _centre_square(a[:, :, a.shape[2] // 2].T, 64).astype(np.float32)


def real_images() -> dict[str, np.ndarray]:
    """Every image above that can be loaded here, by a short description."""
    images = {"pydicom CT_small (HU)": ct_small_hu(), "pydicom MR_small (scanner units)": mr_small(),
              "nibabel example4d EPI": nibabel_epi()}
    try:
        images["nilearn MNI152 T1"] = mni_t1()
    except ImportError:
        pass
    return images


def area_down(a: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> (H / factor, W / factor) by averaging factor x factor blocks."""
    h, w = a.shape
    return a.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3)).astype(np.float32)
