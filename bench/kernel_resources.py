"""Registers and local memory of every CUDA kernel in a built l2fast library, from ``cuobjdump
-res-usage``: a table per GPU architecture, and exit status 1 when a kernel has a stack frame (STACK
> 0: registers spilled to local memory, or an array indexed at run time; either costs memory traffic
the kernels are designed without). Run by CI after the CUDA build and by bench/gpu.sh's build stage.

    python bench/kernel_resources.py path/to/_C.abi3.so

cuobjdump is taken from PATH, else from the CUDA toolkit (CUDA_HOME), else from the copy that ships
with triton (a dependency of torch's CUDA wheels).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

FUNCTION = re.compile(r"^\s*Function (\S+):\s*$")
USAGE = re.compile(r"(\w+(?:\[\d+\])?):(\d+)")


def find_cuobjdump() -> str:
    candidates = [shutil.which("cuobjdump"), Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"]
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin:
        candidates.append(Path(triton.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise SystemExit("kernel_resources: cuobjdump not found (PATH, CUDA_HOME/bin, triton's copy)")


def demangle(names: list[str]) -> dict[str, str]:
    """Short readable names: c++filt's, without argument lists and the l2fast::cuda namespace."""
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    readable = [re.sub(r"l2fast::cuda::(\(anonymous namespace\)::)?", "", line) for line in out.splitlines()]
    return {n: re.sub(r"\((?!anonymous).*\)$", "", r) or n for n, r in zip(names, readable)}


def kernels(library: str) -> list[tuple[str, str, dict[str, int]]]:
    """(architecture, kernel, {REG, STACK, SHARED, LOCAL, ...}) of every kernel with machine code."""
    text = subprocess.run([find_cuobjdump(), "-res-usage", library], capture_output=True, text=True, check=True).stdout
    rows, arch, name = [], None, None
    for line in text.splitlines():
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif FUNCTION.match(line):
            name = FUNCTION.match(line).group(1)
        elif name is not None and "REG:" in line:
            rows.append((arch, name, {k: int(v) for k, v in USAGE.findall(line)}))
            name = None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", help="the built extension, e.g. l2fast/_C.abi3.so")
    rows = kernels(parser.parse_args().library)
    if not rows:
        print("kernel_resources: no kernel machine code (SASS) in the library", file=sys.stderr)
        return 1
    names = demangle(sorted({name for _, name, _ in rows}))
    width = max(len(names[name]) for _, name, _ in rows)
    print(f"{'arch':7} {'REG':>4} {'STACK':>6} {'SHARED':>7}  kernel")
    for arch, name, usage in sorted(rows, key=lambda r: (r[0], names[r[1]])):
        print(f"{arch:7} {usage.get('REG', 0):4} {usage.get('STACK', 0):6} {usage.get('SHARED', 0):7}  {names[name]:{width}}")
    framed = [(arch, names[name], usage["STACK"]) for arch, name, usage in rows if usage.get("STACK", 0) > 0]
    for arch, name, stack in framed:
        print(f"kernel_resources: {name} ({arch}) has a {stack}-byte stack frame: spills or a run-time-indexed array",
              file=sys.stderr)
    print(f"{len(rows)} kernels, {len(framed)} with a stack frame")
    return 1 if framed else 0


if __name__ == "__main__":
    sys.exit(main())
