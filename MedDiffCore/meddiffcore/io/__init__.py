"""Volume and sequence I/O with exact geometry, and atomic file output.

``Volume.array`` is (z, y, x) like Slicer's ``arrayFromVolume`` and SimpleITK's
``GetArrayFromImage``; ``Volume.ijk_to_ras`` is Slicer's IJK-to-RAS matrix.
"""

from .atomic import atomic_output, atomic_outputs
from .formats import (
    SEQUENCE_EXTENSIONS,
    VOLUME_EXTENSIONS,
    VOLUME_WRITE_EXTENSIONS,
    Segment,
    Segmentation,
    is_dicom_file,
    is_dicom_folder,
    is_segmentation_file,
    read_dicom_sequence,
    read_segmentation,
    read_sequence,
    read_volume,
    write_dicom_series,
    sequence_format,
    volume_files,
    volume_format,
    write_sequence,
    write_volume,
)
from .volume import RAS_TO_LPS, Sequence, Volume, check_finite

#: All extensions this package reads (volumes and sequences).
SUPPORTED_EXTENSIONS = tuple(dict.fromkeys(VOLUME_EXTENSIONS + SEQUENCE_EXTENSIONS))

__all__ = [
    "Volume",
    "Sequence",
    "read_volume",
    "write_volume",
    "read_sequence",
    "read_segmentation",
    "read_dicom_sequence",
    "write_dicom_series",
    "is_segmentation_file",
    "is_dicom_file",
    "is_dicom_folder",
    "Segment",
    "Segmentation",
    "write_sequence",
    "atomic_output",
    "atomic_outputs",
    "check_finite",
    "volume_files",
    "volume_format",
    "sequence_format",
    "VOLUME_EXTENSIONS",
    "VOLUME_WRITE_EXTENSIONS",
    "SEQUENCE_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "RAS_TO_LPS",
]
