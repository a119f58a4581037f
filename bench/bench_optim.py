"""Optimizer step time with a weight penalty on a Transformer-base parameter set: torch's own
weight_decay, the naive autograd penalty, and l2fast.Penalized, each against a plain
Adam(weight_decay=0) step of the same implementation (for-loop, foreach, fused), measured round-robin
in one process. Prints a markdown table. ``--one-pass`` times l2fast's one-pass step (the penalty, the
clip factor and the update in one native pass) against torch's fused Adam with and without
``clip_grad_norm_`` and torch's for-loop ``Adam(weight_decay)``, with bytes moved per second as a % of
an in-place ``add_`` roofline; ``--plot FILE.png`` adds step time vs parameter count (1M..100M).

    python bench/bench_optim.py [--device cpu|cuda] [--impls for-loop,foreach,fused] [--rounds N]
    python bench/bench_optim.py --one-pass [--rounds N] [--plot bench/optim_scaling.png --sizes 1,3,10,30,100]
    python bench/bench_optim.py --one-pass --set 10kx1k [--busy-python-thread]
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import l2fast
from common import (PARAM_SETS, busy_python_thread, header, make_params, median_seconds, record, table, table_records,
                    transformer_base_shapes)

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


CLIP = 1.0
# Bytes per parameter each method moves (float32): Adam reads w, g, m, v and writes w, m, v; the clip
# norm reads g once more; torch's clip_grad_norm_ scales g in a pass of its own (read and write), the
# one-pass step writes the clipped g back in its pass (as torch leaves p.grad); the two-pass path over
# torch's Adam measures the penalty (reads w) and lets Adam add it as its own weight_decay.
ADAM_BYTES, NORM_BYTES, SCALE_BYTES, GRAD_WRITE_BYTES, VALUE_BYTES = 28, 4, 8, 4, 4


def one_pass_methods(params: list[torch.Tensor]) -> dict:
    """name -> (step function, bytes moved per parameter)."""
    fused = torch.optim.Adam(params, lr=LR, fused=True)
    ours = l2fast.Penalized(torch.optim.Adam(params, lr=LR, fused=True), l2=LAM)
    ours_clip = l2fast.Penalized(torch.optim.Adam(params, lr=LR, fused=True), l2=LAM, max_grad_norm=CLIP)
    two_pass = l2fast.Penalized(torch.optim.Adam(params, lr=LR, fused=True), l2=LAM, fused=False)
    fused_clip = torch.optim.Adam(params, lr=LR, fused=True)
    for_loop = torch.optim.Adam(params, lr=LR, weight_decay=LAM, foreach=False)
    assert ours.fused and ours_clip.fused and not two_pass.fused

    def clip_then_fused():
        torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=True)
        fused_clip.step()

    return {
        "Adam(fused=True, weight_decay=0)": (fused.step, ADAM_BYTES),
        f"l2fast.Penalized(Adam(fused=True), l2={LAM})": (ours.step, ADAM_BYTES),
        f"l2fast.Penalized(Adam(fused=True), l2={LAM}, fused=False) (two passes)": (two_pass.step, ADAM_BYTES + VALUE_BYTES),
        f"clip_grad_norm_(foreach) + Adam(fused=True)": (clip_then_fused, ADAM_BYTES + NORM_BYTES + SCALE_BYTES),
        f"l2fast.Penalized(Adam(fused=True), l2={LAM}, max_grad_norm={CLIP})": (ours_clip.step, ADAM_BYTES + NORM_BYTES + GRAD_WRITE_BYTES),
        f"Adam(weight_decay={LAM}) for-loop (torch's CPU default)": (for_loop.step, ADAM_BYTES),
    }


def roofline_bytes_per_second(numel: int, device: str, rounds: int) -> float:
    """In-place add_ (read, read, write) over buffers as large as the parameters: the bytes per second
    the machine streams for an elementwise update."""
    x = torch.randn(numel, device=device)
    y = torch.randn(numel, device=device)
    seconds = median_seconds({"add_": lambda: x.add_(y, alpha=1e-9)}, device, rounds=rounds)["add_"]
    return 12 * numel / seconds


def flat_params(numel: int, device: str, tensors: int = 64) -> list[torch.Tensor]:
    """numel values in `tensors` equal tensors (the parameter count of the scaling plot)."""
    size = max(1, numel // tensors)
    return make_params([(size,)] * tensors, device)


def with_grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    for p in params:
        p.requires_grad_()
        p.grad = torch.randn_like(p)
    return params


def one_pass_table(args, command: str) -> None:
    params = with_grads(make_params(PARAM_SETS[args.set](), args.device))
    numel = sum(p.numel() for p in params)
    print(header("One-pass penalized Adam step", args.device, command))
    print(f"Parameters: {args.set}, {len(params)} float32 tensors, {numel / 1e6:.1f}M values (l2 = weight_decay "
          f"= {LAM}, clip norm {CLIP}). Median of {args.rounds} round-robin steps after 2 warm-up steps. Roofline: "
          f"in-place add_ over {numel / 1e6:.1f}M values."
          + (" A Python thread of the same process spins meanwhile." if args.busy_python_thread else "") + "\n")
    methods = one_pass_methods(params)
    with busy_python_thread() if args.busy_python_thread else contextlib.nullcontext():
        times = median_seconds({name: fn for name, (fn, _) in methods.items()}, args.device, rounds=args.rounds)
    roofline = roofline_bytes_per_second(numel, args.device, args.rounds)
    fused = times["Adam(fused=True, weight_decay=0)"]
    rows = []
    for name, (_, per_param) in methods.items():
        seconds = times[name]
        rate = per_param * numel / seconds
        rows.append([name, f"{1e3 * seconds:.1f}", f"{seconds / fused:.2f}x", f"{per_param} B",
                     f"{rate / 1e9:.1f} GB/s", f"{100 * rate / roofline:.0f}%"])
    columns = ["step", "median ms", "vs Adam(fused=True)", "bytes/param", "moved", "% of add_ roofline"]
    print(table(columns, rows))
    results = {"mode": "one-pass", "set": args.set, "tensors": len(params), "numel": numel, "rounds": args.rounds,
               "busy_python_thread": args.busy_python_thread, "median_seconds": times,
               "bytes_per_param": {name: per_param for name, (_, per_param) in methods.items()},
               "roofline_bytes_per_s": roofline, "tables": {"One-pass step": table_records(columns, rows)}}
    if args.plot:
        results["scaling"] = scaling_plot(args, list(methods))
    record("bench_optim", results, args.device, command)


def scaling_plot(args, names: list[str]) -> dict:
    """Step time of every method vs parameter count, one process, round-robin per size; a PNG. Returns
    {"numel": sizes, method: median seconds per size}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(float(s) * 1e6) for s in args.sizes.split(",")]
    series = {name: [] for name in names}
    for numel in sizes:
        params = with_grads(flat_params(numel, args.device))
        methods = one_pass_methods(params)
        times = median_seconds({name: fn for name, (fn, _) in methods.items()}, args.device, rounds=args.rounds)
        for name in names:
            series[name].append(times[name])
        del params, methods
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, ts in series.items():
        ax.loglog([n / 1e6 for n in sizes], [1e3 * t for t in ts], marker="o", label=name)
    ax.set_xlabel("parameters (millions, float32, 64 tensors)")
    ax.set_ylabel("median step time (ms)")
    ax.set_title(f"Optimizer step vs parameter count ({args.device}, {torch.get_num_threads()} threads)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"\nStep time vs parameter count ({', '.join(f'{n / 1e6:g}M' for n in sizes)}): {args.plot}")
    return {"numel": sizes, **series}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--impls", default=",".join(IMPLS), help="Adam implementations to time")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--one-pass", action="store_true", help="time the one-pass step against its peers")
    parser.add_argument("--plot", default=None, help="with --one-pass: also write step time vs size to this PNG")
    parser.add_argument("--sizes", default="1,3,10,30,100", help="millions of parameters for --plot")
    parser.add_argument("--set", default="transformer-base", choices=list(PARAM_SETS), help="with --one-pass: parameters")
    parser.add_argument("--busy-python-thread", action="store_true",
                        help="with --one-pass: time while another Python thread of this process spins")
    args = parser.parse_args(argv)
    if args.one_pass:
        one_pass_table(args, ("python bench/bench_optim.py " + " ".join(argv)).strip())
        return

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
    columns = ["implementation", "step", "median ms", "vs Adam(weight_decay=0)"]
    print(table(columns, rows))
    print(f"\nThe fused penalty pass alone (l2fast.add_penalty_grad_ over all {len(params)} tensors): "
          f"{1e3 * fused_pass:.1f} ms. Adam's default is the for-loop on the CPU, foreach on CUDA.")
    record("bench_optim", {"mode": "implementations", "set": "transformer-base", "tensors": len(params), "numel": numel,
                           "rounds": args.rounds, "penalty_pass_seconds": fused_pass,
                           "tables": {"Optimizer step": table_records(columns, rows)}}, args.device, command.strip())


if __name__ == "__main__":
    main(sys.argv[1:])
