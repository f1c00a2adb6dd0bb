"""Choosing the compute device, and describing this machine for ``meddiff info``."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Any, Iterator

from .errors import DeviceError, OutOfMemoryError


def resolve_device(name: str = "auto"):
    """``auto`` picks CUDA when usable, else CPU; ``cuda`` without a usable GPU is an error, not a silent fallback."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but this PyTorch build sees no usable NVIDIA GPU",
                "use --device cpu (slower), or install a CUDA build of PyTorch and an NVIDIA driver",
            )
        device = torch.device(name)
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"GPU {index} does not exist (this machine has {torch.cuda.device_count()})", "pick --device cuda:0")
        capability = torch.cuda.get_device_capability(index)
        arch = f"sm_{capability[0]}{capability[1]}"
        supported = torch.cuda.get_arch_list()
        if supported and not any(a.startswith("sm_") and int(a[3:]) <= capability[0] * 10 + capability[1] for a in supported):
            raise DeviceError(f"the GPU ({arch}) is not supported by this PyTorch build ({', '.join(supported)})",
                              "install a PyTorch build that supports this GPU")
        return device
    raise DeviceError(f"unknown device '{name}'", "use auto, cpu, cuda or cuda:N")


def free_gpu_memory_bytes(device) -> int | None:
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def physical_memory_bytes() -> int | None:
    """This machine's main memory in bytes, or None where the system does not say (checked against before
    allocating outputs whose size the user's parameters decide)."""
    if os.name == "nt":
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total", ctypes.c_ulonglong),
                        ("avail", ctypes.c_ulonglong), ("total_page", ctypes.c_ulonglong),
                        ("avail_page", ctypes.c_ulonglong), ("total_virtual", ctypes.c_ulonglong),
                        ("avail_virtual", ctypes.c_ulonglong), ("avail_extended", ctypes.c_ulonglong)]

        status = _Status()
        status.length = ctypes.sizeof(_Status)
        return int(status.total) if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)) else None
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


@contextlib.contextmanager
def translate_out_of_memory(what: str) -> Iterator[None]:
    """Turn a CUDA or host out-of-memory failure into an OutOfMemoryError with advice."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(
            f"{what} ran out of GPU memory",
            "close other GPU programs, use fewer samples or a smaller patch size, or run with --device cpu",
        ) from exc
    except MemoryError as exc:
        raise OutOfMemoryError(f"{what} ran out of main memory", "use fewer samples or a smaller volume") from exc


def machine_report() -> dict[str, Any]:
    """Versions, devices, CUDA capability, free GPU memory and the model folder."""
    import numpy
    import torch

    from . import __version__
    from .models import meddiff_home, model_dirs

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            gpus.append({
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "total_memory_gb": round(total / 2**30, 2),
                "free_memory_gb": round(free / 2**30, 2),
            })
    return {
        "meddiffcore": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cuda_arch_list": torch.cuda.get_arch_list() if torch.cuda.is_available() else [],
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
        "meddiff_home": str(meddiff_home()),
        "model_folders": [str(p) for p in model_dirs()],
    }
