"""The optimisation recipe: Adam inside l2fast.Penalized over l2fast.param_groups, the penalty
schedule named in the configuration, and the learning rate as a pure function of the step."""
from __future__ import annotations

import json
import math

import torch
from torch import nn

import l2fast

from .config import Config, ConfigError


def build_schedule(spec):
    """A schedule object from {"type": NAME, "args": [positional...], **keyword arguments}, NAME a class
    of l2fast.schedules; nested specs become schedules too, e.g.
    {"type": "Product", "args": [{"type": "Alternating", "every": 100}, {"type": "Cosine", "total": 3000}]}."""
    if isinstance(spec, dict) and "type" in spec:
        name = spec["type"]
        cls = getattr(l2fast.schedules, name, None)
        if not (isinstance(cls, type) and issubclass(cls, l2fast.schedules.Schedule)):
            raise ConfigError(f"penalty.penalty_schedule: l2fast.schedules has no schedule {name!r}")
        args = [build_schedule(v) for v in spec.get("args", [])]
        kwargs = {k: build_schedule(v) for k, v in spec.items() if k not in ("type", "args")}
        try:
            return cls(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"penalty.penalty_schedule: {name}: {e}") from None
    if isinstance(spec, list):
        return [build_schedule(s) for s in spec]
    return spec


def build_optimizer(model: nn.Module, cfg: Config):
    t, p = cfg.train, cfg.penalty
    groups = l2fast.param_groups(model, l2=p.l2, **({"no_decay": ()} if p.decay_norms_and_biases else {}))
    adam = torch.optim.Adam(groups, lr=t.lr, betas=t.adam_betas, eps=t.adam_eps)
    schedule = build_schedule(json.loads(p.penalty_schedule)) if p.penalty_schedule else None
    return l2fast.Penalized(adam, l2=p.l2, l1=p.l1, decoupled=p.decoupled, schedule=schedule)


def learning_rate(cfg: Config, step: int) -> float:
    """Peak lr after linear warm-up, then inverse-sqrt or cosine decay: a pure function of the step,
    so resuming needs no scheduler state."""
    t = cfg.train
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    if t.lr_schedule == "inverse_sqrt":
        return t.lr * math.sqrt(max(t.warmup, 1) / (step + 1))
    if t.lr_schedule == "cosine":
        progress = min(1.0, (step - t.warmup) / max(1, t.max_steps - t.warmup))
        return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return t.lr
