"""MRML nodes <-> files for the engine, through a work folder per job.

Inputs are written as uncompressed NRRD (fast to write and read, and exact:
the node's IJK-to-RAS goes into the header). Outputs are read back into new
nodes that take the input's geometry, parent transform and place in the
subject hierarchy. The work folder is removed after success and kept after a
failure, so the job file and inputs can be inspected or re-run with
``meddiff run JOB.json``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

#: Largest difference (mm) between the engine's output geometry and the input's that still counts as "the same grid".
GEOMETRY_TOLERANCE_MM = 1e-3


class ExchangeError(Exception):
    """A node could not be written for the engine, or an engine output could not be loaded."""


class WorkFolder:
    """A temporary folder for one job: removed after success, kept after failure for diagnosis."""

    def __init__(self, prefix: str = "meddiff-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))

    def file(self, name: str) -> Path:
        return self.path / name

    def close(self, success: bool) -> None:
        if success:
            shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: dimensions (i, j, k) and the 4x4 IJK-to-RAS matrix (mm)."""

    dimensions: tuple[int, int, int]
    ijk_to_ras: np.ndarray

    @classmethod
    def of(cls, node) -> "Grid":
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        image = node.GetImageData()
        dims = tuple(int(d) for d in image.GetDimensions()) if image is not None else (0, 0, 0)
        return cls(dims, slicer.util.arrayFromVTKMatrix(matrix).copy())

    def same_as(self, other: "Grid") -> bool:
        return self.dimensions == other.dimensions and bool(
            np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=GEOMETRY_TOLERANCE_MM))


def write_volume_node(node, path: Path) -> Path:
    """Write a volume or labelmap node to an uncompressed NRRD file; the scene is not changed."""
    if node is None or node.GetImageData() is None:
        raise ExchangeError(f"node '{node.GetName() if node else None}' holds no image data")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(node):
        raise ExchangeError(f"could not write '{node.GetName()}' to '{path}'")
    return path


def write_segmentation_as_labels(segmentation_node, segment_ids: list[str], path: Path) -> Grid:
    """Write the segments as one label map file, segment ``segment_ids[i]`` as value ``i + 1``; returns its grid.

    Uses the segmentation's whole reference geometry (not the segments' bounding
    box), so the CT covers the grid the user segmented on. A temporary labelmap node is
    added for the export and removed again, so the scene ends as it was.
    """
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "meddiff-export")
    try:
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, None, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not exported:
            raise ExchangeError(f"segments of '{segmentation_node.GetName()}' could not be exported to a label map")
        write_volume_node(labelmap, path)
        return Grid.of(labelmap)
    finally:
        display = labelmap.GetDisplayNode()
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(labelmap)


def read_volume_node(path: Path, scene, name: str, grid: Grid, like=None):
    """Read an engine output into a new scalar volume node on ``grid``, placed and transformed like node ``like``.

    Raises ExchangeError (and adds nothing) when the file is unreadable or not on ``grid``.
    """
    if not Path(path).is_file():
        raise ExchangeError(f"the engine reported output '{path}' but the file does not exist")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)
    if not storage.ReadData(node):
        raise ExchangeError(f"could not read engine output '{path}'")
    read = Grid.of(node)
    if not read.same_as(grid):
        raise ExchangeError(f"engine output '{Path(path).name}' is not on the input's grid "
                            f"(dimensions {read.dimensions} vs {grid.dimensions})")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(grid.ijk_to_ras))  # exact, not float-rounded through the file
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    if like is not None:
        node.SetAndObserveTransformNodeID(like.GetTransformNodeID())
        place_beside(node, like)
    return node


def place_beside(node, reference) -> None:
    """Put ``node`` under the same subject-hierarchy parent (the study) as ``reference``."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if hierarchy is None:
        return
    reference_item = hierarchy.GetItemByDataNode(reference)
    if not reference_item:
        return
    parent = hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node)
    if not item:  # Slicer's subject hierarchy plugins add items for new nodes; the bare MRML library does not
        hierarchy.CreateItem(parent, node)
    else:
        hierarchy.SetItemParent(item, parent)


def show_as_ct(node, window_hu: tuple[float, float]) -> None:
    """Give ``node`` a grey display with a fixed CT window ``(level, width)`` in HU."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    level, width = window_hu
    display.SetWindowLevel(width, level)


def remove_nodes(nodes) -> None:
    """Remove nodes (and their display nodes) that a failed step had added."""
    for node in nodes:
        scene = node.GetScene()
        if scene is None:
            continue
        for i in range(node.GetNumberOfDisplayNodes()):
            display = node.GetNthDisplayNode(i)
            if display is not None:
                scene.RemoveNode(display)
        scene.RemoveNode(node)
