"""PNG previews: axial, coronal and sagittal mid-slices side by side, in a given window.

Researchers would rather look than read; every job that writes a volume can
write one of these next to it. Slices are shown with square physical pixels
(anisotropic spacing is resampled for display only) and radiological
orientation is not attempted: rows and columns are shown as stored, superior up
in the coronal and sagittal views.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Window:
    """A display window in the volume's units (HU for CT)."""

    level: float
    width: float

    @classmethod
    def from_range(cls, low: float, high: float) -> "Window":
        return cls(level=(low + high) / 2, width=max(high - low, 1e-6))

    def to_uint8(self, values: np.ndarray) -> np.ndarray:
        low = self.level - self.width / 2
        scaled = (values.astype(np.float64) - low) / self.width
        return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


#: Common windows; one place for these facts.
CT_SOFT_TISSUE = Window(level=40, width=400)
CT_ANGIO = Window(level=300, width=800)
CT_BRAIN = Window(level=40, width=80)


def auto_window(array: np.ndarray) -> Window:
    """A window from the 1st-99th percentiles, for images without a natural unit (MRI)."""
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return Window(0.0, 1.0)
    low, high = np.percentile(finite, [1, 99])
    return Window.from_range(float(low), float(high))


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an 8-bit grayscale (H, W) or RGB (H, W, 3) image as PNG, atomically (encoded by Pillow)."""
    from PIL import Image

    from .io.atomic import atomic_output

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    with atomic_output(Path(path)) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")  # uint8 (H, W) -> L, (H, W, 3) -> RGB


def _square_pixels(slice_2d: np.ndarray, row_mm: float, col_mm: float, order: int) -> np.ndarray:
    pixel = min(row_mm, col_mm)
    zoom = (row_mm / pixel, col_mm / pixel)
    if np.allclose(zoom, 1.0):
        return slice_2d
    return ndimage.zoom(slice_2d, zoom, order=order)


def orthogonal_slices(array_zyx: np.ndarray, spacing_xyz_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      order: int = 1) -> list[np.ndarray]:
    """Mid-slices (axial, coronal, sagittal) of a (z, y, x) array, resampled to square pixels, superior up."""
    if array_zyx.ndim != 3:
        raise ValueError(f"a preview needs a 3D (z, y, x) array, got shape {array_zyx.shape}")
    sx, sy, sz = spacing_xyz_mm
    z, y, x = (n // 2 for n in array_zyx.shape)
    axial = _square_pixels(array_zyx[z], sy, sx, order)
    coronal = _square_pixels(array_zyx[::-1, y, :], sz, sx, order)
    sagittal = _square_pixels(array_zyx[::-1, :, x], sz, sy, order)
    return [axial, coronal, sagittal]


def montage(images: list[np.ndarray], gap: int = 4, background: int = 0) -> np.ndarray:
    """Place uint8 images side by side, top-aligned, with a gap."""
    height = max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = np.full((height, width), background, dtype=np.uint8)
    col = 0
    for im in images:
        canvas[: im.shape[0], col: col + im.shape[1]] = im
        col += im.shape[1] + gap
    return canvas


def preview_array(array_zyx: np.ndarray, window: Window, spacing_xyz_mm=(1.0, 1.0, 1.0),
                  min_height: int = 192) -> np.ndarray:
    """The uint8 montage of the three mid-slices of one volume."""
    slices = [window.to_uint8(s) for s in orthogonal_slices(np.asarray(array_zyx, dtype=np.float32), spacing_xyz_mm)]
    image = montage(slices)
    if image.shape[0] < min_height:
        factor = int(np.ceil(min_height / image.shape[0]))
        image = np.kron(image, np.ones((factor, factor), dtype=np.uint8))
    return image


def write_preview(path: str | Path, volumes, window: Window | None = None) -> Path:
    """Write a PNG with one row of three mid-slices per volume (a ``Volume`` or a list of them)."""
    volumes = volumes if isinstance(volumes, (list, tuple)) else [volumes]
    rows = []
    for volume in volumes:
        array = np.asarray(volume.array)
        rows.append(preview_array(array, window or auto_window(array), tuple(volume.spacing)))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]))) for r in rows]
    write_png(path, np.concatenate(padded, axis=0)[:-4])
    return Path(path)
