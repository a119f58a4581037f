"""Optimizer step time with a weight penalty on a Transformer-base parameter set: torch's own
weight_decay, the naive autograd penalty, and l2fast.Penalized, each against a plain
Adam(weight_decay=0) step of the same implementation (for-loop, foreach, fused), measured round-robin
in one process. Prints a markdown table.

    python bench/bench_optim.py [--device cpu|cuda] [--impls for-loop,foreach,fused] [--rounds N]
"""
from __future__ import annotations

import argparse
import sys

import torch

import l2fast
from common import header, make_params, median_seconds, table, transformer_base_shapes

LAM = 1e-4
LR = 1e-6  # tiny, so hundreds of timed steps leave the weights (and the work) unchanged
IMPLS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_methods(params: list[torch.Tensor], impl: dict) -> dict:
    """One optimizer step each (the naive one also runs the penalty's forward and backward)."""

    def adam(weight_decay=0.0):
        return torch.optim.Adam(params, lr=LR, weight_decay=weight_decay, **impl)

    plain = adam()
    decayed = adam(LAM)
    penalized = l2fast.Penalized(adam(), l2=LAM)
    adamw = torch.optim.AdamW(params, lr=LR, weight_decay=LAM, **impl)
    decoupled = l2fast.Penalized(adam(), l2=LAM, decoupled=True)

    def naive():
        (LAM / 2 * sum(p.pow(2).sum() for p in params)).backward()
        plain.step()

    return {
        "Adam(weight_decay=0)": plain.step,
        f"Adam(weight_decay={LAM})": decayed.step,
        f"naive loss + {LAM}/2 * sum(p.pow(2).sum()), Adam(weight_decay=0)": naive,
        f"l2fast.Penalized(Adam(weight_decay=0), l2={LAM})": penalized.step,
        f"AdamW(weight_decay={LAM})": adamw.step,
        f"l2fast.Penalized(Adam(weight_decay=0), l2={LAM}, decoupled=True)": decoupled.step,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--impls", default=",".join(IMPLS), help="Adam implementations to time")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)

    shapes = transformer_base_shapes()
    params = [p.requires_grad_() for p in make_params(shapes, args.device)]
    for p in params:
        p.grad = torch.randn_like(p)
    numel = sum(p.numel() for p in params)
    command = "python bench/bench_optim.py " + " ".join(argv)
    print(header("Optimizer step with a weight penalty", args.device, command.strip()))
    print(f"Parameters: Transformer-base, {len(params)} float32 tensors, {numel / 1e6:.1f}M values, all penalised "
          f"(l2 = weight_decay = {LAM}). Median of {args.rounds} round-robin steps after 2 warm-up steps.\n")

    rows = []
    for name in args.impls.split(","):
        times = median_seconds(step_methods(params, IMPLS[name]), args.device, rounds=args.rounds)
        base = times["Adam(weight_decay=0)"]
        for method, seconds in times.items():
            overhead = "(baseline)" if seconds is base else f"{100 * (seconds / base - 1):+.1f}%"
            rows.append([f"Adam {name}", method, f"{1e3 * seconds:.1f}", overhead])
    fused_pass = median_seconds(
        {"pass": lambda: l2fast.add_penalty_grad_(params, l2=LAM)}, args.device, rounds=args.rounds
    )["pass"]
    print(table(["implementation", "step", "median ms", "vs Adam(weight_decay=0)"], rows))
    print(f"\nThe fused penalty pass alone (l2fast.add_penalty_grad_ over all {len(params)} tensors): "
          f"{1e3 * fused_pass:.1f} ms. Adam's default is the for-loop on the CPU, foreach on CUDA.")


if __name__ == "__main__":
    main(sys.argv[1:])
