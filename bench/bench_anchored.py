"""The one-pass Adam step with a pull toward anchors (L2-SP, EWC) against the same step without one.

The anchored step reads the anchor (and the Fisher importances) in the pass that reads w, g and the
state: it moves more bytes per parameter, and on a memory-bound machine it should cost just that. The
table gives each anchored step's time over the plain one-pass step's, paired per round, beside the
ratio of the bytes they move; the last column is how far the time ratio is from the bytes ratio.

    python bench/bench_anchored.py --rounds 30
"""
from __future__ import annotations

import argparse
import sys

import torch

import l2fast
from common import PARAM_SETS, cpu_isa, header, make_params, paired_ratio, record, round_seconds, table, table_records

LR, LAM = 1e-3, 1e-2
# Bytes per parameter of the plain one-pass Adam step: reads w, g, exp_avg, exp_avg_sq and writes w,
# exp_avg, exp_avg_sq (float32).
PLAIN_BYTES = 28


def _steps(params: list[torch.Tensor]) -> dict:
    """name -> (step function, bytes moved per parameter); the first is the plain step all are paired with."""
    fisher32 = {p: torch.rand_like(p) for p in params}

    def anchored(dtype, fisher):
        anchor = {p: p.detach().to(dtype, copy=True) for p in params}
        importances = None if fisher is None else {p: f.to(dtype) for p, f in fisher.items()}
        return l2fast.Penalized(torch.optim.Adam(params, lr=LR, fused=True), l2_sp=LAM, anchor=anchor,
                                fisher=importances)

    steps = {f"Penalized(Adam(fused=True), l2={LAM})": (
        l2fast.Penalized(torch.optim.Adam(params, lr=LR, fused=True), l2=LAM), PLAIN_BYTES)}
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        name = str(dtype).removeprefix("torch.")
        steps[f"l2_sp={LAM}, {name} anchor"] = (anchored(dtype, None), PLAIN_BYTES + size)
        steps[f"l2_sp={LAM}, {name} anchor + Fisher"] = (anchored(dtype, fisher32), PLAIN_BYTES + 2 * size)
    for optimizer, _ in steps.values():
        assert optimizer.fused
    return {name: (optimizer.step, size) for name, (optimizer, size) in steps.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--set", default="transformer-base", choices=list(PARAM_SETS))
    args = parser.parse_args(argv)
    command = ("python bench/bench_anchored.py " + " ".join(argv)).strip()

    params = make_params(PARAM_SETS[args.set](), args.device)
    for p in params:
        p.requires_grad_()
        p.grad = torch.randn_like(p)
    numel = sum(p.numel() for p in params)
    steps = _steps(params)
    times = round_seconds({name: fn for name, (fn, _) in steps.items()}, args.device, rounds=args.rounds)
    plain = next(iter(steps))

    print(header("Anchored one-pass Adam step (L2-SP, EWC) against the plain one", args.device, command))
    print(f"Parameters: {args.set}, {len(params)} float32 tensors, {numel / 1e6:.1f}M values. {cpu_isa()} "
          f"Ratios are medians of per-round ratios ({args.rounds} round-robin rounds after 2 warm-up steps), "
          "with their interquartile range.\n")
    rows = []
    for name, (_, size) in steps.items():
        median_ms = 1e3 * sorted(times[name])[len(times[name]) // 2]
        ratio, q1, q3 = paired_ratio(times[name], times[plain])
        bytes_ratio = size / PLAIN_BYTES
        rows.append([name, f"{median_ms:.1f}", f"{size} B", f"{bytes_ratio:.3f}", f"{ratio:.3f} ({q1:.3f}-{q3:.3f})",
                     f"{100 * (ratio / bytes_ratio - 1):+.1f}%"])
    columns = ["step", "median ms", "bytes/param", "bytes ratio", "time ratio (IQR)", "time vs bytes"]
    print(table(columns, rows))
    record("bench_anchored", {"set": args.set, "tensors": len(params), "numel": numel, "rounds": args.rounds,
                              "isa": cpu_isa(), "round_seconds": times,
                              "bytes_per_param": {name: size for name, (_, size) in steps.items()},
                              "tables": {"Anchored step": table_records(columns, rows)}}, args.device, command)


if __name__ == "__main__":
    main(sys.argv[1:])
