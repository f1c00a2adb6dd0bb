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

    Uses the segmentation's whole reference geometry (not the segments' bounding box), so the CT
    covers the grid the user segmented on. The export needs a temporary labelmap node, and Slicer's
    export adds a colour table (``<segmentation>_ColorTable``) and display nodes of its own: every
    node the export added is removed again, so the scene ends exactly as it was, whatever happens.
    """
    scene = segmentation_node.GetScene()
    before = _node_ids(scene)
    try:
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "meddiff-export")
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
        for node_id in _node_ids(scene) - before:
            node = scene.GetNodeByID(node_id)
            if node is not None and not node.IsA("vtkMRMLSubjectHierarchyNode"):  # the scene's one hierarchy stays
                scene.RemoveNode(node)


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def read_volume_node(path: Path, scene, name: str, grid: Grid | None, like=None):
    """Read an engine output into a new scalar volume node on ``grid``, placed and transformed like node ``like``.

    ``grid=None`` takes the file's own geometry: for outputs whose grid the
    engine chooses (a reconstruction from a sinogram, a super-resolved or a
    generated volume). Raises ExchangeError (and adds nothing) when the file is
    unreadable or not on ``grid``.
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
    if grid is not None:
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


def show_with_window(node, window: tuple[float, float] | None = None, color_node_id: str = "") -> None:
    """Give ``node`` a display: a fixed window ``(level, width)`` if given (else automatic), a colour table if named."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if window is not None:
        display.SetAutoWindowLevel(False)
        level, width = window
        display.SetWindowLevel(width, level)
    else:
        display.SetAutoWindowLevel(True)
    if color_node_id:
        display.SetAndObserveColorNodeID(color_node_id)


def show_as_ct(node, window_hu: tuple[float, float]) -> None:
    """Give ``node`` a grey display with a fixed CT window ``(level, width)`` in HU."""
    show_with_window(node, window_hu)


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


# -- sequences (4D: one volume per time point) -------------------------------------------------------------------------
def sequence_times(sequence_node) -> list[float]:
    """The index values of a sequence as numbers (seconds for CT perfusion); ExchangeError when one is not a number."""
    values = [sequence_node.GetNthIndexValue(i) for i in range(sequence_node.GetNumberOfDataNodes())]
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ExchangeError(f"sequence '{sequence_node.GetName()}' has non-numeric index values "
                            f"({', '.join(values[:4])}...); frame times in seconds are needed") from None


def sequence_grid(sequence_node) -> Grid:
    """The grid of the sequence's first volume (the engine requires every frame on the same grid)."""
    if sequence_node.GetNumberOfDataNodes() == 0:
        raise ExchangeError(f"sequence '{sequence_node.GetName()}' is empty")
    first = sequence_node.GetNthDataNode(0)
    if not first.IsA("vtkMRMLScalarVolumeNode"):
        raise ExchangeError(f"sequence '{sequence_node.GetName()}' holds {first.GetClassName()} items, not volumes")
    return Grid.of(first)


def write_sequence_node(sequence_node, path: Path) -> Path:
    """Write a volume sequence as an uncompressed ``.seq.nrrd`` (4D NRRD with the index values per frame)."""
    sequence_grid(sequence_node)
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(sequence_node):
        raise ExchangeError(f"could not write sequence '{sequence_node.GetName()}' to '{path}' "
                            "(are all its volumes on the same grid?)")
    return path


def read_sequence_node(path: Path, scene, name: str, grid: Grid | None = None):
    """Read an engine ``.seq.nrrd`` into a new sequence node added to ``scene``; ExchangeError (nothing added) if unusable."""
    if not Path(path).is_file():
        raise ExchangeError(f"the engine reported output '{path}' but the file does not exist")
    node = slicer.vtkMRMLSequenceNode()
    node.SetName(scene.GenerateUniqueName(name))
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    storage.SetScene(scene)
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetNumberOfDataNodes() == 0:
        raise ExchangeError(f"could not read engine output sequence '{path}'")
    if grid is not None:
        read = Grid.of(node.GetNthDataNode(0))
        if not read.same_as(grid):
            raise ExchangeError(f"engine output '{Path(path).name}' is not on the input's grid "
                                f"(dimensions {read.dimensions} vs {grid.dimensions})")
        matrix = slicer.util.vtkMatrixFromArray(grid.ijk_to_ras)
        for i in range(node.GetNumberOfDataNodes()):
            node.GetNthDataNode(i).SetIJKToRASMatrix(matrix)
    scene.AddNode(node)
    return node


def sequences_logic(scene):
    """Slicer's Sequences module logic; outside the application (slicer-core) a logic of our own on ``scene``."""
    modules = getattr(slicer, "modules", None)
    module = getattr(modules, "sequences", None) if modules is not None else None
    if module is not None:
        return module.logic()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    return logic


def browser_of(sequence_node):
    """The first sequence browser that plays ``sequence_node`` (as master or synchronized), else None."""
    scene = sequence_node.GetScene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
        if browser.IsSynchronizedSequenceNodeID(sequence_node.GetID(), True):
            return browser
    return None


def play_together(new_sequence, reference_sequence, name: str):
    """Play ``new_sequence`` in the browser of ``reference_sequence`` (a new browser if it has none); returns the browser.

    The new (denser) sequence becomes the master, so the browser steps through
    every one of its frames and the reference shows its frame at or before each
    time; the reference stays synchronized.
    """
    scene = new_sequence.GetScene()
    logic = sequences_logic(scene)  # registers the browser node class where only slicer-core is loaded
    browser = browser_of(reference_sequence)
    if browser is None:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName(name))
        browser.SetAndObserveMasterSequenceNodeID(reference_sequence.GetID())
    browser.SetAndObserveMasterSequenceNodeID(new_sequence.GetID())
    if not browser.IsSynchronizedSequenceNodeID(reference_sequence.GetID(), True):
        browser.AddSynchronizedSequenceNodeID(reference_sequence.GetID())
    logic.UpdateProxyNodesFromSequences(browser)
    return browser
