"""Squared norm and penalty+gradient: l2fast against naive summation, the fastest peers, and the
machine's streaming roofline, measured in one process. Prints markdown tables: a summary of ratios,
then every method. On CPU each set is measured at 1 thread, at all threads, and at all threads while
another process keeps one core busy (a data loader, a second job).

    python bench/bench_ops.py [--device cpu|cuda] [--sets transformer-base,...]
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import l2fast
from common import (PARAM_SETS, busy_core, cpu_isa, header, make_params, median_seconds, medians, paired_ratio, record,
                    round_seconds, table, table_records)

LAM = 1e-4
# The methods the summary compares with their peers and the roofline.
SQ_NORM, FOREACH_NORM, FUSED_GRAD = "l2fast.sq_norm", "torch._foreach_norm", "l2fast.add_penalty_grad_ (fused)"
FOREACH_ADD = "torch._foreach_add_ (g += lam * w, no value)"


def naive_sq_norm(params):
    return sum(p.pow(2).sum() for p in params)


def foreach_sq_norm(params):
    return torch.stack(torch._foreach_norm(params)).pow(2).sum()


# torch.compile of a sum over 10,000 tensors was still compiling after 6 minutes on the 2-core CPU
# machine (2026-11-23), so the compiled peer is measured only on lists up to this length.
COMPILE_MAX_TENSORS = 1000


def norm_methods(params, device):
    numel = sum(p.numel() for p in params)
    half = numel // 2
    a, b = torch.randn(half, device=device), torch.randn(numel - half, device=device)[:half]
    methods = {
        "naive sum(p.pow(2).sum())": lambda: naive_sq_norm(params),
        FOREACH_NORM: lambda: foreach_sq_norm(params),
    }
    if len(params) <= COMPILE_MAX_TENSORS:
        compiled = torch.compile(naive_sq_norm)
        methods["torch.compile(naive)"] = lambda: compiled(params)
    methods[SQ_NORM] = lambda: l2fast.sq_norm(params)
    methods["roofline: torch.dot, same bytes"] = lambda: torch.dot(a, b)
    return methods, 4 * numel


def grad_methods(params, device):
    """Penalty value and its gradient added into .grad: read w, read g, write g."""
    leaves = [p.clone().requires_grad_() for p in params]
    for p in leaves:
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in leaves]
    numel = sum(p.numel() for p in params)
    x, y = torch.randn(numel, device=device), torch.randn(numel, device=device)

    def naive():
        (LAM / 2 * naive_sq_norm(leaves)).backward()

    def foreach():
        value = LAM / 2 * foreach_sq_norm(params)
        torch._foreach_add_(grads, params, alpha=LAM)
        return value

    def l2fast_autograd():
        l2fast.penalty(leaves, l2=LAM).backward()

    return {
        "naive autograd (forward + backward)": naive,
        "torch._foreach_norm + _foreach_add_": foreach,
        "l2fast.penalty (autograd)": l2fast_autograd,
        # The same bytes of the same tensors, without the penalty value: the bandwidth these tensors'
        # layout allows (separately allocated tensors stream slower than one flat tensor; docs/cpu.md).
        FOREACH_ADD: lambda: torch._foreach_add_(grads, params, alpha=LAM),
        FUSED_GRAD: lambda: l2fast.add_penalty_grad_(params, grads, l2=LAM),
        "roofline: in-place add_, same bytes": lambda: x.add_(y),
    }, 12 * numel


def copy_bandwidth(device, numel=256 * 2**20) -> float:
    """Bytes read plus bytes written per second by a large device-to-device copy."""
    src, dst = torch.randn(numel, device=device), torch.empty(numel, device=device)
    seconds = median_seconds({"copy": lambda: dst.copy_(src)}, device)["copy"]
    return 8 * numel / seconds


def settings(device):
    """(label, threads, busy core) of each measurement: on CPU 1 thread, all threads, all threads with a core busy."""
    if device != "cpu":
        return [("", None, False)]
    threads = torch.get_num_threads()
    every = [("1", 1, False)] + ([(str(threads), threads, False)] if threads > 1 else [])
    return every + [(f"{threads}, 1 core busy", threads, True)]


@contextlib.contextmanager
def setting(threads, busy):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with busy_core() if busy else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(before)


def measure(set_name, label, methods, nbytes, device, rounds, copy_bytes_per_s=None):
    """Rows of the method table (median times), and each method's seconds in every round."""
    per_round = round_seconds(methods, device, rounds)
    seconds = medians(per_round)
    naive_name, roof_name = next(iter(methods)), list(methods)[-1]
    rows = []
    for name, t in seconds.items():
        row = [set_name] + ([label] if label else []) + [name, f"{t * 1e3:.3f}", f"{nbytes / t / 1e9:.1f}",
                                                         f"{seconds[naive_name] / t:.2f}x", f"{seconds[roof_name] / t:.0%}"]
        if copy_bytes_per_s:
            row.append(f"{nbytes / t / copy_bytes_per_s:.0%}")
        rows.append(row)
    return rows, per_round


def ratio_cell(ratio: tuple, unit: str) -> str:
    median, q1, q3 = ratio
    if unit == "%":
        return f"{median:.0%} ({q1 * 100:.0f}-{q3:.0%})"
    return f"{median:.2f}x ({q1:.2f}-{q3:.2f}x)"


def summary_row(set_name, label, norm, grad):
    """The acceptance ratios, each round's times compared with each other: sq_norm against torch.dot and
    _foreach_norm, the fused gradient against add_ and against _foreach_add_ over the same tensors."""
    roof_norm, roof_grad = list(norm.values())[-1], list(grad.values())[-1]
    return [set_name] + ([label] if label else []) + [
        ratio_cell(paired_ratio(roof_norm, norm[SQ_NORM]), "%"),
        ratio_cell(paired_ratio(norm[FOREACH_NORM], norm[SQ_NORM]), "x"),
        ratio_cell(paired_ratio(roof_grad, grad[FUSED_GRAD]), "%"),
        ratio_cell(paired_ratio(grad[FOREACH_ADD], grad[FUSED_GRAD]), "x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sets", default=",".join(PARAM_SETS), help="comma-separated parameter sets")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per method (the median is reported)")
    args = parser.parse_args()
    command = "python bench/bench_ops.py " + " ".join(sys.argv[1:])
    print(header(f"Fused ops on {args.device} (l2fast backend: {l2fast.backend()})", args.device, command.strip()))
    if args.device == "cpu":
        print(cpu_isa() + "\n")
    print("float32 parameters. Bytes moved: 4 per element for the squared norm (read), 12 for penalty + "
          "gradient (read w, read g, write g). Roofline: the same bytes through torch.dot (read) or an "
          f"in-place add_ (read, read, write). Median of {args.rounds} rounds, methods interleaved in a new order "
          "each round."
          + (" Threads: torch.set_num_threads; '1 core busy': another process spins on one core meanwhile."
             if args.device == "cpu" else ""))
    thread_column = ["threads"] if args.device == "cpu" else []
    columns = ["set"] + thread_column + ["method", "ms", "GB/s", "vs naive", "% of roofline"]
    copy_bytes_per_s = None
    if args.device.startswith("cuda"):
        copy_bytes_per_s = copy_bandwidth(args.device)
        print(f"Device-to-device copy (bytes read + written): {copy_bytes_per_s / 1e9:.0f} GB/s.")
        columns.append("% of copy")
    seconds, details = {}, {}
    for title, build in (("Squared norm", norm_methods), ("Penalty + gradient", grad_methods)):
        details[title] = []
        for set_name in args.sets.split(","):
            params = make_params(PARAM_SETS[set_name](), args.device)
            methods, nbytes = build(params, args.device)
            name = f"{set_name} ({len(params)} tensors)"
            for label, threads, busy in settings(args.device):
                with setting(threads, busy):
                    rows, seconds[title, name, label] = measure(name, label, methods, nbytes, args.device, args.rounds,
                                                              copy_bytes_per_s)
                details[title] += rows
            del params, methods
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    summary = [summary_row(name, label, norm, seconds["Penalty + gradient", name, label])
               for (title, name, label), norm in seconds.items() if title == "Squared norm"]
    print("\n**Summary** (time ratios of methods timed in the same round: the median over the rounds, and in "
          "brackets the middle half of them; the fused op's goal: >= 95% of torch.dot and >= 1x _foreach_norm for "
          "the squared norm, >= 90% of add_ for penalty + gradient; _foreach_add_ moves the same bytes of the same "
          "tensors without computing the penalty value)\n")
    summary_columns = ["set"] + thread_column + ["sq_norm % of torch.dot", "sq_norm speed vs _foreach_norm",
                                                 "fused grad % of add_", "fused grad speed vs _foreach_add_"]
    print(table(summary_columns, summary))
    for title, rows in details.items():
        print(f"\n**{title}**\n")
        print(table(columns, rows), flush=True)
    record("bench_ops", {
        "rounds": args.rounds,
        "copy_bytes_per_s": copy_bytes_per_s,
        "tables": {"Summary": table_records(summary_columns, summary),
                   **{title: table_records(columns, rows) for title, rows in details.items()}},
        # Every round's seconds, so ratios can be paired again later.
        "round_seconds": [{"op": title, "set": name, "threads": label, "method": method, "seconds": ts}
                          for (title, name, label), per_round in seconds.items() for method, ts in per_round.items()],
    }, args.device, command.strip())


if __name__ == "__main__":
    main()
