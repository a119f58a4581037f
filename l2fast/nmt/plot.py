"""A PNG of training loss, validation BLEU/chrF and penalty value per step, from metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> None:
    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line]
    train = [r for r in rows if "loss" in r]
    valid = [r for r in rows if "bleu" in r]
    fig, (loss_ax, bleu_ax, penalty_ax) = plt.subplots(1, 3, figsize=(15, 4))
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (smoothed CE)")
    loss_ax.plot([r["step"] for r in valid], [r["valid_nll"] for r in valid], "o-", label="valid NLL")
    loss_ax.set_title("loss per target token")
    bleu_ax.plot([r["step"] for r in valid], [r["bleu"] for r in valid], "o-", label="BLEU")
    bleu_ax.plot([r["step"] for r in valid], [r["chrf"] for r in valid], "s-", label="chrF")
    bleu_ax.set_title("validation")
    penalty_ax.plot([r["step"] for r in train], [r["penalty"] for r in train])
    penalty_ax.set_title("penalty value")
    for ax in (loss_ax, bleu_ax, penalty_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    loss_ax.legend()
    bleu_ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
