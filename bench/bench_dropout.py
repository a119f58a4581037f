"""Dropout forward + backward: torch's ``F.dropout`` against the trainer's byte-mask CPU dropout
(``l2fast.trainer.dropout.Dropout``), on activations the size of a small Transformer's feed-forward layer.

    python bench/bench_dropout.py                  # 4096 x 1024 float32, p = 0.1, CPU
"""
import argparse
import sys

import torch
import torch.nn.functional as F
from common import header, median_seconds, record, table, table_records

from l2fast.trainer.dropout import Dropout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096, help="rows (tokens) of the activation (default: 4096)")
    parser.add_argument("--cols", type=int, default=1024, help="columns (width) of the activation (default: 1024)")
    parser.add_argument("-p", type=float, default=0.1, help="dropout probability (default: 0.1)")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default: 20)")
    args = parser.parse_args()
    x = torch.randn(args.rows, args.cols, requires_grad=True)
    grad = torch.randn(args.rows, args.cols)
    ours = Dropout(args.p).train()
    methods = {
        "F.dropout": lambda: F.dropout(x, args.p, training=True).backward(grad),
        "l2fast.nmt Dropout": lambda: ours(x).backward(grad),
        "multiply only (floor)": lambda: (x * (1 / (1 - args.p))).backward(grad),
    }
    seconds = median_seconds(methods, "cpu", rounds=args.rounds)
    command = " ".join(["python bench/bench_dropout.py", *sys.argv[1:]])
    print(header(f"Dropout forward + backward, {args.rows} x {args.cols} float32, p = {args.p}", "cpu", command))
    columns = ["method", "ms", "speed vs F.dropout"]
    rows = [[name, f"{s * 1e3:.1f}", f"{seconds['F.dropout'] / s:.2f}x"] for name, s in seconds.items()]
    print(table(columns, rows))
    record("bench_dropout", {"rows": args.rows, "cols": args.cols, "p": args.p, "rounds": args.rounds,
                             "median_seconds": seconds, "tables": {"Dropout": table_records(columns, rows)}},
           "cpu", command)


if __name__ == "__main__":
    main()
