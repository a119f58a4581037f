"""Builds l2fast_emu (the CUDA ops under the host SIMT harness) with ASan and UBSan into build/emu/.

Run from the repository root. The module is built, not imported: loading it needs libasan first in
the process (LD_PRELOAD; see `make test-cuda-emu`). Ninja rebuilds only what changed.
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
OUT = os.path.join("build", "emu")

extension = CppExtension(
    "l2fast_emu",
    [os.path.join("csrc", "emu", "module.cpp"), os.path.join("csrc", "emu", "simt.cpp"),
     os.path.join("csrc", "common", "checks.cpp")],
    # -O1 keeps ASan's reports readable and the build short; C++20 for std::barrier.
    extra_compile_args=["-std=c++20", "-O1", "-g", "-ffp-contract=off"] + SANITIZE,
    extra_link_args=SANITIZE,
)

setup(
    name="l2fast_emu",
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    script_args=["-q", "build_ext", "--force", "--build-lib", OUT, "--build-temp", os.path.join(OUT, "tmp")],
)
