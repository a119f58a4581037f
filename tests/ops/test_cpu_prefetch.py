"""The CPU span loops keep their software prefetch in the built library.

GCC deletes a call whose only statements are prefetches unless it was inlined first, and a branch
in the loop can leave it scalar (docs/cpu.md, "Software prefetch"); neither changes a result, so no
other test would notice. This one reads the library's machine code: every x86-64 clone of the loops
that stream memory must contain a prefetch instruction.
"""
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import l2fast

pytestmark = [
    pytest.mark.skipif(l2fast.backend() == "reference", reason="needs the native library"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86-64 machine code"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump"),
]

# Parts ("..." between parts that must all appear) of the demangled names of the span loops' float32 instances (sums; penalty gradient; decay;
# Adam and SGD with momentum), plain and with a bfloat16 anchor and fisher (its own prefetched streams).
BF16_ANCHOR = "l2fast::cpu::AnchorOf<c10::BFloat16, true> >("
LOOPS = [
    "cpu::reduce_span<float, true, false>(",
    "cpu::grad_span<float, true, false, true, l2fast::cpu::NoAnchor>(",
    "cpu::scale_span<float, true, l2fast::cpu::NoAnchor>(",
    "cpu::(anonymous namespace)::adam_span<float, false,",
    "cpu::(anonymous namespace)::sgd_span<float, true, false,",
    f"cpu::penalty_sums_span<float, {BF16_ANCHOR}",
    f"cpu::grad_span<float, true, true, true, {BF16_ANCHOR}",
    f"cpu::scale_span<float, true, {BF16_ANCHOR}",
    f"cpu::(anonymous namespace)::adam_span<float, false,...{BF16_ANCHOR}",
    f"cpu::(anonymous namespace)::sgd_span<float, true, false,...{BF16_ANCHOR}",
]



def function_bodies(library: Path) -> dict[str, str]:
    """Disassembly of every function in the library, by its demangled name."""
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(library)], check=True,
                          capture_output=True, text=True).stdout
    bodies = {}
    for block in re.split(r"\n(?=[0-9a-f]+ <)", text):
        header = re.match(r"[0-9a-f]+ <(.*)>:", block)
        if header:
            bodies[header.group(1)] = block
    return bodies


@pytest.fixture(scope="module")
def bodies():
    library = next(Path(l2fast.__file__).parent.glob("_C*.so"))
    return function_bodies(library)


@pytest.mark.parametrize("loop", LOOPS)
def test_every_clone_of_a_span_loop_prefetches(bodies, loop):
    # The ISA clones; not the resolver that picks one, nor a clone's cold (rarely run) part.
    clones = {name: body for name, body in bodies.items()
              if all(part in name for part in loop.split("...")) and "[clone ." in name and "resolver" not in name and ".cold" not in name}
    assert clones, f"no clones of {loop} in the library"
    missing = [name for name, body in clones.items() if "prefetch" not in body]
    assert not missing, f"clones without a prefetch instruction: {missing}"

