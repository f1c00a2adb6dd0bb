"""The label table, mapping files and label validation."""

import json

import numpy as np
import pytest

from meddiffcore.errors import BadInputError, ConfigError
from meddiffcore.tasks.ctca.labels import LABELS, label_table, load_mapping, one_hot, to_label_array


def test_table_is_totalsegmentator_order_plus_coronaries():
    assert LABELS == {0: "background", 1: "myocardium", 2: "left_atrium", 3: "left_ventricle", 4: "right_atrium",
                      5: "right_ventricle", 6: "aorta", 7: "pulmonary_artery", 8: "coronary_arteries"}
    assert label_table()["8"] == "coronary_arteries"


def test_json_and_csv_mappings(tmp_path):
    j = tmp_path / "map.json"
    j.write_text(json.dumps({"0": 0, "205": "heart_myocardium", "420": "coronary_arteries", "13": 6}))
    assert load_mapping(j) == {0: 0, 205: 1, 420: 8, 13: 6}
    c = tmp_path / "map.csv"
    c.write_text("source,target\n0,background\n1,left_ventricle\n2,8\n")
    assert load_mapping(c) == {0: 0, 1: 3, 2: 8}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": "spleen"}))
    with pytest.raises(ConfigError, match="spleen"):
        load_mapping(bad)


def test_mapping_applied_and_unmapped_values_named():
    arr = np.array([[[0, 205], [420, 0]]])
    out = to_label_array(arr, {0: 0, 205: 1, 420: 8})
    assert out.tolist() == [[[0, 1], [8, 0]]] and out.dtype == np.uint8
    with pytest.raises(BadInputError, match="205"):
        to_label_array(arr, {0: 0, 420: 8})


def test_bad_label_arrays_are_named():
    with pytest.raises(BadInputError, match="unknown label values 9, 42"):
        to_label_array(np.array([0, 1, 9, 42]))
    with pytest.raises(BadInputError, match="non-integer values \\(1.5\\)"):
        to_label_array(np.array([0.0, 1.0, 1.5]))
    with pytest.raises(BadInputError, match="NaN"):
        to_label_array(np.array([0.0, np.nan]))
    with pytest.raises(BadInputError, match="empty"):
        to_label_array(np.zeros((4, 4, 4), np.uint8))
    assert to_label_array(np.array([0.0, 3.0, 8.0])).tolist() == [0, 3, 8]


def test_one_hot():
    oh = one_hot(np.array([[[0, 8]]]))
    assert oh.shape == (9, 1, 1, 2) and oh[8, 0, 0, 1] == 1 and oh.sum() == 2
