import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def random_tensors(sizes, dtype, device, seed=0):
    """Fresh random tensors (never zeros: they hide unwritten outputs), one per size."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device) for n in sizes]


def ulp_tol(dtype):
    """Elementwise tolerance of one rounding in dtype (fused vs. separate multiply-add)."""
    return {torch.float32: 2e-7, torch.float64: 1e-15, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]


@pytest.fixture
def one_thread():
    """Tiny models on one thread: their operations are too small to share, and on a busy two-core
    machine two threads wait for each other far longer than the work takes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_process(rank, world, port, out_dir, job, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A collective that one process skipped fails at this timeout instead of hanging the run.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        torch.save(job(rank, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_gloo(job, world: int, out_dir, *args) -> list:
    """``job(rank, *args)`` (a module-level function) in ``world`` gloo processes on the CPU; what each
    process returned, by rank."""
    mp.spawn(_gloo_process, args=(world, free_port(), str(out_dir), job, args), nprocs=world)
    return [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(world)]


def native_without_anchors() -> str | None:
    """Why torch.ops.l2fast cannot take the anchored calls (L2-SP, EWC), or None when it can."""
    from l2fast import _ops

    if _ops.BACKEND != "native":
        return f"the native library is not loaded ({_ops.REASON})"
    if "anchors" not in str(torch.ops.l2fast.penalty.default._schema):
        return "the native library was built before anchors; rebuild it"
    return None
