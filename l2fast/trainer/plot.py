"""A PNG of a run's metrics.jsonl: one panel per quantity, each series drawn from the rows that hold it."""
from __future__ import annotations

import json
from pathlib import Path

# A panel: (title, [(metric key, label, matplotlib format)]); a label of None draws no legend.
Panel = tuple[str, list[tuple[str, str | None, str]]]


def plot_panels(metrics_path: str | Path, png_path: str | Path, panels: list[Panel]) -> None:
    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, series) in zip(axes, panels):
        for key, label, style in series:
            points = [r for r in rows if key in r]
            ax.plot([r["step"] for r in points], [r[key] for r in points], style, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if any(label for _, label, _ in series):
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
