"""Checkpoints written atomically: a crash or a kill mid-write never leaves a half-written file.

The bytes go to a temporary file in the same directory, are flushed to disk (fsync), and only then
replace the old checkpoint with ``os.replace``, which is atomic on POSIX and Windows. Readers see the
old complete file or the new complete file, nothing in between.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

LATEST, BEST = "latest.pt", "best.pt"


def atomic_save(state: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # weights_only: a checkpoint holds tensors, numbers, strings and bytes, never code to run.
    return torch.load(path, map_location=map_location, weights_only=True)


def inference_weights(state: dict) -> dict:
    """The weights to translate with: the moving average where the run kept one, else the model's."""
    average = state.get("average")
    return average["model"] if average else state["model"]


def remove_stale_temporaries(directory: str | Path) -> None:
    """Deletes temporaries left by a process killed mid-write (they are never loaded)."""
    for tmp in Path(directory).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
