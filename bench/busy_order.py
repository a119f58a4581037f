"""With one core busy, does a CPU op's time depend on the op that ran just before it? The squared-norm
methods of bench_ops.py run in a new random order every round, at all threads, while another process
spins on one core; each call's time is filed under its predecessor. Prints one markdown table of
medians (and call counts) per method and predecessor.

    python bench/busy_order.py [--set 1x100M] [--rounds 60]
"""
from __future__ import annotations

import argparse
import collections
import random
import statistics
import sys
import time

import torch

import l2fast
from bench_ops import norm_methods
from common import PARAM_SETS, busy_core, cpu_isa, header, make_params, record, table, table_records


def times_by_predecessor(methods: dict, rounds: int) -> dict:
    """{(method, method run just before): [seconds, ...]}; the first call of all has no predecessor."""
    seconds = collections.defaultdict(list)
    before = None
    for r in range(rounds):
        for name in random.Random(r).sample(list(methods), len(methods)):
            start = time.perf_counter()
            methods[name]()
            seconds[name, before].append(time.perf_counter() - start)
            before = name
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="1x100M", choices=list(PARAM_SETS))
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    command = ("python bench/busy_order.py " + " ".join(sys.argv[1:])).strip()
    print(header(f"Squared norm with one core busy, by the op run just before (l2fast backend: {l2fast.backend()})",
                 "cpu", command))
    print(cpu_isa() + "\n")
    methods, _ = norm_methods(make_params(PARAM_SETS[args.set](), "cpu"), "cpu")
    for fn in methods.values():  # compile and warm up before the spinner starts
        fn()
    with busy_core():
        seconds = times_by_predecessor(methods, args.rounds)
    names = list(methods)
    rows = []
    for name in names:
        cells = []
        for before in names:
            ts = seconds.get((name, before), [])
            cells.append(f"{statistics.median(ts) * 1e3:.1f} ({len(ts)})" if ts else "")
        every = [t for (n, _), ts in seconds.items() if n == name for t in ts]
        rows.append([name, f"{statistics.median(every) * 1e3:.1f}"] + cells)
    print(f"Set {args.set}, {torch.get_num_threads()} threads, {args.rounds} rounds: median ms (calls) of each method "
          "(rows) by the method run just before it (columns).\n")
    columns = ["method", "all calls"] + [f"after {before}" for before in names]
    print(table(columns, rows))
    record("busy_order", {"set": args.set, "rounds": args.rounds,
                          "seconds_by_predecessor": [{"method": name, "after": before, "seconds": ts}
                                                     for (name, before), ts in seconds.items()],
                          "tables": {"By predecessor": table_records(columns, rows)}}, "cpu", command)


if __name__ == "__main__":
    main()
