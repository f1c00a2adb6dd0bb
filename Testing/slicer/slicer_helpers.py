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


#: Module folders (each one scripted module), importable as Slicer's module paths make them.
MODULE_FOLDERS = ("CTCASynthesizer", "CTPTemporalInpaint", "SparseViewRecon", "VolumeGenerator")
#: Tiny random-weight models of the other tasks, installed next to the CTCA one.
TINY_CTP, TINY_RECON_CT, TINY_RECON_MRI, TINY_WDM, TINY_SR = "ctp-tiny", "recon-ct-tiny", "recon-mri-tiny", "wdm-tiny", "sr-tiny"
TINY_CWDM = "cwdm-tiny"


def add_module_paths() -> None:
    """Make MedDiffSlicerLib (and the module folders) importable, as Slicer's module paths do."""
    for path in (SLICER_MODULES, *(SLICER_MODULES / m for m in MODULE_FOLDERS), ROOT / "Testing" / "tasks"):
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


def save_tiny_ctp_model(home: Path, name: str = TINY_CTP) -> None:
    """A random-weight CTP inpainting network built with the task's own config and card functions."""
    import dataclasses

    import torch

    from meddiffcore.models import save_model
    from meddiffcore.tasks.ctp.config import CTPConfig, default_network
    from meddiffcore.tasks.ctp.train import TASK

    torch.manual_seed(0)
    config = CTPConfig(name=name)
    config.network = dataclasses.replace(default_network(), base_channels=8, channel_mult=(1, 2),
                                         down_strides=((1, 2, 2),), norm_groups=4)
    net = TASK.build_network(config)
    with torch.no_grad():  # the output layer starts at zero; make the network do something
        for p in net.out.parameters():
            p.normal_(0, 0.05)
    save_model(home / "models", TASK.model_card(config), net.state_dict())


def save_tiny_models(home: Path) -> None:
    """Every task's tiny model, with the task tests' own builders (Testing/tasks)."""
    from recon_helpers import install_tiny_recon_model
    from volume_helpers import install_tiny_sr_cascade, install_tiny_wdm

    save_tiny_ctca_model(home)
    save_tiny_ctp_model(home)
    install_tiny_recon_model(home, TINY_RECON_CT, "ct")
    install_tiny_recon_model(home, TINY_RECON_MRI, "mri")
    install_tiny_wdm(home, TINY_WDM, loud=False)
    install_tiny_wdm(home, TINY_CWDM, conditional=True, loud=False)
    install_tiny_sr_cascade(home, TINY_SR)


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
    """A fresh MRML scene set as ``slicer.mrmlScene``, as Slicer's at startup: segmentation converters, a subject hierarchy."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {r.GetClassName() for r in factory.GetConverterRules() or ()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule.__name__ not in registered:
            factory.RegisterConverterRule(rule())
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # Slicer's scene always has its hierarchy
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


@pytest.fixture(scope="session", autouse=True)
def python_slicer_launcher(tmp_path_factory):
    """``PythonSlicer`` on PATH for the whole session: a launcher stand-in that, like Slicer's, runs the real
    interpreter as its child and forwards no signals; the modules find it as they find Slicer's."""
    from python_slicer_launcher import install

    launcher = install(tmp_path_factory.mktemp("slicer-bin"))
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(launcher.parent), old_path])
    yield launcher
    os.environ["PATH"] = old_path


@pytest.fixture(scope="session")
def meddiff_home(tmp_path_factory):
    """A MEDDIFF_HOME holding every task's tiny model (import this fixture into a conftest)."""
    home = tmp_path_factory.mktemp("meddiff_home")
    add_module_paths()
    save_tiny_models(home)
    return home


def add_ctp_sequence(scene, frames: int = 7, every: int = 3, name: str = "perfusion", slices: int = 4, size: int = 16):
    """A CT perfusion phantom sampled every ``every`` s from 2 s on, as a sequence node on an oblique grid (HU, int16)."""
    import slicer

    from meddiffcore.io import Volume
    from meddiffcore.tasks.ctp.phantom import make_ctp_phantom

    phantom = make_ctp_phantom(7, slices=slices, size=size, frames=frames * every)
    ijk_to_ras = Volume.from_spacing(np.zeros((slices, size, size)), (0.9, 0.8, 5.0), (10.0, -20.0, 33.0),
                                     [[0, -1, 0], [1, 0, 0], [0, 0, 1]]).ijk_to_ras
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    sequence.SetIndexType(sequence.NumericIndex)
    for index in range(0, frames * every, every):
        frame = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(frame, np.rint(phantom.sequence.array[index]).astype(np.int16))
        frame.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
        sequence.SetDataNodeAtValue(frame, f"{phantom.sequence.times_s[index] + 2.0:g}")
    return sequence, ijk_to_ras
