"""End-to-end training-step time of the translation Transformer: naive penalty vs l2fast.

Same model, same batch, full step (forward, backward, penalty, fused gradient clipping, Adam); the
variants run round-robin and each reports its median step time and the penalty's share of it.

    python bench/bench_train_step.py                   # demo model, CPU
    python bench/bench_train_step.py --size demo base  # also Transformer-base
"""
import argparse
import sys

import torch
from common import header, parse_table, record, table_records

from l2fast.nmt.bench import SIZES, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="+", choices=sorted(SIZES), default=["demo"], help="model sizes (default: demo)")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch (default: 4096)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (default: 20)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype (default: fp32)")
    args = parser.parse_args()
    report = run_bench(args.size, args.batch_tokens, args.steps, args.threads, args.precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    command = " ".join(["python bench/bench_train_step.py", *sys.argv[1:]])
    print(header("Training step: naive penalty vs l2fast", device, command))
    print(report)
    columns, rows = parse_table(report)
    record("bench_train_step", {"sizes": args.size, "batch_tokens": args.batch_tokens, "steps": args.steps,
                                "precision": args.precision, "description": report.splitlines()[0],
                                "tables": {"Training step": table_records(columns, rows)}}, device, command)


if __name__ == "__main__":
    main()
