"""The optimisation recipe: Adam inside l2fast.Penalized over l2fast.param_groups, the penalty
schedule named in the configuration, and the learning rate as a pure function of the step."""
from __future__ import annotations

import math

import torch
from torch import nn

import l2fast

from .config import ConfigError, TrainerConfig as Config, parse_schedule


def build_schedule(spec, level: int = 1):
    """A schedule object from {"type": NAME, "args": [positional...], **keyword arguments}, NAME a class
    of l2fast.schedules; nested specs become schedules too, e.g.
    {"type": "Product", "args": [{"type": "Alternating", "every": 100}, {"type": "Cosine", "total": 3000}]}.
    level: how deep this spec sits in the nest (1 = the outermost schedule)."""
    if isinstance(spec, dict) and "type" in spec:
        if level > l2fast.schedules.MAX_NESTING:  # refused before recursing further: no RecursionError
            raise ConfigError(f"penalty.penalty_schedule nests schedules more than {l2fast.schedules.MAX_NESTING} "
                              "levels deep")
        name = spec["type"]
        public = isinstance(name, str) and not name.startswith("_")
        cls = getattr(l2fast.schedules, name, None) if public else None
        if not (isinstance(cls, type) and issubclass(cls, l2fast.schedules.Schedule)):
            raise ConfigError(f"penalty.penalty_schedule: l2fast.schedules has no schedule {name!r}")
        if not isinstance(spec.get("args", []), list):
            raise ConfigError(f"penalty.penalty_schedule: {name}: \"args\" must be a list, got {spec['args']!r}")
        args = [build_schedule(v, level + 1) for v in spec.get("args", [])]
        kwargs = {k: build_schedule(v, level + 1) for k, v in spec.items() if k not in ("type", "args")}
        try:
            return cls(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"penalty.penalty_schedule: {name}: {e}") from None
    if isinstance(spec, list):
        return [build_schedule(s, level) for s in spec]
    return spec


# Penalty options the optimizer's saved state depends on, so a resumed run cannot change them: the kind
# of decay, the schedule (a checkpoint's schedule state loads only into a schedule of the same shape,
# and would overwrite a changed one's settings), the no-decay rules (which parameters form each group,
# and so which group each saved Adam moment belongs to), and how the saved anchors and Fisher were made
# (a resumed run takes them from its checkpoint, so other options would be recorded but not used).
PENALTY_FIXED_ON_RESUME = ("decoupled", "penalty_schedule", "decay_norms_and_biases", "decay_embeddings",
                           "fisher_batches", "fisher_data", "anchor_dtype")
ANCHOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def no_decay_rules(p) -> tuple[str, ...]:
    """The l2fast.param_groups rules of the parameters the penalty section exempts: biases and norm
    weights unless decay_norms_and_biases, and embeddings where the section has decay_embeddings = false."""
    rules = () if p.decay_norms_and_biases else ("bias", "norm")
    return rules + (() if getattr(p, "decay_embeddings", True) else ("embedding",))


def build_optimizer(model: nn.Module, cfg: Config, fisher: dict | None = None):
    """Adam over the two parameter groups of l2fast.param_groups, wrapped by l2fast.Penalized.

    The coefficients are written in one place only, the decayed group (the exempt one carries 0): a
    group's own "l2" / "l1" / "l2_sp" override the wrapper's arguments, so passing them to both could
    let one silently defeat the other. With penalty.l2_sp the weights are pulled toward a copy of those
    the model holds now (build it right after loading the init-from weights), weighted by fisher
    ({parameter: F}) where given."""
    t, p = cfg.train, cfg.penalty
    groups = l2fast.param_groups(model, l2=p.l2, l1=p.l1, no_decay=no_decay_rules(p))
    anchored = {}
    if p.l2_sp:  # else the arguments are left out: a run without L2-SP builds the optimizer it always did
        groups[0]["l2_sp"], groups[1]["l2_sp"] = p.l2_sp, 0.0  # the no-decay rules say who is pulled, as for l2
        anchored = {"anchor": "current", "fisher": fisher, "anchor_dtype": ANCHOR_DTYPES[p.anchor_dtype]}
    adam = torch.optim.Adam(groups, lr=t.lr, betas=t.adam_betas, eps=t.adam_eps)
    schedule = build_schedule(parse_schedule(p.penalty_schedule)) if p.penalty_schedule else None
    # Clipping goes into the step: one norm pass, the clip factor applied inside the one-pass update.
    return l2fast.Penalized(adam, decoupled=p.decoupled, schedule=schedule,
                            max_grad_norm=t.clip_norm if t.clip_norm > 0 else None, **anchored)


def check_recipe(cfg: Config) -> None:
    """Builds the optimizer over a two-parameter stand-in (one decayed tensor, one exempt) and asks it
    for its first coefficients, then evaluates the penalty schedule at every step of the run, so that a
    schedule or penalty the library refuses fails before any data is read, with the library's own
    message."""
    stand_in = nn.Sequential(nn.Linear(1, 1, bias=False), nn.LayerNorm(1, bias=False))
    try:
        optimizer = build_optimizer(stand_in, cfg)
        optimizer.coefficients()
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"penalty: {e}") from None
    if cfg.penalty.penalty_schedule:
        schedule = build_schedule(parse_schedule(cfg.penalty.penalty_schedule))
        check_schedule_over_run(schedule, cfg.train.max_steps, len(optimizer.param_groups))


def check_schedule_over_run(schedule, max_steps: int, num_groups: int) -> None:
    """Refuses a schedule whose multipliers leave the range of a float (or turn negative) before step
    max_steps, e.g. a Step with gamma > 1: found here, not thousands of steps into the run. Time is
    counted in steps at epoch 0 (how many steps an epoch takes depends on the data); a schedule counted
    in epochs is checked at each step of the run instead (TrainerLoop.step_optimizer)."""
    for step in range(max_steps):
        try:
            multipliers = schedule.multipliers(l2fast.schedules.Clock(step=step), num_groups)
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"penalty.penalty_schedule: {e}, before train.max_steps = {max_steps}: use a schedule "
                              "whose multiplier stays in range over the run") from None
        bad = [m for m in multipliers if not (math.isfinite(m) and m >= 0)]
        if bad:
            raise ConfigError(f"penalty.penalty_schedule gives the multiplier {bad[0]} at step {step}, before "
                              f"train.max_steps = {max_steps}; multipliers must be finite and >= 0")


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
