"""PNG previews are real PNGs with the three orthogonal mid-slices in the asked window."""

import numpy as np
import pytest
from PIL import Image

from meddiffcore.preview import Window, orthogonal_slices, preview_array, write_png


@pytest.mark.parametrize("shape, mode", [((35, 20), "L"), ((35, 20, 3), "RGB")])
def test_png_round_trip(tmp_path, shape, mode):
    image = (np.arange(int(np.prod(shape))) % 256).astype(np.uint8).reshape(shape)
    write_png(tmp_path / "a.png", image)
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "a.png") as png:
        assert png.format == "PNG" and png.mode == mode
        assert np.array_equal(np.asarray(png), image)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


def test_png_of_a_volume_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match="expected an"):
        write_png(tmp_path / "a.png", np.zeros((4, 4, 4), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_window_maps_level_to_mid_gray_and_clips():
    window = Window(level=40, width=400)
    values = window.to_uint8(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]))
    assert list(values) == [0, 0, 128, 255, 255]


def test_slices_follow_anisotropic_spacing_and_superior_is_up():
    volume = np.zeros((10, 20, 30), dtype=np.float32)  # z, y, x
    volume[-1] = 1000.0  # most superior slice bright
    axial, coronal, sagittal = orthogonal_slices(volume, spacing_xyz_mm=(1.0, 1.0, 3.0))
    assert axial.shape == (20, 30)
    assert coronal.shape == (30, 30) and sagittal.shape == (30, 20)  # z stretched 3x
    assert coronal[0].mean() > 500 and coronal[-1].mean() < 1


def test_preview_montage_is_large_enough(tmp_path):
    image = preview_array(np.random.default_rng(0).normal(size=(16, 16, 16)), Window(0, 2))
    assert image.shape[0] >= 192 and image.dtype == np.uint8
