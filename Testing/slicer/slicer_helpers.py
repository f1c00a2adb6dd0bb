"""Shared by the Slicer-side tests (Testing/slicer, Testing/gui): a tiny engine model, phantom label nodes, a scene.

The model is a random-weight tiny CTCA UNet saved like a real one (safetensors
+ card with sha256) into a temporary MEDDIFF_HOME, so the real engine worker
runs end to end in a few seconds on a CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SLICER_MODULES = ROOT / "MedDiffSlicer"
TINY_MODEL = "ctca-slicer-tiny"


def add_module_paths() -> None:
    """Make MedDiffSlicerLib (and the module folders) importable, as Slicer's module paths do."""
    for path in (SLICER_MODULES, SLICER_MODULES / "CTCASynthesizer"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def save_tiny_ctca_model(home: Path, name: str = TINY_MODEL) -> Path:
    """Build the tiny model with the CTCA task's own config/model/card functions; returns the card path."""
    import torch

    from meddiffcore.models import save_model
    from meddiffcore.nets import UNetConfig
    from meddiffcore.tasks.ctca.config import CTCAConfig, DataConfig
    from meddiffcore.tasks.ctca.model import build_network, cond_channels, model_card

    net_cfg = UNetConfig(spatial_dims=3, in_channels=1, out_channels=2, base_channels=8, channel_mult=(1, 2),
                         num_res_blocks=1, attention_levels=(), middle_attention=False, norm_groups=4,
                         spade_channels=cond_channels("lr"), spade_hidden=8)
    config = CTCAConfig(name=name, stage="lr", network=net_cfg, data=DataConfig(shape=(16, 16, 16), spacing_mm=8.0))
    torch.manual_seed(0)
    net = build_network(config)
    with torch.no_grad():  # zero-initialised output layers would make every sample the same constant
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return save_model(home / "models", model_card(config), net.state_dict()).card_path


def engine_env(home: Path) -> dict[str, str]:
    """Environment of the engine process: the test's model folder, one CPU thread (the machine is shared)."""
    env = dict(os.environ)
    env.update({"MEDDIFF_HOME": str(home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def phantom_labels(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A (z, y, x) uint8 phantom label map on an oblique, anisotropic grid, and its 4x4 IJK-to-RAS (mm)."""
    from meddiffcore.io.volume import geometry_from_spacing
    from meddiffcore.tasks.ctca.phantom import make_phantom

    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    shape = (20, 24, 22)
    spacing = np.array([6.0, 5.5, 6.5])
    centre = direction @ ((np.array(shape[::-1]) - 1) / 2 * spacing)
    ijk_to_ras = geometry_from_spacing(spacing, -centre + [4.0, -3.0, 7.0], direction)
    phantom = make_phantom(seed, shape, ijk_to_ras=ijk_to_ras, with_ct=False)
    return np.asarray(phantom.labels.array, dtype=np.uint8), np.asarray(phantom.labels.ijk_to_ras)


def new_scene():
    """A fresh MRML scene set as ``slicer.mrmlScene`` (Slicer does this at startup), with segmentation converters."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {r.GetClassName() for r in factory.GetConverterRules() or ()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule.__name__ not in registered:
            factory.RegisterConverterRule(rule())
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    return scene


def add_labelmap_node(scene, array: np.ndarray, ijk_to_ras: np.ndarray, name: str = "heart labels"):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node


def scene_snapshot(scene) -> list[tuple[str, str]]:
    """(class, name) of every node: what "the scene is unchanged" compares."""
    return sorted((scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName() or "")
                  for i in range(scene.GetNumberOfNodes()))


@pytest.fixture(scope="session")
def meddiff_home(tmp_path_factory):
    """A MEDDIFF_HOME holding the tiny model (import this fixture into a conftest)."""
    home = tmp_path_factory.mktemp("meddiff_home")
    save_tiny_ctca_model(home)
    return home
