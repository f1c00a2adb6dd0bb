"""A Slicer segmentation file (``.seg.nrrd`` written by slicer-core's vtkMRMLSegmentationStorageNode) on the command
line: segments are matched to labels by NAME through the one name table of meddiffcore, whatever their order or
stored label values; unmappable and overlapping segments are refused with what and where; the Slicer module
matches names with the same table (read from the model card)."""

import json

import numpy as np
import pytest
import slicer

from MedDiffSlicerLib import ctca
from MedDiffSlicerLib.models import label_names as card_label_names
from MedDiffSlicerLib.models import label_table as card_label_table
from meddiffcore.cli import main as cli_main
from meddiffcore.io import read_segmentation, read_volume, write_volume
from meddiffcore.io.volume import Volume
from meddiffcore.tasks.ctca import labels as core_labels
from slicer_helpers import TINY_MODEL, add_labelmap_node, new_scene, phantom_labels

#: Our label value -> the segment name a user typed (mixed case, spaces, synonyms).
USER_NAMES = {1: "Myocardium", 2: "LA", 3: "left ventricle", 4: "Right Atrium", 5: "heart_ventricle_right",
              6: "Aorta", 7: "pulmonary trunk", 8: "Coronary arteries"}
#: The order the segments were created in: NOT our label order.
CREATION_ORDER = [3, 1, 8, 6, 2, 7, 5, 4]


@pytest.fixture(autouse=True)
def _home(meddiff_home, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(meddiff_home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _segmentation_file(path, labels, ijk_to_ras, names=USER_NAMES, order=CREATION_ORDER, extra=None):
    """Write ``labels`` as a Slicer segmentation whose segment i (stored label value i + 1) is our label order[i]."""
    scene = new_scene()
    stored = np.zeros_like(labels)
    for i, value in enumerate(order):
        stored[labels == value] = i + 1
    labelmap = add_labelmap_node(scene, stored, ijk_to_ras)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    seg = segmentation.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        segment.SetName(names[order[segment.GetLabelValue() - 1]])
    if extra is not None:  # one more segment, overlapping others: Slicer puts it in a second layer
        name, mask = extra
        node = add_labelmap_node(scene, mask.astype(np.uint8), ijk_to_ras, "extra")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(node, segmentation)
        seg.GetNthSegment(seg.GetNumberOfSegments() - 1).SetName(name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation)
    return path


def _synthesize(labels_path, out, *extra):
    return cli_main(["synthesize", "--labels", str(labels_path), "--out", str(out), "--model", TINY_MODEL,
                     "--steps", "2", "--seed", "5", "--progress", "json", *extra])


def _error(capsys) -> dict:
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "error", events[-1]
    return events[-1]


def test_segments_out_of_order_give_the_same_ct_as_the_label_map(tmp_path):
    labels, ijk_to_ras = phantom_labels()
    seg_path = _segmentation_file(tmp_path / "heart.seg.nrrd", labels, ijk_to_ras)
    header = seg_path.read_bytes()[:20000]
    assert b"Segment0_Name:=left ventricle" in header and b"Segment0_LabelValue:=1" in header  # really out of order

    plain = tmp_path / "heart_labels.nrrd"  # double-precision geometry, like the .seg.nrrd
    write_volume(Volume(labels, ijk_to_ras), plain)
    assert _synthesize(plain, tmp_path / "from_labels.nii.gz") == 0
    assert _synthesize(seg_path, tmp_path / "from_segments.nii.gz") == 0
    expected, got = read_volume(tmp_path / "from_labels.nii.gz"), read_volume(tmp_path / "from_segments.nii.gz")
    # the whole reference grid (Slicer crops the stored voxels to the segments), and the same anatomy
    assert got.shape == labels.shape
    np.testing.assert_allclose(got.ijk_to_ras, ijk_to_ras, atol=1e-4)
    np.testing.assert_array_equal(got.array, expected.array)


def test_reader_places_the_cropped_layers_on_the_reference_grid(tmp_path):
    labels, ijk_to_ras = phantom_labels()
    labels[:, :, :3] = 0  # leave a margin that Slicer crops away when it saves
    seg = read_segmentation(_segmentation_file(tmp_path / "heart.seg.nrrd", labels, ijk_to_ras))
    assert seg.shape == labels.shape
    np.testing.assert_allclose(seg.ijk_to_ras, ijk_to_ras, atol=1e-4)
    by_name = {s.name: s for s in seg.segments}
    for value, name in USER_NAMES.items():
        np.testing.assert_array_equal(seg.mask(by_name[name]), labels == value)


def test_unmappable_segment_names_are_named(tmp_path, capsys):
    labels, ijk_to_ras = phantom_labels()
    names = {**USER_NAMES, 4: "Segment_4", 7: "PV stump"}
    seg_path = _segmentation_file(tmp_path / "heart.seg.nrrd", labels, ijk_to_ras, names=names)
    out = tmp_path / "ct.nii.gz"
    assert _synthesize(seg_path, out) == 3
    error = _error(capsys)
    assert "'Segment_4'" in error["message"] and "'PV stump'" in error["message"] and "by name" in error["message"]
    assert "--label-mapping" in error["hint"] and not out.exists()

    # a mapping file keyed by segment names resolves them
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"Segment_4": "right_atrium", "pv stump": "pulmonary_artery"}), encoding="utf-8")
    assert _synthesize(seg_path, out, "--label-mapping", str(mapping)) == 0
    assert read_volume(out).shape == labels.shape


def test_overlapping_segments_say_what_overlaps_where(tmp_path, capsys):
    labels, ijk_to_ras = phantom_labels()
    box = np.zeros_like(labels)
    box[6:9, 8:12, 7:10] = 1
    overlap = (box > 0) & (labels == 3)
    assert overlap.any()
    seg_path = _segmentation_file(tmp_path / "heart.seg.nrrd", labels, ijk_to_ras, extra=("aortic root", box))
    assert b"dimension: 4" in seg_path.read_bytes()[:400]  # a second layer
    out = tmp_path / "ct.nii.gz"
    assert _synthesize(seg_path, out) == 3
    message = _error(capsys)["message"]
    assert "overlap" in message and "'left ventricle' and 'aortic root'" in message
    k, j, i = np.nonzero(box & (labels != 6) & (labels != 0))
    assert f"i {i.min()}-{i.max()}" in message and f"k {k.min()}-{k.max()}" in message
    assert not out.exists()


def test_slicer_module_matches_names_with_the_engines_table(meddiff_home):
    card = json.loads(next(meddiff_home.rglob(f"{TINY_MODEL}.json")).read_text(encoding="utf-8"))
    table, names = card_label_table(card), card_label_names(card)
    mapping = ctca.default_segment_mapping(list(USER_NAMES.values()), table, names)
    assert mapping == {name: core_labels.LABELS[value] for value, name in USER_NAMES.items()}
    assert ctca.default_segment_mapping(["Left  Ventricle!"], table)["Left  Ventricle!"] == "left_ventricle"
    for name in ["Left Ventricle", "  heart_atrium-LEFT ", "Coronary arteries (LAD)"]:
        assert ctca.normalised_name(name) == core_labels.normalised_name(name)
