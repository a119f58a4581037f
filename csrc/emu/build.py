"""Builds l2fast_emu (the CUDA ops under the host SIMT harness) with ASan and UBSan into build/emu/.

The module is built, not imported: loading it needs libasan first in
the process (LD_PRELOAD; see `make test-cuda-emu`). Ninja rebuilds only what changed.
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
OUT = os.path.join(ROOT, "build", "emu")

extension = CppExtension(
    "l2fast_emu",
    [os.path.join(ROOT, "csrc", *path) for path in (("emu", "module.cpp"), ("emu", "simt.cpp"), ("entry", "checks.cpp"),
                                                       ("entry", "optim_step.cpp"))],
    # -O1 keeps ASan's reports readable and the build short; C++20 for std::barrier.
    # -fno-wrapv undoes the -fwrapv that Python adds, so UBSan reports signed (index) overflow.
    extra_compile_args=["-std=c++20", "-O1", "-g", "-fno-wrapv", "-ffp-contract=off", "-Wno-unknown-pragmas"] + SANITIZE,
    extra_link_args=SANITIZE,
)

os.makedirs(OUT, exist_ok=True)
os.chdir(OUT)  # away from the project's pyproject.toml: this is not the l2fast package
setup(
    name="l2fast_emu",
    packages=[],
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    script_args=["-q", "build_ext", "--force", "--build-lib", ".", "--build-temp", "tmp"],
)
