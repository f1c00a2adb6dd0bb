"""Choosing the compute device, and describing this machine for ``meddiff info``."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
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


#: Phrases of the out-of-memory failures that torch raises as a plain RuntimeError (the CPU allocator,
#: older CUDA builds, MPS), matched in lower case.
_OOM_PHRASES = ("can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed: ``torch.OutOfMemoryError``, numpy's or Python's
    ``MemoryError``, or torch's CPU allocator failing as a ``RuntimeError`` ("DefaultCPUAllocator: can't
    allocate memory")."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _OOM_PHRASES)


def _on_gpu(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "cuda" in str(exc).lower()


def out_of_memory_error(exc: BaseException, what: str, hint: str | None = None) -> OutOfMemoryError:
    """The OutOfMemoryError for the allocation failure ``exc`` while doing ``what``; ``hint`` replaces the
    general advice with the task's own (e.g. the option that lowers its batch)."""
    if _on_gpu(exc):
        return OutOfMemoryError(f"{what} ran out of GPU memory",
                                hint or "close other GPU programs, use fewer samples or a smaller patch size, "
                                        "or run with --device cpu")
    return OutOfMemoryError(f"{what} ran out of main memory ({str(exc).splitlines()[0][:160]})",
                            hint or "close other programs, use fewer samples or a smaller volume")


@contextlib.contextmanager
def translate_out_of_memory(what: str, hint: str | None = None) -> Iterator[None]:
    """Turn any out-of-memory failure (see :func:`is_out_of_memory`) into an OutOfMemoryError with advice."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory_error(exc, what, hint) from exc


def _linux_meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """Memory this process's cgroup (v2) may still take, or None where there is no limit or no cgroup."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def _address_space_headroom() -> int | None:
    """Address space left under this process's RLIMIT_AS (``ulimit -v``), or None where none is set."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
        return soft
    except (ImportError, OSError, ValueError):
        return None


def free_host_memory_bytes() -> int | None:
    """Main memory this process can still use: the least of the system's available memory, its cgroup's
    headroom and its address-space limit (each where the OS tells it); None where none is known."""
    known = [v for v in (_linux_meminfo_available(), _cgroup_headroom(), _address_space_headroom()) if v is not None]
    return min(known) if known else None


def free_memory_bytes(device) -> int | None:
    """Free memory of ``device``: GPU memory for CUDA, main memory otherwise (None where unknown)."""
    if getattr(device, "type", str(device)) == "cuda":
        return free_gpu_memory_bytes(device)
    return free_host_memory_bytes()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, or the CPU quota of its cgroup), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def free_cores(load: float | None = None, cores: int | None = None) -> int:
    """Cores not already busy: the usable cores less the one-minute load average (rounded), at least 1.

    On a shared machine more threads than free cores make a job slower, not faster (threads wait for
    each other at every parallel region); where the OS reports no load average the usable cores count.
    """
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - int(round(load))))


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads to ``threads``, or by default to :func:`free_cores` (never more than torch's
    own default, the physical cores); returns the number set."""
    import torch

    global _TORCH_DEFAULT_THREADS
    if _TORCH_DEFAULT_THREADS is None:
        _TORCH_DEFAULT_THREADS = torch.get_num_threads()
    if threads is None:
        threads = min(free_cores(), _TORCH_DEFAULT_THREADS)
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    global _JOB_THREADS
    _JOB_THREADS = threads
    return threads


def job_threads() -> int:
    """The CPU threads the running job was given (:func:`set_threads`; 1 before any job): what NumPy/SciPy work
    outside torch, e.g. resampling slab by slab (:mod:`meddiffcore.io.resample`), may run in parallel."""
    return _JOB_THREADS


#: torch's own thread count before :func:`set_threads` first changed it.
_TORCH_DEFAULT_THREADS: int | None = None
_JOB_THREADS = 1


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
        "usable_cores": usable_cores(),
        "free_cores": free_cores(),
        "meddiff_home": str(meddiff_home()),
        "model_folders": [str(p) for p in model_dirs()],
    }
