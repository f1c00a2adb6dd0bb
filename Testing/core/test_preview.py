"""PNG previews are real PNGs with the three orthogonal mid-slices in the asked window."""

import zlib

import numpy as np

from meddiffcore.preview import Window, orthogonal_slices, preview_array, write_png


def _read_png_gray(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", None, None
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big")
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = [raw[r * (width + 1) + 1:(r + 1) * (width + 1)] for r in range(height)]
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(height, width)


def test_png_round_trip(tmp_path):
    image = (np.arange(35 * 20) % 256).astype(np.uint8).reshape(35, 20)
    write_png(tmp_path / "a.png", image)
    assert np.array_equal(_read_png_gray(tmp_path / "a.png"), image)


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
