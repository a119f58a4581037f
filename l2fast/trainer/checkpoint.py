"""Checkpoints written atomically: a crash or a kill mid-write never leaves a half-written file.

The bytes go to a temporary file in the same directory, are flushed to disk (fsync), and only then
replace the old checkpoint with ``os.replace``, which is atomic on POSIX and Windows. Readers see the
old complete file or the new complete file, nothing in between.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import ConfigError
from .kinds import other_kind

LATEST, BEST = "latest.pt", "best.pt"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that is not a checkpoint of this trainer."""


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


def load(path: str | Path, map_location="cpu", require: tuple[str, ...] = ()) -> dict:
    """The state saved in path; a missing, unreadable or incomplete file is a CheckpointError naming it
    (``require``: the keys the caller needs)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    unreadable = f"checkpoint {path} cannot be read, it is truncated or corrupt"
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:  # a text file would get torch's long pickle-security message instead
            raise CheckpointError(f"{unreadable} (not a zip archive)")
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and bytes, never code to run.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds here (EOFError, RuntimeError from the zip reader, pickle errors)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{unreadable} ({reason})") from None
    missing = [key for key in require if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (it has no {missing[0]!r})")
    return state


def saved_config(state: dict, config_cls, build_config, path: str | Path):
    """The configuration a checkpoint was trained with, built and checked by build_config. A checkpoint
    of the other trainer is a CheckpointError naming the commands that read it; one whose configuration
    neither trainer wrote, a CheckpointError with build_config's reason."""
    expected = config_cls.KIND
    kind = other_kind(state["config"], expected)
    if kind:
        raise CheckpointError(f"{path} is not a checkpoint of the {expected.model}: the {kind.trainer} made it "
                              f"({kind.train}); read it with {kind.readers}")
    try:
        return build_config(state["config"], where=str(path))
    except ConfigError as e:
        raise CheckpointError(f"{path} is not a checkpoint of the {expected.model} ({e})") from None


def inference_weights(state: dict) -> dict:
    """The weights to translate with: the moving average where the run kept one, else the model's."""
    average = state.get("average")
    return average["model"] if average else state["model"]


def is_temporary(path: Path) -> bool:
    """A file atomic_save was writing (it is never loaded)."""
    return path.match(".*.pt.*.tmp")


def remove_stale_temporaries(directory: str | Path) -> None:
    """Deletes temporaries left by a process killed mid-write (they are never loaded)."""
    for tmp in Path(directory).iterdir():
        if is_temporary(tmp):
            tmp.unlink(missing_ok=True)
