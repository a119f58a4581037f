"""One optimizer step under FSDP2: l2fast's one-pass step on each process's local shards against
torch's Adam with the same weight_decay (for-loop, foreach, fused), over the same DTensor parameters,
timed round-robin on every process, all starting each call together; the main process prints the
table (the slowest process's median per method: a step ends when every process has taken it).

    torchrun --standalone --nproc_per_node 2 bench/bench_fsdp.py [--set transformer-base] [--rounds 9]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

import l2fast
from common import PARAM_SETS, cpu_isa, header, median_seconds, record, table, table_records

LAM = 1e-4
LR = 1e-6  # tiny, so repeated steps leave the weights (and the work) unchanged


def sharded_params(shapes: list[tuple], device: str) -> list[torch.Tensor]:
    """The shapes as parameters of one module sharded by fully_shard, with random DTensor gradients."""
    from torch.distributed.fsdp import fully_shard

    module = torch.nn.Module()
    generator = torch.Generator().manual_seed(0)
    module.weights = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes)
    fully_shard(module.to(device))
    params = list(module.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def methods(params: list[torch.Tensor]) -> dict:
    def adam(**options):
        return torch.optim.Adam(params, lr=LR, **options)

    steps = {
        f"Adam(weight_decay={LAM}) for-loop": adam(weight_decay=LAM, foreach=False).step,
        f"Adam(weight_decay={LAM}) foreach": adam(weight_decay=LAM, foreach=True).step,
        f"l2fast.Penalized(Adam, l2={LAM}) (one pass)": l2fast.Penalized(adam(), l2=LAM).step,
        f"l2fast.Penalized(Adam, l2={LAM}, fused=False) (two passes)": l2fast.Penalized(adam(), l2=LAM, fused=False).step,
    }
    try:
        fused = adam(weight_decay=LAM, fused=True)
        fused.step()
        steps[f"Adam(weight_decay={LAM}) fused"] = fused.step
    except RuntimeError as e:  # torch's fused Adam takes only some devices and tensor types
        print(f"rank {dist.get_rank()}: torch's fused Adam is not measured: {str(e).splitlines()[0]}", file=sys.stderr)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="transformer-base", choices=sorted(PARAM_SETS))
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank, world = dist.get_rank(), dist.get_world_size()
    params = sharded_params(PARAM_SETS[args.set](), device)
    steps = methods(params)
    times = median_seconds(steps, device, rounds=args.rounds, before=dist.barrier)
    slowest = torch.tensor([times[name] for name in steps], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        numel = sum(p.numel() for p in params)
        command = f"torchrun --standalone --nproc_per_node {world} bench/bench_fsdp.py --set {args.set} --rounds {args.rounds}"
        print(header(f"Optimizer step under FSDP2, {world} processes", device, command))
        print(f"{cpu_isa()}\n\nParameters: {args.set}, {len(params)} float32 tensors, {numel / 1e6:.1f}M values, "
              f"sharded over {world} processes ({torch.get_num_threads()} thread(s) each). Median of {args.rounds} "
              f"round-robin steps after 2 warm-up steps; the slowest process's.\n")
        foreach = slowest[list(steps).index(f"Adam(weight_decay={LAM}) foreach")].item()
        rows = [[name, f"{1e3 * seconds:.1f}", f"{seconds / foreach:.2f}x"] for name, seconds in zip(steps, slowest.tolist())]
        columns = ["step", "median ms", "vs foreach Adam"]
        print(table(columns, rows))
        record("bench_fsdp", {"set": args.set, "processes": world, "tensors": len(params), "numel": numel,
                              "rounds": args.rounds, "slowest_median_seconds": dict(zip(steps, slowest.tolist())),
                              "tables": {"Step under FSDP2": table_records(columns, rows)}}, device, command)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
