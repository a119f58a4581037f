"""Builds l2fast._C: a CUDAExtension when torch has CUDA and a toolkit is found, else a CppExtension.

The extension uses only Python's limited API (one cp310-abi3 wheel serves every Python >= 3.10) but
libtorch's full C++ API, so a build works only with the torch minor version it was compiled against:
the build records that version in l2fast/_build_info.py and pins it in the wheel's dependencies.

Environment:
  L2FAST_CUDA=0/1        force the CPU-only or the CUDA build (default: CUDA when torch has CUDA and
                         a toolkit is found; the GPU's presence is never consulted)
  TORCH_CUDA_ARCH_LIST   GPU architectures; unset and no GPU visible: DEFAULT_CUDA_ARCHS
  L2FAST_DEBUG=1         keep debug info (-g, nvcc -lineinfo); the default strips it

torch must be installed before building, and the build must see it:
`pip install --no-build-isolation .` (an isolated build would fetch a second torch).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

# For a build that sees no GPU: Turing (T4), Ampere (sm_80 code also runs on 8.6 and 8.9), Hopper, and
# PTX that newer GPUs compile when the library loads.
DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0+PTX"

NEEDS_TORCH = (
    "l2fast: building the native library needs torch installed first, and the build must see it.\n"
    "  install torch (for example `pip install torch`), then build without build isolation:\n"
    "    pip install --no-build-isolation .        (or: pip wheel --no-build-isolation .)\n"
    "  an isolated build environment has no torch: it would download a second one and build against\n"
    "  a torch that is not the one you run."
)

# Commands that need torch: they compile the extension, or write a wheel's metadata (pip's first step,
# so an isolated build stops there, before it resolves dependencies), which pins the torch version.
# sdist and egg_info need none.
TORCH_COMMANDS = {"build", "build_ext", "bdist_wheel", "bdist", "install", "develop", "editable_wheel", "dist_info"}


def env_flag(name: str) -> bool:
    value = os.environ.get(name, "")
    if value not in ("", "0", "1"):
        raise SystemExit(f"l2fast: {name} must be 0 or 1, got {value!r}")
    return value == "1"


def build_cuda(torch, cuda_home) -> bool:
    if os.environ.get("L2FAST_CUDA", ""):
        return env_flag("L2FAST_CUDA")
    return torch.version.cuda is not None and cuda_home is not None


def cuda_arch_list(torch) -> str | None:
    """The arch list to build for: the user's, torch's choice for the visible GPUs, or our default.

    torch derives the list from the visible GPUs and fails (IndexError) when there are none.
    """
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.device_count() > 0:
        return None
    return DEFAULT_CUDA_ARCHS


def compile_args(cuda: bool, debug: bool) -> dict:
    """Compiler flags in one place. Python's own CFLAGS carry -g; -g0 (last wins) drops debug info."""
    # -ffp-contract=off: no multiply-add contraction, so every x86 clone of a CPU loop rounds alike and
    # a result is the same bits on every machine. -fno-math-errno: sqrt need not set errno (results are
    # unchanged), so loops that take a square root (the Adam step) can be vectorized. -fno-trapping-math:
    # nothing here reads floating-point exception flags, so a comparison may be evaluated on both sides
    # of a select; without it GCC keeps the step loops' comparisons (sign, NaN-propagating max) as
    # branches and leaves those loops scalar. Results are the same bits. vect-max-version-for-alias-checks:
    # the step loops over many arrays (Adam with amsgrad, an anchor and its Fisher: seven) need more
    # run-time overlap checks than GCC's default allows before it vectorizes a loop.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
           "--param=vect-max-version-for-alias-checks=64", "-g" if debug else "-g0"]
    args = {"cxx": cxx}
    if cuda:
        args["nvcc"] = ["-O3"] + (["-lineinfo"] if debug else [])
    return args


def extension(torch, cuda: bool):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    layers = ("dispatch", "entry", "cpu")  # math/ is headers only
    sources = ["csrc/l2fast.cpp"] + [path for layer in layers for path in sorted(glob.glob(f"csrc/{layer}/*.cpp"))]
    options = dict(
        extra_compile_args=compile_args(cuda, env_flag("L2FAST_DEBUG")),
        extra_link_args=["-fopenmp"],
        py_limited_api=True,  # torch then defines Py_LIMITED_API=3.10 and skips libtorch_python
    )
    if not cuda:
        return CppExtension("l2fast._C", sources, **options)
    archs = cuda_arch_list(torch)
    if archs is not None and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        print(f"l2fast: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building for {archs}", file=sys.stderr)
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return CUDAExtension("l2fast._C", sources + sorted(glob.glob("csrc/cuda/*.cu")), **options)


def torch_requirement(torch) -> str:
    """The torch minor version this build works with (its C++ ABI changes between minors)."""
    major, minor = torch.__version__.split(".")[:2]
    return f"torch=={major}.{minor}.*"


def build_ext_class(torch, cuda: bool):
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension):
        """torch's BuildExtension that also writes _build_info.py beside the built library."""

        def run(self):
            super().run()
            for ext in self.extensions:
                target = self.get_ext_fullpath(ext.name)
                write_build_info(os.path.dirname(target), torch, cuda)
                remove_shadowing_builds(target)

    return BuildExt


def write_build_info(package_dir: str, torch, cuda: bool) -> None:
    cuda_version = torch.version.cuda if cuda else None
    with open(os.path.join(package_dir, "_build_info.py"), "w") as f:
        f.write(
            '"""Written by setup.py when the native library was built: what it was built against."""\n'
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"CUDA_VERSION = {cuda_version!r}\n"
        )


def remove_shadowing_builds(target: str) -> None:
    # A _C.cpython-3xx-*.so left by an older, non-abi3 build would be imported before _C.abi3.so.
    for stale in glob.glob(os.path.join(os.path.dirname(target), "_C.*.so")):
        if os.path.abspath(stale) != os.path.abspath(target):
            os.remove(stale)


def main():
    try:
        import torch
    except ImportError:
        if TORCH_COMMANDS & set(sys.argv[1:]):
            raise SystemExit(NEEDS_TORCH)
        torch = None  # sdist or metadata only: nothing to compile

    ext_modules, cmdclass, requires = [], {}, ["torch>=2.4", "numpy"]
    if torch is not None:
        from torch.utils.cpp_extension import CUDA_HOME

        cuda = build_cuda(torch, CUDA_HOME)
        ext_modules, cmdclass = [extension(torch, cuda)], {"build_ext": build_ext_class(torch, cuda)}
        requires = [torch_requirement(torch), "numpy"]
    setup(
        packages=find_packages(include=["l2fast", "l2fast.*"]),
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        install_requires=requires,
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
