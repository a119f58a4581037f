import pytest
import torch

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
