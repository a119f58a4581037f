"""Achieved memory bandwidth of the l2fast kernels on a GPU, beside torch's peers and a read roofline,
measured in one process: each method's calls are timed between one pair of CUDA events, with the
L2 cache flushed before every call (the flushes are timed alone and subtracted). Prints a markdown
table per case and writes every row to a JSON file. Run by bench/gpu.sh (stage "bandwidth").

    python bench/gpu_bandwidth.py [--device cuda] [--json rows.json] [--small]

--small (bench/gpu.sh --dry-run): tiny cases on any device, wall-clock timed; checks the script runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import l2fast
from common import header, record, table, transformer_base_shapes

CASES = {
    "transformer-base": transformer_base_shapes,
    "1x100M": lambda: [(100_000_000,)],
    "1x1G": lambda: [(1_000_000_000,)],
    "10kx1k": lambda: [(1000,)] * 10_000,
    "100kx100": lambda: [(100,)] * 100_000,
}
SMALL_CASES = {"1x64k": lambda: [(1 << 16,)], "100x64": lambda: [(64,)] * 100}
LAM = 1e-4
FLUSH_BYTES = 512 << 20  # several times any GPU's L2 cache
TARGET_BYTES_PER_PAIR = 4e9  # calls per event pair: enough that one pair moves about this much


class Timer:
    """Seconds per call of fn, the L2 cache flushed before each call; CUDA events on a GPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.flush = torch.empty(FLUSH_BYTES // 4 if self.cuda else 1, device=device)

    def _pair(self, fn, calls: int) -> float:
        if not self.cuda:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            self.flush.zero_()
            fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / 1e3

    def per_call(self, fn, calls: int, pairs: int = 3) -> float:
        fn()  # warm-up: lazy initialisation, allocator
        flush_alone = statistics.median(self._pair(lambda: None, calls) for _ in range(pairs)) if self.cuda else 0.0
        return max(statistics.median(self._pair(fn, calls) for _ in range(pairs)) - flush_alone, 1e-9) / calls


def methods(shapes, device: str, dtype: torch.dtype) -> dict:
    """name -> (fn, bytes moved per call)."""
    g = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, device=device, dtype=dtype, generator=g) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), device=device) for _ in params]
    numel = sum(p.numel() for p in params)
    size = params[0].element_size()
    half = numel // 2
    a, b = torch.randn(half, device=device, dtype=dtype), torch.randn(half, device=device, dtype=dtype)
    scale, found_inf = torch.ones((), device=device), torch.zeros(1, device=device)
    n = len(params)

    def l2fast_adam(grad_scale):
        return torch.ops.l2fast.adam_step_(params, grads, exp_avgs, exp_avg_sqs, [], steps, [1e-6] * n, [0.9] * n,
                                           [0.999] * n, [1e-8] * n, [LAM] * n, [0.0] * n, [0.0] * n, [LAM] * n, False,
                                           grad_scale, None if grad_scale is None else found_inf, None)

    def torch_adam(grad_scale):
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=1e-6, beta1=0.9, beta2=0.999,
                           weight_decay=LAM, eps=1e-8, amsgrad=False, maximize=False, grad_scale=grad_scale,
                           found_inf=None if grad_scale is None else found_inf)

    read, step = numel * size, 7 * numel * size  # Adam reads w, g, m, v and writes w, m, v
    return {
        "roofline: torch.dot (read)": (lambda: torch.dot(a, b), 2 * half * size),
        "l2fast.sq_norm": (lambda: l2fast.sq_norm(params), read),
        "torch._foreach_norm": (lambda: torch._foreach_norm(params), read),
        "l2fast.add_penalty_grad_": (lambda: l2fast.add_penalty_grad_(params, grads, l2=LAM), 3 * read),
        "torch._foreach_add_ (g += lam*w)": (lambda: torch._foreach_add_(grads, params, alpha=LAM), 3 * read),
        "l2fast adam_step_": (lambda: l2fast_adam(None), step),
        "torch fused Adam": (lambda: torch_adam(None), step),
        # With a scaler the unscaled gradient is written back: one more stream for l2fast, as GradScaler
        # leaves it; torch's fused Adam does not write it.
        "l2fast adam_step_ + GradScaler": (lambda: l2fast_adam(scale), step + read),
        "torch fused Adam + GradScaler": (lambda: torch_adam(scale), step),
    }


def run_case(name: str, shapes, device: str, dtype: torch.dtype, timer: Timer) -> list[dict]:
    rows = []
    for method, (fn, nbytes) in methods(shapes, device, dtype).items():
        calls = max(2, min(50, int(TARGET_BYTES_PER_PAIR / max(nbytes, 1)))) if timer.cuda else 2
        seconds = timer.per_call(fn, calls)
        rows.append({"case": name, "dtype": str(dtype).removeprefix("torch."), "method": method,
                     "tensors": len(shapes), "ms": seconds * 1e3, "GB/s": nbytes / seconds / 1e9})
    roof = rows[0]["GB/s"]
    for row in rows:
        row["% of read roofline"] = 100.0 * row["GB/s"] / roof
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--small", action="store_true", help="tiny cases, to check the script runs")
    parser.add_argument("--cases", help="comma-separated subset of " + ",".join(CASES))
    args = parser.parse_args()
    cases = SMALL_CASES if args.small else CASES
    if args.cases:
        cases = {k: cases[k] for k in args.cases.split(",")}
    timer = Timer(args.device)
    print(header("Achieved bandwidth, L2 flushed before every call", args.device, "python bench/gpu_bandwidth.py"))
    rows = []
    for name, shapes in cases.items():
        for dtype in (torch.float32, torch.bfloat16):
            case_rows = run_case(name, shapes(), args.device, dtype, timer)
            rows += case_rows
            print(f"\n{name}, {case_rows[0]['dtype']}, {len(shapes())} tensors\n")
            print(table(["method", "ms", "GB/s", "% of read roofline"],
                        [[r["method"], f"{r['ms']:.3f}", f"{r['GB/s']:.0f}", f"{r['% of read roofline']:.0f}"]
                         for r in case_rows]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if not args.small:
        record("gpu_bandwidth", {"rows": rows}, args.device)


if __name__ == "__main__":
    main()
