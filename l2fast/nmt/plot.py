"""A PNG of training loss, validation BLEU/chrF and penalty value per step, from metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

from ..trainer.plot import plot_panels

PANELS = [
    ("loss per target token", [("loss", "train loss (smoothed CE)", "-"), ("valid_nll", "valid NLL", "o-")]),
    ("validation", [("bleu", "BLEU", "o-"), ("chrf", "chrF", "s-")]),
    ("penalty value", [("penalty", None, "-")]),
]


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> None:
    plot_panels(metrics_path, png_path, PANELS)
