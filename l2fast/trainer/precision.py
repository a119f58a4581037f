"""Which autocast dtype a run trains in, and the context manager that applies it.

``precision = "auto"`` is bf16 on GPUs that have it (fp16 with a GradScaler otherwise). On a CPU it
is measured, not assumed: on an AVX2 CPU without bf16 instructions, bf16 autocast made a demo-model
training step 24x slower, while CPUs with AVX512-BF16 or AMX run bf16 matrix products natively. So
a CPU that reports native bf16 support times a few training steps both ways on the run's own model
and batch, and trains in bf16 only when that is clearly faster; other CPUs train in float32.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from .config import ConfigError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16_cpu() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def faster_cpu_dtype(step: Callable[[torch.dtype | None], None], repeats: int = 3,
                     margin: float = 0.9) -> tuple[torch.dtype | None, dict[str, float]]:
    """bf16 when ``step(torch.bfloat16)`` takes less than ``margin`` times ``step(None)`` (float32),
    else None; also the measured seconds per step of each. One untimed call of each comes first
    (kernel selection, allocator warm-up)."""
    seconds = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        step(dtype)
        start = time.perf_counter()
        for _ in range(repeats):
            step(dtype)
        seconds[name] = (time.perf_counter() - start) / repeats
    return (torch.bfloat16 if seconds["bf16"] < margin * seconds["fp32"] else None), seconds


def autocast_dtype(precision: str, device: torch.device,
                   probe: Callable[[], torch.dtype | None] | None = None) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None = float32). ``probe`` decides
    "auto" on CPUs with native bf16 (without one, such CPUs train in float32)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return probe() if probe is not None and native_bf16_cpu() else None
    check_precision(precision, device)
    return DTYPES[precision]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuses a precision the device cannot train in (before any data is read)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision = 'fp16' needs a GPU; use 'bf16' or 'fp32' on a CPU")


def autocast_factory(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
