"""Fine-tuning: a fresh run that starts from another run's checkpoint (``train.init_from``), and the
importance weights of its pull back toward those weights (EWC's Fisher, ``penalty.fisher_batches``).

A fresh run with ``init_from`` takes the checkpoint's weights (its weight average where it kept one:
the weights it was scored with) and its tokenizer; optimizer state, step count, learning-rate and
penalty schedules and random state start afresh. The checkpoint is read and checked before the run
directory is touched, so a refused start writes nothing. A resumed fine-tuning run never reads it
again: its weights are in its own latest.pt, and so are the anchors and the Fisher (in the optimizer
state).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import l2fast

from . import checkpoint
from .config import ConfigError
from .kinds import other_kind
from .runtime import Environment
from .text import DataError


@dataclass(frozen=True)
class InitFrom:
    """What a fresh fine-tuning run takes from its checkpoint."""
    path: Path  # absolute, as the run records it
    weights: dict  # a model state dict
    tokenizer: dict  # the tokenizer's state dict
    step: int  # the update the checkpoint was saved at

    def record(self) -> dict:
        """Where the run started from, as its checkpoints keep it."""
        return {"checkpoint": str(self.path), "step": self.step}


def read_init_from(cfg, device: torch.device, check_init_from: Callable[[dict, object, Path], None]) -> InitFrom:
    """The checkpoint of cfg.train.init_from, refused where it is not one of this trainer's or where
    ``check_init_from(saved config, cfg, path)`` finds its model or tokenizer options differ from cfg's."""
    path = Path(cfg.train.init_from)
    try:
        state = checkpoint.load(path, device, require=("config", "tokenizer", "model", "counters"))
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"train.init_from: {e}") from None
    expected = type(cfg).KIND
    kind = other_kind(state["config"], expected)
    if kind:
        raise checkpoint.CheckpointError(f"train.init_from {path} is a checkpoint of the {kind.model} ({kind.train} made "
                                         f"it); the {expected.trainer} fine-tunes checkpoints of the {expected.model}")
    check_init_from(state["config"], cfg, path)
    return InitFrom(path.resolve(), checkpoint.inference_weights(state), state["tokenizer"], state["counters"]["step"])


def check_same_weights(saved_config: dict, cfg, where: Path, options: tuple[tuple[str, str], ...]) -> None:
    """Refuses a checkpoint trained with other values of options ((section, name) pairs: the model's shape
    and the tokenizer's options) than cfg has: its weights would not fit the model, or config.json would
    record a tokenizer the run does not use."""
    new, defaults = cfg.to_dict(), type(cfg)().to_dict()
    for section, name in options:
        old = saved_config.get(section, {}).get(name, defaults[section][name])  # a checkpoint older than the option
        if old != new[section][name]:
            config = Path(where).parent / "config.json"
            hint = f" (--config {config} gives every option it was trained with)" if config.is_file() else ""
            raise ConfigError(f"train.init_from {where} was trained with {section}.{name} = {old!r}, but this run asks "
                              f"for {new[section][name]!r}: a fine-tuning run keeps the checkpoint's model shape and "
                              f"tokenizer, so give {old!r}{hint}")


def load_weights(model: nn.Module, init: InitFrom) -> None:
    try:
        model.load_state_dict(init.weights)
    except RuntimeError as e:  # torch lists every mismatch; the first says enough
        reason = str(e).strip().splitlines()[-1].strip()
        raise checkpoint.CheckpointError(f"train.init_from {init.path}: its weights do not fit the model ({reason})") from None


@dataclass(frozen=True)
class Fisher:
    weights: dict  # {parameter: F}, scaled to mean 1 over all weights
    mean: float  # the mean of F before scaling
    peak: float  # the largest F after scaling (how much more one weight is held than the average)


def estimate_fisher(model: nn.Module, batches: list, loss: Callable, env: Environment, dtype: torch.dtype) -> Fisher:
    """The diagonal empirical Fisher of model's weights over batches, per batch (l2fast.diagonal_fisher with
    per_example=False: the squared gradient of each batch's mean loss, averaged over the batches), without
    dropout, each process estimating on its share of the batches.

    It is scaled to mean 1 over all weights: then penalty.l2_sp is the same average pull with and without
    the Fisher, which only moves it toward the weights that mattered to the original task. (A per-batch
    Fisher is smaller than a per-example one by about the batch size where examples disagree; the scale
    absorbs that too.) Kept in dtype, the anchors' dtype."""
    was_training = model.training
    model.eval()
    try:
        fisher = l2fast.diagonal_fisher(model, batches[env.rank::env.world_size], loss,
                                        group=dist.group.WORLD if env.distributed else None)
    finally:
        model.train(was_training)
    total = sum(f.double().sum() for f in fisher.values())
    mean = float(total / sum(f.numel() for f in fisher.values()))
    if not (math.isfinite(mean) and mean > 0):
        raise DataError(f"penalty.fisher_data: the Fisher of the --init-from weights on it has mean {mean}: its "
                        "gradients were all zero or not finite, so it cannot say which weights matter")
    params = dict(model.named_parameters())
    scaled = {params[name]: (f / mean).to(dtype) for name, f in fisher.items()}
    return Fisher(scaled, mean, max(float(f.max()) for f in scaled.values()))
