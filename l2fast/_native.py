"""Finds, checks and loads the native library (l2fast._C), or says why it cannot.

The library uses libtorch's C++ API, whose ABI changes between torch minor versions: a library built
against one torch may fail to load under another or, worse, load and crash later. So the torch (and
CUDA) version that setup.py recorded in _build_info.py is compared with the running torch *before*
the library is loaded, and any failure names the command that rebuilds l2fast for this torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


def rebuild_command() -> str:
    """The command that rebuilds l2fast for the installed torch, as this copy was installed."""
    source = PACKAGE_DIR.parent
    if (source / "setup.py").is_file():  # a source checkout (editable install or in-place build)
        return f"pip install --no-build-isolation -e {source}"
    # --no-cache-dir: pip would otherwise reuse the wheel it cached when it built this sdist last time
    return "pip install --no-build-isolation --no-cache-dir --force-reinstall --no-deps <l2fast sdist or source directory>"


def minor_version(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def version_mismatch(built_torch: str, built_cuda: str | None) -> str | None:
    """Why a library built against torch built_torch (CUDA built_cuda) cannot run here, or None."""
    if minor_version(built_torch) != minor_version(torch.__version__):
        return f"it was built against torch {built_torch} but torch {torch.__version__} is installed"
    running_cuda = torch.version.cuda
    if built_cuda is not None and (running_cuda or "").split(".")[0] != built_cuda.split(".")[0]:
        return f"it was built for CUDA {built_cuda} but this torch has {'CUDA ' + running_cuda if running_cuda else 'no CUDA'}"
    return None


def read_build_info():
    """The (torch, CUDA) versions setup.py recorded, or None for a library built without setup.py."""
    try:
        info = importlib.import_module("l2fast._build_info")
    except ModuleNotFoundError:
        return None
    return info.TORCH_VERSION, info.CUDA_VERSION


def describe(build_info) -> str:
    if build_info is None:
        return "native library loaded (no record of the torch it was built against)"
    built_torch, built_cuda = build_info
    return f"native library loaded, built against torch {built_torch}" + (f" with CUDA {built_cuda}" if built_cuda else "")


def load() -> tuple[bool, str]:
    """Loads l2fast._C (registering torch.ops.l2fast.*). Returns (loaded, a line that says why or why not)."""
    build_info = read_build_info()
    if build_info is not None:
        mismatch = version_mismatch(*build_info)
        if mismatch is not None:
            return False, f"native library not loaded: {mismatch}; rebuild l2fast for this torch: {rebuild_command()}"
    try:
        importlib.import_module("l2fast._C")
    except ModuleNotFoundError as error:
        return False, f"native library not available ({error}); build it with: {rebuild_command()}"
    except ImportError as error:  # e.g. an undefined symbol after a torch upgrade
        return False, f"native library failed to load ({error}); rebuild l2fast for this torch: {rebuild_command()}"
    return True, describe(build_info)
