"""Builds l2fast._C: a CUDAExtension when torch has CUDA and a toolkit is found, else a CppExtension.

L2FAST_CUDA=0/1 forces the choice. The GPU's presence is never consulted: a CUDA build can be made
on a machine without one. Install with `pip install --no-build-isolation .` after torch.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def build_cuda() -> bool:
    forced = os.environ.get("L2FAST_CUDA", "")
    if forced not in ("", "0", "1"):
        raise SystemExit(f"L2FAST_CUDA must be 0 or 1, got {forced!r}")
    if forced:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = ["csrc/l2fast.cpp"] + sorted(glob.glob("csrc/common/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    compile_args = {"cxx": ["-O3", "-fopenmp", "-ffp-contract=off"]}  # no FMA contraction: same bits on every x86 level
    if build_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        compile_args["nvcc"] = ["-O3", "-lineinfo"]
        return CUDAExtension("l2fast._C", sources, extra_compile_args=compile_args, extra_link_args=["-fopenmp"])
    return CppExtension("l2fast._C", sources, extra_compile_args=compile_args, extra_link_args=["-fopenmp"])


setup(
    packages=find_packages(include=["l2fast", "l2fast.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
