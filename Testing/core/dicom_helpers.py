"""Helpers of the DICOM tests: oblique grids and DICOM series written with pydicom (one file per slice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from meddiffcore.io.volume import RAS_TO_LPS, geometry_from_spacing

ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root


def oblique_geometry(shape_zyx=(12, 20, 18), spacing=(1.3, 1.1, 2.5)):
    """ijk_to_ras of an oblique, anisotropic grid whose K axis is the slice normal (right-handed), as DICOM's."""
    a, b = np.deg2rad(25), np.deg2rad(-15)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rz @ rx
    centre = direction @ ((np.array(shape_zyx[::-1]) - 1) / 2 * np.array(spacing))
    return geometry_from_spacing(spacing, -centre + [5.0, -8.0, 12.0], direction)


def write_series(folder: Path, array: np.ndarray, ijk_to_ras: np.ndarray, *, series_uid=None, intercept=0.0,
                 modality="CT", description="phantom", names=None, acquisition_s=None, first_instance=1, study_uid=None) -> str:
    """Write a (z, y, x) int array as a DICOM series, one file per slice (file names shuffled), with pydicom.

    ``acquisition_s``: the AcquisitionTime (seconds of the day) of every slice, for time series."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = RAS_TO_LPS @ ijk_to_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = series_uid or generate_uid(ROOT)
    study = study_uid or generate_uid(ROOT)
    order = np.random.default_rng(0).permutation(array.shape[0])
    for n, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(ROOT)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesDescription, ds.PatientName, ds.PatientID = modality, description, "Phantom^Heart", "P1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series_uid, int(k) + first_instance
        if acquisition_s is not None:
            hh, rest = divmod(float(acquisition_s), 3600.0)
            mm, ss = divmod(rest, 60.0)
            ds.AcquisitionTime = f"{int(hh):02d}{int(mm):02d}{ss:09.6f}"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row_dir, col_dir])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", "1"
        ds.PixelData = (array[k].astype(np.int32) - int(intercept)).astype("<i2").tobytes()
        name = names[n] if names else f"IM{n:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return series_uid
