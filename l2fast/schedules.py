"""Penalty schedules: how the penalty coefficients change over training.

A schedule gives one *multiplier* per parameter group; the coefficient a group uses at a step is its
base coefficient (``param_groups[i]["l2"]`` and ``["l1"]``, set in ``Penalized(...)`` or in the group)
times that multiplier. Both L2 and L1 coefficients are multiplied by the same multiplier.

Time is a :class:`Clock`: the number of optimizer steps applied so far and the number of epochs
completed. ``Penalized`` owns the clock: ``step()`` advances it once per applied step (a step that
``GradScaler`` skips is not applied and does not count), ``Penalized.end_epoch()`` once per epoch.
Step ``k`` (counted from 0) uses the multipliers at ``Clock(step=k, epoch=...)``, so the first step
sees the schedule's starting value. Each schedule reads either the step or the epoch count, as its
``unit`` says.

Schedules are small, pure objects: they hold configuration, never the clock, so one schedule can be
evaluated, shared, or nested in another. ``state_dict()`` records the configuration (for
checkpoints: ``Penalized.state_dict()`` saves it with the clock); ``load_state_dict()`` restores it
into a schedule of the same type.

Compose them: ``Sequential([Warmup(1000), Cosine(9000)], milestones=[1000])`` warms up, then decays;
``Alternating(100) * Cosine(10000)`` (a :class:`Product`) alternates under a decaying envelope.
Nests are at most ``MAX_NESTING`` levels deep, and the abstract classes cannot be built.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

UNITS = ("step", "epoch")
# Schedules nest (Product, Sequential); evaluating, saving and loading one recurses once per level, so
# a deeper nest would run into Python's recursion limit instead of failing with a message.
MAX_NESTING = 32


class Clock(NamedTuple):
    step: int = 0  # optimizer steps applied so far
    epoch: int = 0  # epochs completed

    def shifted(self, unit: str, offset: int) -> "Clock":
        """The clock ``offset`` units earlier in ``unit``: where a later segment of a Sequential starts from 0."""
        return self._replace(**{unit: getattr(self, unit) - offset})


def _check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"l2fast.schedules: unit must be 'step' or 'epoch', got {unit!r}")
    return unit


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"l2fast.schedules: {name} must be a positive integer, got {value!r}")
    return value


def _level(value, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"l2fast.schedules: {name} must be a finite number >= 0, got {value!r}")
    return value


class Schedule:
    """Base class. Subclasses whose multiplier is the same for every group implement ``at(t)``, with
    ``t`` the clock's count in ``self.unit``; group-dependent ones override ``multipliers``.

    ``state_dict`` holds every attribute that is not a function, with nested schedules as their own
    state dicts.
    """

    unit = "step"

    def __new__(cls, *args, **kwargs):
        # An abstract schedule would be accepted here and fail at its first step instead.
        if cls.at is Schedule.at and cls.multipliers is Schedule.multipliers:
            raise TypeError(f"l2fast.schedules: {cls.__name__} is abstract (it defines no multiplier); use one of "
                            f"{', '.join(concrete_schedules())}")
        return super().__new__(cls)

    def multipliers(self, clock: Clock, num_groups: int) -> list[float]:
        """One multiplier per parameter group at this time."""
        return [self.at(getattr(clock, self.unit))] * num_groups

    def at(self, t: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement at(t) or multipliers(clock, num_groups)")

    def units(self) -> set[str]:
        """The clock counts this schedule reads."""
        return {self.unit}

    def children(self) -> list["Schedule"]:
        """The schedules nested in this one."""
        nested = []
        for value in vars(self).values():
            if isinstance(value, Schedule):
                nested.append(value)
            elif isinstance(value, list):
                nested += [child for child in value if isinstance(child, Schedule)]
        return nested

    def depth(self) -> int:
        """Levels of nesting: 1 for a schedule without children."""
        return 1 + max((child.depth() for child in self.children()), default=0)

    def __mul__(self, other: "Schedule") -> "Product":
        if not isinstance(other, Schedule):
            return NotImplemented
        return Product(self, other)

    def state_dict(self) -> dict:
        state = {"type": type(self).__name__}
        for name, value in vars(self).items():
            if isinstance(value, Schedule):
                state[name] = value.state_dict()
            elif isinstance(value, list) and value and isinstance(value[0], Schedule):
                state[name] = [child.state_dict() for child in value]
            elif not callable(value):
                state[name] = value
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"l2fast.schedules: cannot load the state of a {state.get('type')} schedule into a {type(self).__name__}"
            )
        for name, saved in state.items():
            if name == "type":
                continue
            if name not in vars(self):
                raise ValueError(f"l2fast.schedules: {type(self).__name__} has no setting {name!r} to load")
            current = getattr(self, name)
            if isinstance(current, Schedule):
                current.load_state_dict(saved)
            elif isinstance(current, list) and current and isinstance(current[0], Schedule):
                if len(saved) != len(current):
                    raise ValueError(
                        f"l2fast.schedules: saved {type(self).__name__}.{name} has {len(saved)} schedules, this one {len(current)}"
                    )
                for child, child_state in zip(current, saved):
                    child.load_state_dict(child_state)
            else:
                setattr(self, name, tuple(saved) if isinstance(current, tuple) else saved)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Constant(Schedule):
    """The same multiplier at every step (1.0: the base coefficients unchanged)."""

    def __init__(self, value: float = 1.0):
        self.value = _level(value, "value")

    def at(self, t: int) -> float:
        return self.value

    def units(self) -> set[str]:
        return set()


class Warmup(Schedule):
    """Linear warm-up: ``start`` at t = 0, rising in equal steps to 1.0 at t = ``total``, then 1.0."""

    def __init__(self, total: int, start: float = 0.0, unit: str = "step"):
        self.total = _positive_int(total, "total")
        self.start = _level(start, "start")
        self.unit = _check_unit(unit)

    def at(self, t: int) -> float:
        return self.start + (1.0 - self.start) * min(t, self.total) / self.total


class _Decay(Schedule):
    """From ``start`` at t = 0 to ``end`` at t = ``total``, along the curve of the subclass."""

    def __init__(self, total: int, start: float = 1.0, end: float = 0.0, unit: str = "step"):
        self.total = _positive_int(total, "total")
        self.start = _level(start, "start")
        self.end = _level(end, "end")
        self.unit = _check_unit(unit)


class Linear(_Decay):
    """Linear ramp from ``start`` at t = 0 to ``end`` at t = ``total``; ``end`` afterwards."""

    def at(self, t: int) -> float:
        return self.start + (self.end - self.start) * min(t, self.total) / self.total


class Cosine(_Decay):
    """Half-cosine from ``start`` at t = 0 to ``end`` at t = ``total``; ``end`` afterwards."""

    def at(self, t: int) -> float:
        progress = min(t, self.total) / self.total
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Step(Schedule):
    """Multiplied by ``gamma`` every ``every`` units: ``gamma ** (t // every)``. With ``gamma > 1`` the
    multiplier grows without bound; at the first step where it would leave the range of a float,
    ``at`` raises ValueError naming that step (a trainer can check its whole run up front)."""

    def __init__(self, every: int, gamma: float = 0.1, unit: str = "step"):
        self.every = _positive_int(every, "every")
        self.gamma = _level(gamma, "gamma")
        self.unit = _check_unit(unit)

    def at(self, t: int) -> float:
        k = t // self.every
        try:
            return self.gamma ** k
        except OverflowError:  # gamma > 1 grows without bound: refuse, as a float cannot hold it
            raise ValueError(f"l2fast.schedules: {self!r} reaches gamma ** {k} at {self.unit} {t}, beyond the range "
                             f"of a float ({sys.float_info.max:.3g})") from None


class Alternating(Schedule):
    """Switches the penalty between two levels every ``every`` units (steps or epochs).

    Time is cut into phases of ``every`` units; phase ``k = t // every`` (counted from 0).

    * ``rotate=False``: every group in ``groups`` gets ``levels[0]`` in even phases and ``levels[1]``
      in odd ones: with the default levels (1.0, 0.0), the penalty is on for ``every`` steps, off for
      ``every`` steps, and so on, starting on.
    * ``rotate=True``: the groups in ``groups`` take turns: in phase ``k`` the group
      ``groups[k % len(groups)]`` gets ``levels[0]`` and the other listed groups get ``levels[1]``.
      With the default levels, exactly one group is penalised at a time, in the listed order.

    ``groups`` lists the indices of the parameter groups that alternate (default: all, in index
    order); groups not listed keep multiplier 1.0. Indices beyond the optimizer's groups are an error.
    """

    def __init__(
        self,
        every: int,
        levels: Sequence[float] = (1.0, 0.0),
        rotate: bool = False,
        groups: Sequence[int] | None = None,
        unit: str = "step",
    ):
        self.every = _positive_int(every, "every")
        if len(levels) != 2:
            raise ValueError(f"l2fast.schedules: Alternating needs two levels, got {len(levels)}")
        self.levels = tuple(_level(v, f"levels[{i}]") for i, v in enumerate(levels))
        self.rotate = bool(rotate)
        self.groups = None if groups is None else [int(g) for g in groups]
        if self.groups is not None and (not self.groups or len(set(self.groups)) != len(self.groups)):
            raise ValueError(f"l2fast.schedules: Alternating groups must be distinct indices, got {groups!r}")
        self.unit = _check_unit(unit)

    def multipliers(self, clock: Clock, num_groups: int) -> list[float]:
        members = list(range(num_groups)) if self.groups is None else self.groups
        if any(not 0 <= g < num_groups for g in members):
            raise ValueError(f"l2fast.schedules: Alternating groups {members} name groups beyond the optimizer's {num_groups}")
        phase = getattr(clock, self.unit) // self.every
        result = [1.0] * num_groups
        for position, g in enumerate(members):
            on = position == phase % len(members) if self.rotate else phase % 2 == 0
            result[g] = self.levels[0] if on else self.levels[1]
        return result


class Sequential(Schedule):
    """One schedule after another: ``schedules[j]`` runs from ``milestones[j-1]`` (0 for the first) and
    sees time counted from its own start, so ``Sequential([Warmup(1000), Cosine(9000)], [1000])`` is a
    1000-step warm-up followed by a 9000-step cosine decay. Milestones count ``unit``s; every child that
    reads time must use the same unit.
    """

    def __init__(self, schedules: Sequence[Schedule], milestones: Sequence[int], unit: str = "step"):
        self.schedules = list(schedules)
        self.milestones = [int(m) for m in milestones]
        self.unit = _check_unit(unit)
        if not self.schedules or any(not isinstance(s, Schedule) for s in self.schedules):
            raise ValueError("l2fast.schedules: Sequential needs a non-empty list of schedules")
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(
                f"l2fast.schedules: Sequential got {len(self.schedules)} schedules and {len(self.milestones)} "
                "milestones; give one milestone fewer than schedules"
            )
        if any(b <= a for a, b in zip([0] + self.milestones, self.milestones)):
            raise ValueError(f"l2fast.schedules: milestones must be positive and increasing, got {self.milestones}")
        for s in self.schedules:
            if not s.units() <= {self.unit}:
                raise ValueError(f"l2fast.schedules: Sequential counts {self.unit}s but {s!r} counts {sorted(s.units())}")
        _check_nesting(self)

    def multipliers(self, clock: Clock, num_groups: int) -> list[float]:
        t = getattr(clock, self.unit)
        segment = sum(t >= m for m in self.milestones)
        start = self.milestones[segment - 1] if segment else 0
        return self.schedules[segment].multipliers(clock.shifted(self.unit, start), num_groups)


class Product(Schedule):
    """The product of several schedules' multipliers, group by group (also written ``a * b``)."""

    def __init__(self, *schedules: Schedule):
        if not schedules or any(not isinstance(s, Schedule) for s in schedules):
            raise ValueError("l2fast.schedules: Product needs one or more schedules")
        self.schedules = list(schedules)
        _check_nesting(self)

    def units(self) -> set[str]:
        return set().union(*(s.units() for s in self.schedules))

    def multipliers(self, clock: Clock, num_groups: int) -> list[float]:
        result = [1.0] * num_groups
        for schedule in self.schedules:
            result = [a * b for a, b in zip(result, schedule.multipliers(clock, num_groups))]
        return result


class Lambda(Schedule):
    """Any function of time: ``fn(t)`` with ``t`` the step (or epoch) count; its state_dict holds only the unit."""

    def __init__(self, fn: Callable[[int], float], unit: str = "step"):
        if not callable(fn):
            raise TypeError(f"l2fast.schedules: Lambda needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.unit = _check_unit(unit)

    def at(self, t: int) -> float:
        return float(self.fn(t))


def _check_nesting(schedule: Schedule) -> None:
    depth = 1 + max(child.depth() for child in schedule.children())  # the children are checked already
    if depth > MAX_NESTING:
        raise ValueError(f"l2fast.schedules: {type(schedule).__name__} would nest schedules {depth} levels deep; "
                         f"at most {MAX_NESTING} are allowed")


def concrete_schedules() -> list[str]:
    """The names of the public schedule classes that can be built (every one but the abstract ones)."""
    names, pending = set(), [Schedule]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        defines = cls.at is not Schedule.at or cls.multipliers is not Schedule.multipliers
        if defines and not cls.__name__.startswith("_") and cls.__module__ == __name__:
            names.add(cls.__name__)
    return sorted(names)


def as_schedule(schedule: Schedule | Callable[[int], float] | None) -> Schedule:
    """None means a constant multiplier of 1; a plain function of the step count becomes a Lambda."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, Schedule):
        return schedule
    if callable(schedule):
        return Lambda(schedule)
    raise TypeError(f"l2fast: schedule must be an l2fast.schedules.Schedule or a function of the step, got {type(schedule).__name__}")
