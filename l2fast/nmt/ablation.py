"""The penalty ablation: the demo model trained once per penalty setting, test BLEU and wall time.

Every run uses the same corpus, tokenizer (trained once, by the first run), seed, data order and
step count; only the penalty differs. Coupled L2 (the gradient gains l2 * w, as Adam's weight_decay).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .config import Config, build_config, with_overrides
from .train import run_training

MIDDLE = 1e-4


def settings(max_steps: int) -> dict[str, tuple[str, dict]]:
    """(table label, penalty section) per setting name."""
    return {
        "none": ("no penalty", {"l2": 0.0}),
        "l2-1e-5": ("L2 1e-5", {"l2": 1e-5}),
        "l2-1e-4": ("L2 1e-4", {"l2": MIDDLE}),
        "l2-1e-3": ("L2 1e-3", {"l2": 1e-3}),
        "decayed": ("L2 1e-4, cosine-decayed to 0", {"l2": MIDDLE, "penalty_schedule": json.dumps({"type": "Cosine", "total": max_steps})}),
        "alternating": ("L2 1e-4, alternating on/off every 100 steps",
                        {"l2": MIDDLE, "penalty_schedule": json.dumps({"type": "Alternating", "every": 100})}),
    }


def run_ablation(run_dir: str, max_steps: int | None = None, only: list[str] | None = None) -> str:
    base: Config = build_config({})
    steps = max_steps or base.train.max_steps
    chosen = settings(steps)
    if only:
        unknown = [name for name in only if name not in chosen]
        if unknown:
            raise ValueError(f"unknown ablation setting {unknown[0]!r}; choose from {list(chosen)}")
        chosen = {name: chosen[name] for name in only}
    root = Path(run_dir)
    rows, tokenizer = [], ""
    for i, (label, penalty) in enumerate(chosen.values()):
        # Equal steps for every setting: no wall-clock cap, which would cut runs on a busy machine.
        # overwrite: a repeated ablation moves the runs of the previous one aside instead of stopping at them.
        cfg = with_overrides(base, "train", max_steps=steps, max_minutes=0.0, run_dir=str(root / f"run{i}"), resume=False,
                             overwrite=True)
        cfg = with_overrides(cfg, "penalty", **penalty)
        if tokenizer:
            cfg = with_overrides(cfg, "data", tokenizer=tokenizer)
        start = time.perf_counter()
        results = run_training(cfg)
        rows.append((label, results, time.perf_counter() - start))
        tokenizer = str(root / f"run{i}" / "tokenizer")
        table = _table(rows, steps, base.decode.beam)
        (root / "ablation.md").write_text(table + "\n", encoding="utf-8")  # after every run: partial results survive
    return table


def _table(rows, steps: int, beam: int) -> str:
    lines = [f"Penalty ablation on the demo corpus: {steps} steps each, test set of {rows[0][1]['test_sentences']} "
             f"sentences, beam {beam}", "",
             "| penalty | test BLEU | test chrF | best valid BLEU | train s | total wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, r, wall in rows:
        lines.append(f"| {label} | {r['test_bleu']:.2f} | {r['test_chrf']:.2f} | {r['best_valid_bleu']:.2f} | "
                     f"{r['train_seconds']:.0f} | {wall:.0f} |")
    return "\n".join(lines)
