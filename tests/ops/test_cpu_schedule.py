"""CPU results do not depend on the schedule: threads take chunks from a shared counter, so which thread
runs which chunk changes from call to call, yet every op gives the same bits at 1, 2 and 4 threads
(4 oversubscribes a 2-core machine), with chunks handed out last first (L2FAST_CPU_GRAB_ORDER=reverse,
read when the library loads, so it is set in a second process), with another process busy on a core
(which makes calls leave a thread out for a while: csrc/cpu/schedule.h), and from several Python threads
at once.

The inputs span many magnitudes, so float64 sums folded in any other order (per thread, say) differ.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import l2fast  # noqa: F401  (loads torch.ops.l2fast)

if __name__ != "__main__":
    pytestmark = pytest.mark.skipif(l2fast.backend() == "reference", reason="needs the native library")

OPS = torch.ops.l2fast
CHUNK = 1 << 18  # csrc/cpu/chunks.h kChunk
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Whole chunks, a ragged tail, a run of small tensors grabbed together, and an empty tensor.
SHAPES = [(3 * CHUNK + 5,), (40, 1000), (2 * CHUNK,), (7,), (0,), (257, 129)] + [(3000,)] * 300


def inputs(dtype):
    g = torch.Generator().manual_seed(12)
    spread = 4.0 if dtype == torch.float16 else 8.0  # float16 overflows past 65504
    params, grads = [], []
    for shape in SHAPES:
        params.append((torch.randn(shape, generator=g, dtype=torch.float64) * torch.randn(shape, generator=g).mul(spread).exp()).to(dtype))
        grads.append(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))
    return params, grads


def every_op(dtype):
    """Each op's outputs (values and written tensors), from fresh inputs."""
    params, grads = inputs(dtype)
    n = len(params)
    coeffs = [0.5 + k / n for k in range(n)]
    out = {
        "sq_norm": OPS.sq_norm(params, coeffs, False),
        "sq_norm per tensor": OPS.sq_norm(params, [1.0], True),
        "l1_norm": OPS.l1_norm(params, coeffs, False),
        "penalty": OPS.penalty(params, coeffs, [1e-3]),
        "penalty_grad": torch.cat([t.flatten() for t in OPS.penalty_grad(params, torch.tensor(0.25), [1e-2], [1e-3])]),
    }
    out["add_penalty_grad_"] = OPS.add_penalty_grad_(params, grads, [1e-2], coeffs)
    out["add_penalty_grad_ grads"] = torch.cat([g.flatten() for g in grads])
    out["decay_"] = OPS.decay_(params, [1e-3], coeffs)
    out["decay_ params"] = torch.cat([p.flatten() for p in params])
    exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    out["adam_step_"] = OPS.adam_step_(params, grads, exp_avgs, exp_avg_sqs, [], steps, [1e-3], [0.9], [0.999], [1e-8],
                                       [1e-2], [1e-3], [1e-2], [1e-2], False, None, None, None)
    out["adam_step_ params"] = torch.cat([p.flatten() for p in params])
    out["sgd_step_"] = OPS.sgd_step_(params, grads, [], [1e-2], [0.0], [0.0], [0], [1e-2], [1e-3], [0.0], [1e-2],
                                     False, False, None, None, None)
    out["sgd_step_ params"] = torch.cat([p.flatten() for p in params])
    return out


def all_dtypes(op_results):
    return {(str(dtype), name): value for dtype in DTYPES for name, value in op_results(dtype).items()}


def all_results(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return all_dtypes(every_op)
    finally:
        torch.set_num_threads(before)


def bits(t):
    return t.reshape(-1).contiguous().view(torch.uint8)


def assert_same_bits(got, want, what):
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(bits(got[key]), bits(want[key])), f"{key} differs {what}"


def in_second_process(tmp_path, env, threads):
    out = tmp_path / "results.pt"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, **env, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, os.path.abspath(__file__), str(out), str(threads)], env=env, check=True, cwd=root)
    return torch.load(out)


@pytest.fixture(scope="module")
def one_thread():
    return all_results(1)


@pytest.mark.slow
@pytest.mark.parametrize("threads", [2, 4])
def test_same_bits_at_any_thread_count(one_thread, threads):
    assert_same_bits(all_results(threads), one_thread, f"between 1 and {threads} threads")


@pytest.mark.slow
@pytest.mark.parametrize("threads", [2, 4])
def test_same_bits_with_chunks_taken_last_first(one_thread, tmp_path, threads):
    got = in_second_process(tmp_path, {"L2FAST_CPU_GRAB_ORDER": "reverse"}, threads)
    assert_same_bits(got, one_thread, f"with chunks taken last first at {threads} threads")


@pytest.mark.slow
def test_same_bits_with_a_core_busy_elsewhere(one_thread):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(3):
            assert_same_bits(all_results(2), one_thread, "at 2 threads with another process busy")
    finally:
        busy.kill()
        busy.wait()


def test_same_bits_from_concurrent_python_threads(one_thread):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(3) as callers:
            results = list(callers.map(lambda _: all_dtypes(every_op), range(3)))
    finally:
        torch.set_num_threads(before)
    for got in results:
        assert_same_bits(got, one_thread, "from three Python threads at once")


if __name__ == "__main__":  # the second process of the tests above: results at argv[2] threads, saved to argv[1]
    torch.save(all_results(int(sys.argv[2])), sys.argv[1])
