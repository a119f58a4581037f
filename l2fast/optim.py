"""Penalized: any torch optimizer, with its weight penalty applied by fused native kernels.

``l2fast.Penalized(torch.optim.Adam(params, lr, weight_decay=0), l2=1e-4)`` steps exactly like
``torch.optim.Adam(params, lr, weight_decay=1e-4)``; with ``decoupled=True`` exactly like
``torch.optim.AdamW(params, lr, weight_decay=1e-4)``. Before the inner optimizer's step, one fused
call per device adds ``l2 * w + l1 * sign(w)`` to every penalised gradient (or, decoupled, multiplies
every penalised weight by ``1 - lr * l2``, as AdamW does) and measures the penalty
``l2/2 * sum(w**2) + l1 * sum(|w|)`` in the same pass; ``last_penalty`` keeps it as a device tensor.

Coefficients: explicit beats implicit. ``Penalized(l2=..., l1=...)`` are the defaults; a group's own
``"l2"`` / ``"l1"`` key is a per-group override and wins. ``l2fast.param_groups`` writes a key into its
penalised group only for a coefficient you pass it (its exempt group always carries 0.0 for both), so
``Penalized(Adam(l2fast.param_groups(model)), l2=1e-2, l1=1e-3)`` penalises the first group with both
and exempts the second. An argument that no group uses (every group carries that key, with another
value) draws a warning. A schedule multiplies the coefficients step by step (see ``l2fast.schedules``).

Anchored penalties (L2-SP, EWC): ``l2_sp`` pulls each anchored weight toward its anchor ``w0``, with the
gradient ``l2_sp * F * (w - w0)`` (``F``: EWC's importance, 1 without ``fisher``) and the value
``l2_sp/2 * sum(F * (w - w0)**2)``, beside l2 and l1 in the same fused pass. The anchors (and ``F``)
are resolved, checked and carried in state dicts by ``l2fast.anchors``.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import math
import sys
import warnings
from collections.abc import Callable, Iterable
from numbers import Real

import torch
import torch.distributed as dist

from . import anchors, fused_step, functional, inner_step, sharding
from .fused_step import Coefficients
from .schedules import Clock, Schedule, as_schedule

PENALTY_KEYS = ("l2", "l1", "l2_sp")
# Group keys written by torch itself (named parameters, LR schedulers, SWA) or read by common tools
# (a group's "name"): allowed beside the inner optimizer's own keys.
TORCH_GROUP_KEYS = frozenset(
    {"params", "param_names", "name", "initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum", "swa_lr"}
)
STATE_KEY = "l2fast"  # where Penalized.state_dict() keeps the clock and the schedule


def _coefficient(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"l2fast.Penalized: {where} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"l2fast.Penalized: {where} = {value} is invalid; penalty coefficients must be finite and >= 0")
    return value


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (never, before CUDA is initialised)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _warn_unused_arguments(groups: list[dict], defaults: dict) -> None:
    """Warns about a non-zero coefficient argument that no group uses: every group carries the key, and
    none with that value. (Groups that exempt some parameters with 0.0 while others take the argument,
    as ``l2fast.param_groups`` makes them, are the common case and stay quiet.)"""
    for key, value in defaults.items():
        if value != 0.0 and all(key in group and group[key] != value for group in groups):
            overrides = sorted({float(group[key]) for group in groups})
            warnings.warn(
                f"l2fast.Penalized: {key}={value} is not used: every param group sets its own '{key}' "
                f"({overrides}), and a group's key wins over the argument. Leave '{key}' out of the groups "
                f"that should get {key}={value} (l2fast.param_groups writes it only when you pass {key}=)",
                UserWarning,
                stacklevel=3,
            )


class _Bucket:
    """Tensors penalised in one fused call: one device, one maximize setting, one set of process groups
    to sum the value over, one kind of pull (none, toward anchors, toward anchors weighted by F: the ops
    take anchors for all tensors of a call or for none). Coefficients are kept once per param group, as
    runs, so the per-tensor Python loop of every step stays short."""

    def __init__(self, maximize: bool, measure_only: bool = False):
        self.maximize = maximize
        self.measure_only = measure_only  # the inner step applies the penalty gradient as weight_decay
        self.params, self.grads, self.runs = [], [], []
        self.pulls: dict[str, list] = {}  # the ops' anchors= / fisher= lists, in a bucket of anchored tensors
        self.covered = 0

    def add(self, param: torch.Tensor, grad: torch.Tensor, pull: dict) -> None:
        self.params.append(param)
        self.grads.append(grad)
        for name, tensors in pull.items():
            self.pulls.setdefault(name, []).extend(tensors)

    def pull_arguments(self, decoupled: bool) -> dict:
        """The ops' arguments of the pull toward anchors ({} in a bucket of unanchored tensors)."""
        if not self.pulls:
            return {}
        factors = {"sp_factors": self.per_tensor("sp_factor")} if decoupled else {}
        return dict(self.pulls, l2_sp=self.per_tensor("l2_sp"), **factors)

    def end_group(self, **coefficients: float) -> None:
        """Gives the tensors added since the last call these coefficients (l2, l1, decay, l2_sp, sp_factor)."""
        count = len(self.params) - self.covered
        if count:
            self.runs.append((count, coefficients))
            self.covered += count

    def per_tensor(self, name: str) -> list[float]:
        return [c for count, coefficients in self.runs for c in [coefficients[name]] * count]


def _add_penalty_grads(bucket: _Bucket) -> torch.Tensor:
    """grad += l2 * w + l1 * sign(w) (+ l2_sp * F * (w - w0) toward anchors) over the bucket; returns the
    penalty value."""
    l2s, l1s, pull = bucket.per_tensor("l2"), bucket.per_tensor("l1"), bucket.pull_arguments(decoupled=False)
    if not bucket.maximize:
        return functional.add_penalty_grad_(bucket.params, bucket.grads, l2s, l1s, **pull)
    # The inner step negates a maximize group's gradient, so the penalty gradient is subtracted here
    # to come out as a pull towards zero (or the anchors). Negation is exact: -((-g) + step) is g - step.
    torch._foreach_neg_(bucket.grads)
    value = functional.add_penalty_grad_(bucket.params, bucket.grads, l2s, l1s, **pull)
    torch._foreach_neg_(bucket.grads)
    return value


def _sum_by_process_groups(values: list[tuple[tuple, torch.Tensor]]) -> dict[tuple, torch.Tensor]:
    """Adds up the bucket values that are summed over the same process groups (buckets of several devices)."""
    sums: dict[tuple, torch.Tensor] = {}
    for reduce_over, value in values:
        previous = sums.get(reduce_over)
        sums[reduce_over] = value if previous is None else previous + value.to(previous.device)
    return sums


def _misspelling_of(key, known: set) -> str | None:
    """The known key that key nearly spells (case aside), if any."""
    if not isinstance(key, str):
        return None
    by_lower = {k.lower(): k for k in known if isinstance(k, str)}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.8)
    return by_lower[close[0]] if close else None


def _option_names(optimizer: torch.optim.Optimizer) -> set[str]:
    """The group options the optimizer knows: its defaults, and those of the local optimizer it
    steps for it (ZeroRedundancyOptimizer keeps that one in ``.optim`` and copies its group keys)."""
    names = set(optimizer.defaults)
    local = getattr(optimizer, "optim", None)
    if isinstance(local, torch.optim.Optimizer):
        names |= set(local.defaults)
    return names


class _StepOverrides:
    """What the two-pass path changes for the inner step only, undone after it."""

    def __init__(self):
        self._grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._weight_decays: list[tuple[dict, float]] = []

    def replace_grad(self, p: torch.Tensor, stand_in: torch.Tensor) -> None:
        self._grads.append((p, p.grad))
        p.grad = stand_in

    def set_weight_decay(self, group: dict, value: float) -> None:
        self._weight_decays.append((group, group["weight_decay"]))
        group["weight_decay"] = value

    def undo(self) -> None:
        for p, grad in self._grads:
            p.grad = grad
        for group, value in self._weight_decays:
            group["weight_decay"] = value


def _applies_weight_decay(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether the inner step adds ``weight_decay * w`` to the gradient itself, exactly as the coupled
    penalty does: torch's own Adam and SGD (AdamW's decay is decoupled)."""
    return type(optimizer) in (torch.optim.Adam, torch.optim.SGD) and not group.get("decoupled_weight_decay", False)


def _grad_copy(p: torch.Tensor, dtensor: type | None) -> torch.Tensor:
    """A copy of p.grad in p's own memory layout (a gradient set in another layout is copied into it).
    A DTensor or sparse gradient is cloned as it is (the penalty ops refuse a sparse one, as torch's
    Adam and SGD refuse weight_decay with it)."""
    if (dtensor is not None and isinstance(p, dtensor)) or p.grad.layout != torch.strided:
        return p.grad.clone()
    return torch.empty_like(p, dtype=p.grad.dtype, memory_format=torch.preserve_format).copy_(p.grad)


def _memory_span(p: torch.Tensor) -> tuple[int, int] | None:
    """The byte range p's elements occupy in its storage; None for what holds no memory of its own."""
    if p.numel() == 0 or p.device.type == "meta":
        return None
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(p.shape, p.stride()))
    start = p.untyped_storage().data_ptr() + p.storage_offset() * p.element_size()
    return start, start + extent * p.element_size()


def _check_listed_once(groups: list[dict]) -> None:
    """Refuses a parameter listed twice, or two parameters that share memory: the one-pass kernels and
    the penalty would update that memory twice per step, each time from the same old value.
    (torch.optim warns about a parameter listed twice in one group and refuses one in two groups.)"""
    spans = []
    for i, group in enumerate(groups):
        for j, p in enumerate(group["params"]):
            span = _memory_span(p.to_local() if hasattr(p, "to_local") else p)
            if span is not None:
                spans.append((span, f"param_groups[{i}]['params'][{j}]"))
    spans.sort()
    for (previous, first), (span, second) in zip(spans, spans[1:]):
        if span[0] < previous[1]:
            same = span == previous
            raise ValueError(
                f"l2fast.Penalized: {second} {'is the same tensor as' if same else 'shares memory with'} {first}; "
                "list each parameter once, in one group (a weight tied between modules is one parameter)"
            )


class Penalized(torch.optim.Optimizer):
    """Wraps ``optimizer`` and applies weight penalties in its ``step``.

    Args:
        optimizer: any ``torch.optim.Optimizer``, built with ``weight_decay=0`` (a group that has both
            a non-zero ``weight_decay`` and a non-zero ``l2`` is an error: the L2 penalty would be
            applied twice).
        l2, l1: default coefficients for groups without their own ``"l2"`` / ``"l1"`` (a group's key wins;
            a non-zero argument that every group overrides is warned about). Coupled (the default),
            ``l2`` means what ``weight_decay`` means in torch's SGD and Adam: the gradient gains
            ``l2 * w``; ``l1`` adds ``l1 * sign(w)``.
        decoupled: apply L2 as AdamW applies ``weight_decay``: ``w *= 1 - lr * l2`` before the inner
            step, with the group's current ``lr``. L2 only (a decoupled L1 is not defined by torch).
        schedule: an ``l2fast.schedules.Schedule`` (or a function of the step count) that multiplies
            every group's coefficients (``l2_sp`` too); it advances once per applied step, or per
            ``end_epoch()``.
        l2_sp: default coefficient of the pull toward anchors (L2-SP; EWC with ``fisher``) for groups
            without their own ``"l2_sp"`` (a group's key wins, as for ``l2``). Coupled, the gradient gains
            ``l2_sp * F * (w - w0)``; decoupled, ``w -= lr * l2_sp * F * (w - w0)`` before the inner step,
            from the same old weights as the decay. The value adds ``l2_sp/2 * sum(F * (w - w0)**2)``.
            A group with ``l2_sp > 0`` needs anchors (refused at the step otherwise).
        anchor: the weights ``w0`` to pull toward: ``None`` (no pull); ``"current"`` (a snapshot of every
            parameter now); ``{param: tensor}``; ``{name: tensor}`` (a state dict) or an ``nn.Module``
            (its ``named_parameters()``), matched with the groups' ``"param_names"`` (build the inner
            optimizer from ``model.named_parameters()``, or ``l2fast.param_groups(model,
            with_names=True)``). Copied (the given tensors are not kept), in the parameter's memory
            layout on its device. A parameter without an anchor gets no pull and costs nothing;
            parameters added later by ``add_param_group`` have none. A name that matches no parameter,
            or a name-keyed map without a parameter of a group with ``l2_sp > 0``, is refused; so are
            the parameter itself and tensors of another shape. A DTensor parameter's anchor is a
            DTensor with its placements (``"current"`` makes one).
        fisher: the importance ``F`` of each anchored weight (EWC's diagonal Fisher), in the same forms
            (``l2fast.diagonal_fisher``'s ``{name: F}`` fits), stored in its anchor's dtype; needs
            ``anchor``. Anchored parameters without one get ``F = 1``. Negative or non-finite values are
            refused (one min/max pass per tensor, at construction).
        anchor_dtype: the dtype the anchors (and ``F``) are stored in: ``None`` (each parameter's own, or
            bfloat16 for an anchor given in bfloat16) or ``torch.bfloat16`` (half the memory of float32
            anchors; the pull is computed in float32).
        shard_group: for parameters sharded without DTensor (FSDP1 flat parameters, ZeRO-style
            shards): the process group over which each shard's penalty value is summed. DTensor
            parameters (FSDP2's ``fully_shard``) are found and reduced over their mesh by themselves.
        extra_group_keys: group keys your groups carry on purpose that nearly spell a known option
            (other unknown keys are left alone, as torch leaves them; a near-miss such as
            ``weight_decy`` is refused as a likely typo, whenever it appears).
        fused: ``"auto"`` (default) takes the one-pass step when the inner optimizer is exactly
            ``torch.optim.Adam``, ``AdamW`` or ``SGD`` and every group's options are supported: one
            native pass per step reads w, g and the optimizer state once, with the penalty, the
            GradScaler unscaling, the clip coefficient and the update inside it. ``True`` insists
            (an unsupported optimizer, option or step is an error naming it); ``False`` keeps the
            two-pass path (penalty pass, then the inner optimizer's own step). ``fused`` (the
            attribute) says which path ``step`` takes. DTensor parameters are stepped shard by shard.
            Under ``"auto"`` a step with sparse gradients, or gradients or state in another memory
            layout (or placement) than their parameter takes the two-pass path.
        max_grad_norm: clip the global L2 norm of all gradients of the optimizer's parameters to this
            value, as ``torch.nn.utils.clip_grad_norm_`` before the step would (the penalty gradient is
            added after clipping, as an inner ``weight_decay`` would be). On the one-pass path the norm
            is one fused pass over the gradients and the clip coefficient is applied inside the update;
            ``last_grad_norm`` keeps the norm (a device tensor) for logging.

    The wrapper is an Optimizer: ``param_groups``, ``state`` and ``defaults`` are the inner
    optimizer's own objects; ``zero_grad``, ``add_param_group``, ``state_dict``, ``load_state_dict``,
    step hooks, LR schedulers and ``GradScaler`` work as with the inner optimizer. Under
    ``GradScaler.step`` the penalty is added to unscaled gradients, and a step skipped for inf/NaN
    gradients applies no penalty and does not advance the schedule. After ``step``, ``p.grad`` is
    the gradient as torch's own step leaves it: unscaled and clipped, without the penalty term.
    Hooks registered on the wrapper, on the inner optimizer and globally fire once per step; under
    ``torch.compile`` the step runs eagerly (README, "Behaves like torch"). With a closure, Adam,
    AdamW and SGD evaluate it once and take the one-pass step, returning its loss, as torch does; an
    optimizer on the two-pass path (which may evaluate the closure repeatedly, as LBFGS does) sees the
    penalised objective: the closure's loss plus the penalty value, with its gradient (decoupled
    decay is applied once, after the first evaluation, as AdamW does).

    Distributed: under DistributedDataParallel the gradients are already averaged and the weights
    replicated when ``step`` runs, so nothing is communicated. With sharded parameters each process
    penalises its own shard (the penalty gradient is elementwise: no communication) and the shards'
    penalty values are summed with one ``all_reduce`` per step (one per distinct process group: one for
    FSDP2 on a 1-D mesh), so ``last_penalty`` is the whole model's value on every process.

    Parameters are penalised only when they have a ``.grad`` (torch optimizers skip the others too).
    With ``maximize=True`` in a group, the coupled penalty still pulls weights to zero (its gradient is
    subtracted, which costs two extra passes over that group's gradients). A tensor learning rate on
    an accelerator makes decoupled decay read it back to the host.

    ``state_dict()`` carries each parameter's anchor and ``F`` in its ``state[index]`` under
    ``"l2fast_anchor"`` / ``"l2fast_fisher"``, in their own dtype; ``load_state_dict`` restores them (a
    Penalized built with ``anchor=None`` resumes an anchored run), and keeps the current anchors when the
    state dict has none.

    Attributes:
        optimizer: the inner optimizer.
        last_penalty: the penalty value of the last applied step, at the weights it started from (a
            0-dim float32 tensor, float64 for float64 weights, on the parameters' device; summed over
            shards); None until a step is applied. A one-pass step that GradScaler skips keeps it on
            the device, without a sync (a skipped first step gives the value of the untouched weights).
        clock: steps applied and epochs ended (``end_epoch()``); ``coefficients()`` gives the
            scheduled (l2, l1) of each group for the next step. Whether GradScaler skipped a one-pass
            step is read one step late, from a copy made without waiting: ``step`` never syncs for it.
    """

    _late_skip = None  # fused_step.LateSkip of the last step GradScaler handed over, until the clock reads it
    _PICKLED = (
        "optimizer", "decoupled", "schedule", "shard_group", "extra_group_keys", "_clock", "last_penalty",
        "_fused_mode", "max_grad_norm", "last_grad_norm", "_anchors",
    )

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        l2: float = 0.0,
        l1: float = 0.0,
        decoupled: bool = False,
        schedule: Schedule | Callable[[int], float] | None = None,
        *,
        l2_sp: float = 0.0,
        anchor=None,
        fisher=None,
        anchor_dtype: torch.dtype | None = None,
        shard_group: "dist.ProcessGroup | None" = None,
        extra_group_keys: Iterable[str] = (),
        fused: bool | str = "auto",
        max_grad_norm: float | None = None,
    ):
        if isinstance(optimizer, Penalized) or any(k in getattr(optimizer, "defaults", {}) for k in PENALTY_KEYS):
            raise TypeError(
                "l2fast.Penalized: this optimizer is already wrapped by l2fast.Penalized (or uses the group keys "
                "'l2'/'l1' itself); wrapping again would apply the penalty twice. Change the coefficients of the "
                "existing wrapper instead (its param_groups[i]['l2'] / ['l1'])"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"l2fast.Penalized: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        defaults = {"l2": _coefficient(l2, "l2"), "l1": _coefficient(l1, "l1"), "l2_sp": _coefficient(l2_sp, "l2_sp")}
        # Optimizer.__init__ would register the parameters a second time; __setstate__ builds only the
        # step/state-dict hook registries and the profiling wrapper of step(), which is all a wrapper needs.
        super().__setstate__({"optimizer": optimizer})
        self.decoupled = bool(decoupled)
        self.schedule = as_schedule(schedule)
        self.shard_group = shard_group
        self.extra_group_keys = frozenset(extra_group_keys)
        self._clock = Clock()
        self.last_penalty: torch.Tensor | None = None
        self.last_grad_norm: torch.Tensor | None = None
        if fused not in ("auto", True, False):
            raise ValueError(f"l2fast.Penalized: fused must be 'auto', True or False, got {fused!r}")
        self._fused_mode = fused
        if max_grad_norm is not None:
            max_grad_norm = _coefficient(max_grad_norm, "max_grad_norm")
            if max_grad_norm == 0.0:
                raise ValueError("l2fast.Penalized: max_grad_norm must be > 0 (None: no clipping)")
        self.max_grad_norm = max_grad_norm
        if fused is True:
            self._require_fusable()
        # Check everything (a schedule that fails at step 0 fails here) before changing the inner optimizer.
        base = [self._check_group(group, i, defaults) for i, group in enumerate(optimizer.param_groups)]
        self._multipliers(len(optimizer.param_groups))
        _check_listed_once(optimizer.param_groups)
        self._anchors = anchors.resolve(optimizer.param_groups, anchor, fisher, anchor_dtype, [c.l2_sp for c in base])
        _warn_unused_arguments(optimizer.param_groups, defaults)
        optimizer.defaults.update(defaults)  # so every group, present or added later, carries the coefficients
        for group in optimizer.param_groups:
            for key in PENALTY_KEYS:
                group.setdefault(key, defaults[key])

    @classmethod
    def wrapping(cls, inner: type, **options) -> type["Penalized"]:
        """A Penalized class built like ``inner``: ``Penalized.wrapping(torch.optim.AdamW)(params, lr=...,
        weight_decay=0.01)`` is ``Penalized(AdamW(params, lr=..., weight_decay=0), l2=0.01,
        decoupled=True)``, for code that builds optimizers from a class and keyword arguments (the
        Hugging Face Trainer's ``optimizer_cls_and_kwargs``, accelerate, Lightning CLI).

        ``weight_decay`` (the argument, ``inner``'s default when absent, and each group's own) becomes
        the penalty, so the numbers of the stock optimizer carry over: decoupled for AdamW (or any
        optimizer whose groups say ``decoupled_weight_decay``), coupled for Adam, SGD and the others.
        ``options`` go to Penalized (``l1``, ``schedule``, ``max_grad_norm``, ``fused`` ...)."""
        if not (isinstance(inner, type) and issubclass(inner, torch.optim.Optimizer)):
            raise TypeError(f"l2fast.Penalized.wrapping: expected a torch.optim.Optimizer class, got {inner!r}")

        def __init__(self, params, **kwargs):
            default = inspect.signature(inner).parameters.get("weight_decay")
            decay = kwargs.pop("weight_decay", default.default if default is not None else 0.0)
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            groups = [dict(g) for g in params] if params and isinstance(params[0], dict) else [{"params": params}]
            for group in groups:
                if "weight_decay" in group:
                    group["l2"] = group.pop("weight_decay")
            optimizer = inner(groups, weight_decay=0.0, **kwargs) if default is not None else inner(groups, **kwargs)
            decoupled = bool(optimizer.defaults.get("decoupled_weight_decay", False))
            # The default of groups without their own (and of groups added later), as inner's would be.
            cls.__init__(self, optimizer, l2=decay if any("l2" not in g for g in groups) else 0.0, decoupled=decoupled,
                         **options)

        return type(f"Penalized{inner.__name__}", (cls,), {"__init__": __init__, "__doc__": cls.wrapping.__doc__,
                                                             "__module__": cls.__module__})

    # The inner optimizer's own objects, so LR schedulers, GradScaler and user code see one truth.
    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, state) -> None:
        self.optimizer.state = state

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: dict) -> None:
        self.optimizer.defaults = defaults

    @property
    def fused(self) -> bool:
        """Whether ``step`` takes the one-pass path (closures, DTensor parameters and sparse gradients
        still fall back for their step)."""
        return self._fused_mode is not False and fused_step.unsupported(self.optimizer) is None

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # As the inner optimizer says (torch's fused=True Adam/SGD): GradScaler then hands grad_scale /
        # found_inf to the one-pass kernel, which unscales and skips on the device. Otherwise GradScaler
        # unscales first and skips step() itself, as for the inner optimizer alone, and frameworks
        # that read this flag (Lightning refuses gradient clipping where it is set) treat the wrapper
        # as they treat the optimizer it wraps.
        return self.fused and bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))

    def _require_fusable(self) -> None:
        reason = fused_step.unsupported(self.optimizer)
        if reason is not None:  # (add_param_group raises the same message)
            raise ValueError(f"l2fast.Penalized(fused=True): {reason}; pass fused='auto' or False for the two-pass path")

    @property
    def clock(self) -> Clock:
        """Optimizer steps applied and epochs completed: the time the schedule reads."""
        self._settle()
        return self._clock

    def end_epoch(self) -> None:
        """Advances the epoch count of the clock, for schedules with ``unit="epoch"``."""
        self._clock = self.clock._replace(epoch=self._clock.epoch + 1)

    def coefficients(self) -> list[tuple[float, float]]:
        """(l2, l1) per group for the next step: base coefficients times the schedule's multipliers
        (which multiply each group's ``"l2_sp"`` alike)."""
        return [(c.l2, c.l1) for c in self._coefficients()]

    def _coefficients(self) -> list[Coefficients]:
        """(l2, l1, l2_sp) per group for the next step."""
        groups = self.param_groups
        multipliers = self._multipliers(len(groups))
        result = []
        for i, (group, multiplier) in enumerate(zip(groups, multipliers)):
            self._check_keys(group, i)
            base = self._group_coefficients(group, i, self.defaults)
            result.append(Coefficients(*(c * multiplier for c in base)))
        return result

    def _multipliers(self, num_groups: int) -> list[float]:
        multipliers = self.schedule.multipliers(self.clock, num_groups)
        if len(multipliers) != num_groups:
            raise ValueError(f"l2fast.Penalized: the schedule gave {len(multipliers)} multipliers for {num_groups} groups")
        for i, multiplier in enumerate(multipliers):
            if not math.isfinite(multiplier) or multiplier < 0.0:
                raise ValueError(
                    f"l2fast.Penalized: schedule {self.schedule!r} gave the multiplier {multiplier} for param_groups[{i}] "
                    f"at {self._clock}; multipliers must be finite and >= 0"
                )
        return multipliers

    def _group_coefficients(self, group: dict, i: int, defaults: dict) -> Coefficients:
        l2, l1, l2_sp = (_coefficient(group.get(k, defaults[k]), f"param_groups[{i}]['{k}']") for k in PENALTY_KEYS)
        if l2 != 0.0 and group.get("weight_decay", 0.0) != 0.0:
            raise ValueError(
                f"l2fast.Penalized: param_groups[{i}] has weight_decay={group['weight_decay']} and l2={l2}, which would "
                "apply the L2 penalty twice; build the inner optimizer with weight_decay=0"
            )
        if self.decoupled and l1 != 0.0:
            raise ValueError(
                f"l2fast.Penalized: param_groups[{i}] has l1={l1}, but decoupled=True applies L2 only; "
                "use decoupled=False for an L1 penalty"
            )
        return Coefficients(l2, l1, l2_sp)

    def _check_group(self, group: dict, i: int, defaults: dict) -> Coefficients:
        if not isinstance(group, dict):
            raise TypeError(f"l2fast.Penalized: param_groups[{i}] must be a dict, got {type(group).__name__}")
        self._check_keys(group, i)
        return self._group_coefficients(group, i, defaults)

    def _check_keys(self, group: dict, i: int) -> None:
        """One rule for group keys, whenever they appear (construction, add_param_group, or added to
        param_groups later by a framework, checked at every step): a key the inner optimizer and
        l2fast do not know is left alone, as torch leaves it (a framework's ``group_name``, timm's
        ``lr_scale``), unless it nearly spells one they know (``weight_decy``, ``L2``): that would
        silently train without the option, so it is refused. A group with ``capturable=True`` is
        refused too: it asks for a step that CUDA graphs can capture, which this one is not."""
        if group.get("capturable", False):
            raise ValueError(
                f"l2fast.Penalized: param_groups[{i}] has capturable=True, but the step cannot be captured in a CUDA "
                "graph (lr and the penalty coefficients are host values of each launch, which a replay would "
                "repeat); build the inner optimizer with capturable=False"
            )
        known = TORCH_GROUP_KEYS | _option_names(self.optimizer) | set(PENALTY_KEYS) | self.extra_group_keys
        for key in group.keys() - known:
            meant = _misspelling_of(key, known)
            if meant is not None:
                raise ValueError(
                    f"l2fast.Penalized: param_groups[{i}] has the key {key!r}, which {type(self.optimizer).__name__} "
                    f"and l2fast do not know; did you mean {meant!r}? If the key is meant for other code, pass "
                    f"extra_group_keys=[{key!r}]"
                )

    def add_param_group(self, param_group: dict) -> None:
        self._check_group(param_group, len(self.param_groups), self.defaults)
        self.optimizer.add_param_group(param_group)
        try:
            _check_listed_once(self.param_groups)
            if self._fused_mode is True:
                self._require_fusable()
        except ValueError:
            self.optimizer.param_groups.pop()
            raise

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # torch.compile: Dynamo does not keep attribute writes made on an optimizer inside a compiled
    # region (the clock, last_penalty, last_grad_norm would be lost), and the one-pass step is already
    # one native call per device. So the step runs eagerly; the compiled code around it graph-breaks
    # here, as it does around torch's own optimizer steps.
    @torch._disable_dynamo
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        if _capturing():
            raise RuntimeError(
                "l2fast.Penalized.step: the step cannot be captured in a CUDA graph: lr, the scheduled penalty "
                "coefficients and SGD's first-step flags are host values passed with each launch, so every "
                "replay would repeat this step's values. Run the step eagerly, outside the captured region"
            )
        coefficients = self._coefficients()
        self._check_anchored(coefficients)
        # Set by GradScaler.step when _step_supports_amp_scaling (the one-pass path) is on. The kernels
        # skip the step on the device; the clock reads found_inf one step late (no sync here).
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)

        def penalized_step(closure):
            return self._penalized_step(closure, coefficients, grad_scale, found_inf)

        loss = inner_step.run_with_hooks(self.optimizer, closure, penalized_step)
        if found_inf is None:
            self._clock = self._clock._replace(step=self._clock.step + 1)
        else:
            self._late_skip = fused_step.LateSkip(found_inf)
        return loss

    def _check_anchored(self, coefficients: list[Coefficients]) -> None:
        """Refuses a pull with nothing to pull toward: l2_sp without any anchor. (At the step, not at
        construction: a Penalized built without anchors takes them from a state dict.)"""
        if self._anchors:
            return
        for i, c in enumerate(coefficients):
            if c.l2_sp != 0.0:
                raise ValueError(
                    f"l2fast.Penalized: param_groups[{i}] has l2_sp={c.l2_sp}, but no parameter has an anchor to pull "
                    "toward; pass anchor= ('current', a state dict, a module or {param: tensor}), or load a state dict "
                    "that carries anchors"
                )

    def _settle(self) -> None:
        """Counts the last step GradScaler handed over, unless its found_inf skipped it."""
        late, self._late_skip = self._late_skip, None
        if late is not None and not late.skipped():
            self._clock = self._clock._replace(step=self._clock.step + 1)

    def _penalized_step(self, closure, coefficients, grad_scale, found_inf):
        """The inner optimizer's step(closure) with the penalty: one pass where it can, else two."""
        if closure is not None and not self.fused:
            # An optimizer that may evaluate the closure several times (LBFGS, line searches) sees the
            # penalised objective: the closure's loss plus the penalty, with its gradient.
            if grad_scale is not None:
                self._unscale(grad_scale)
            return inner_step.unhooked_step(self.optimizer)(self._penalized_closure(closure, coefficients))
        loss = None
        if closure is not None:  # Adam, AdamW and SGD evaluate it once, first, with gradients on
            with torch.enable_grad():
                loss = closure()
        fallback = fused_step.unsupported(self.optimizer) if self._fused_mode is not False else "fused=False"
        if fallback is None:
            fallback = fused_step.per_step_fallback(self.optimizer)
        if fallback is None:
            try:
                self._fused_step(coefficients, grad_scale, found_inf)
                return loss
            except fused_step.LayoutMismatch as mismatch:
                fallback = str(mismatch)
        if self._fused_mode is True:
            raise ValueError(
                f"l2fast.Penalized(fused=True): the one-pass step cannot take this step: {fallback}; "
                "pass fused='auto' to take the two-pass path for such steps"
            )
        # GradScaler handed the step over (one-pass path) but this step falls back: the two-pass path
        # cannot skip on the device, so it reads found_inf now (a sync, on such steps only).
        if fused_step.skipped_now(found_inf):
            return loss
        if grad_scale is not None:
            self._unscale(grad_scale)
        self._clip()
        with self._penalty_applied(coefficients):
            inner_step.unhooked_step(self.optimizer)()
        return loss

    def _fused_step(self, coefficients, grad_scale, found_inf) -> None:
        """The one-pass step; raises fused_step.LayoutMismatch before any write or collective."""
        with torch.no_grad():
            calls, fresh_buffers = fused_step.gather(self.optimizer, coefficients, self.decoupled, self.shard_group,
                                                     self._anchors)
        scalars = {"grad_scale": grad_scale, "found_inf": found_inf, "clip": None}
        if self.max_grad_norm is not None:
            norm = fused_step.grad_norm(self.optimizer, grad_scale, self.shard_group)
            scalars["clip"] = fused_step.clip_coefficient(norm, self.max_grad_norm)
            self.last_grad_norm = norm
        with torch.no_grad():
            values = fused_step.run(calls, fresh_buffers, scalars)
        total = self._global_total(values)
        if found_inf is not None and self.last_penalty is not None:  # a skipped step keeps it, on the device
            skip = found_inf.to(total.device, non_blocking=True).reshape(()) != 0
            total = torch.where(skip, self.last_penalty.to(total.device), total)
        self.last_penalty = total

    def _unscale(self, grad_scale: torch.Tensor) -> None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, grad_scale.double().reciprocal().float())

    def _clip(self) -> None:
        """Two-pass clipping: the norm, then every gradient scaled (torch's clip_grad_norm_ semantics)."""
        if self.max_grad_norm is None:
            return
        norm = fused_step.grad_norm(self.optimizer, None, self.shard_group)
        dtensor = sharding.dtensor_type()
        grads = [sharding.local(p.grad, dtensor) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, fused_step.clip_coefficient(norm, self.max_grad_norm).to(grads[0].dtype))
        self.last_grad_norm = norm

    def _penalized_closure(self, closure, coefficients):
        decay_pending = True

        def penalized_closure():
            nonlocal decay_pending
            loss = closure()
            self._clip()
            if self.decoupled:
                if decay_pending:
                    self.last_penalty = self._apply_penalty(coefficients)
                    decay_pending = False
                return loss
            self.last_penalty = self._apply_penalty(coefficients)
            with torch.no_grad():
                return None if loss is None else loss + self.last_penalty

        return penalized_closure

    @contextlib.contextmanager
    def _penalty_applied(self, coefficients: list[Coefficients]):
        """The two-pass penalty around the inner step, leaving ``p.grad`` as torch's ``weight_decay``
        leaves it (the caller's gradient): the decoupled decay and pull are applied to the weights; a
        coupled L2 penalty of torch's Adam or SGD becomes the group's own ``weight_decay`` for the step
        (its value measured here, in one read of the weights); any other coupled penalty (L1, a pull
        toward anchors) is added to copies of the gradients that stand in for them during the step."""
        overrides = _StepOverrides()
        try:
            self.last_penalty = self._apply_penalty(coefficients, overrides)
            yield
        finally:
            overrides.undo()

    def _apply_penalty(self, coefficients: list[Coefficients], overrides: "_StepOverrides | None" = None):
        """Adds every group's penalty gradient (or applies its decoupled decay), one fused call per
        bucket; returns the penalty value, summed over shards where parameters are sharded. Without
        ``overrides`` the penalty goes into the gradients themselves (the closure path)."""
        buckets = self._buckets(coefficients, overrides)
        values = [(key[2], self._penalise(bucket)) for key, bucket in buckets.items()]
        return self._global_total(values)

    def _global_total(self, values: list[tuple[tuple, torch.Tensor]]) -> torch.Tensor:
        """The bucket values summed over their process groups, then added up. Every process all-reduces
        over every group any of its parameters sums over, in parameter order, with a zero where it
        has nothing (no gradient, or no penalised tensor): collectives match across processes."""
        sums = _sum_by_process_groups(values)
        total = None
        for reduce_over in self._reductions(sums):
            value = sums.get(reduce_over)
            value = sharding.all_reduce_sum(self._zero() if value is None else value, reduce_over)
            total = value if total is None else total + value.to(total.device)
        return total if total is not None else self._zero()

    def _reductions(self, sums: dict) -> list[tuple]:
        """The process-group tuples to sum over this step: those of every parameter (present whether
        it has a gradient or not), then any other the values came with."""
        required = {() if self.shard_group is None else (self.shard_group,): None}
        for group in self.param_groups:
            dtensor = sharding.dtensor_in(group["params"])
            for p in group["params"] if dtensor is not None else ():
                if isinstance(p, dtensor):
                    required.setdefault(sharding.reduce_groups(p, None, dtensor), None)
        return list(required) + [key for key in sums if key not in required]

    def _buckets(self, coefficients: list[Coefficients], overrides) -> dict[tuple, _Bucket]:
        """Every penalised tensor that has a gradient, by (device, maximize, process groups to sum over,
        whether the inner step applies the penalty gradient itself, what pulls it toward an anchor)."""
        buckets: dict[tuple, _Bucket] = {}
        dtensor = sharding.dtensor_type()
        for i, (group, (l2, l1, l2_sp)) in enumerate(zip(self.param_groups, coefficients)):
            pulled = l2_sp != 0.0 and self._anchors.pulls_any(group["params"])
            if l2 == 0.0 and l1 == 0.0 and not pulled:
                continue
            coupled = overrides is not None and not self.decoupled
            # torch's weight_decay stands in for l2 * w only: not for l1, nor for a pull toward anchors.
            as_weight_decay = coupled and l1 == 0.0 and not pulled and _applies_weight_decay(self.optimizer, group)
            if as_weight_decay:
                overrides.set_weight_decay(group, l2)
            maximize = bool(group.get("maximize", False)) and not self.decoupled and not as_weight_decay
            lr = self._lr(group, i) if self.decoupled else 0.0  # decay fractions are AdamW's lr * wd
            for p in group["params"]:
                kind = self._anchors.kind(p) if pulled else None
                if p.grad is None or (kind is None and l2 == 0.0 and l1 == 0.0):
                    continue
                if coupled and not as_weight_decay:
                    overrides.replace_grad(p, _grad_copy(p, dtensor))
                param, grad, reduce_over = self._local(p, dtensor)
                key = (param.device, maximize, reduce_over, as_weight_decay, kind)
                bucket = buckets.get(key)
                if bucket is None:
                    bucket = buckets[key] = _Bucket(maximize, measure_only=as_weight_decay)
                bucket.add(param, grad, self._anchors.arguments([p], kind, dtensor))
            for bucket in buckets.values():
                bucket.end_group(l2=l2, l1=l1, decay=lr * l2, l2_sp=l2_sp, sp_factor=lr * l2_sp)
        return buckets

    def _local(self, p: torch.Tensor, dtensor: type | None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """What this process penalises for p, and the process groups its value is summed over: a
        DTensor's local shard over its mesh's groups, else p itself over ``shard_group`` (if any)."""
        reduce_over = sharding.reduce_groups(p, self.shard_group, dtensor)
        return sharding.local(p, dtensor), sharding.local(p.grad, dtensor), reduce_over

    def _penalise(self, bucket: _Bucket) -> torch.Tensor:
        """The bucket's decoupled decay (and pull) or coupled penalty gradient, in one fused call; its
        penalty value."""
        if bucket.measure_only:  # never anchored: weight_decay cannot stand in for a pull
            with torch.no_grad():
                return functional.penalty(bucket.params, bucket.per_tensor("l2"), 0.0)
        if self.decoupled:
            # One pass: the value of the weights before the update, and the decay and pull themselves.
            return functional.decay_(bucket.params, bucket.per_tensor("decay"), l2=bucket.per_tensor("l2"),
                                     **bucket.pull_arguments(decoupled=True))
        return _add_penalty_grads(bucket)

    @staticmethod
    def _lr(group: dict, i: int) -> float:
        if "lr" not in group:
            raise ValueError(f"l2fast.Penalized: decoupled decay needs a learning rate, but param_groups[{i}] has no 'lr'")
        return float(group["lr"])

    def _zero(self) -> torch.Tensor:
        device = next((p.device for g in self.param_groups for p in g["params"]), torch.device("cpu"))
        return torch.zeros((), device=device)

    # state_dict and load_state_dict run this wrapper's state-dict hooks as torch.optim.Optimizer's do;
    # hooks registered on the inner optimizer run in its own state_dict / load_state_dict.
    @torch._disable_dynamo
    def state_dict(self) -> dict:
        """The inner optimizer's state dict (whose groups carry l2 / l1 / l2_sp), plus the clock and the
        schedule, and each anchored parameter's anchor and F in its ``state[index]``."""
        for hook in list(self._optimizer_state_dict_pre_hooks.values()):
            hook(self)
        state = self.optimizer.state_dict()
        if self._anchors:
            self._anchors.pack(state, anchors.indexed_params(state["param_groups"], self.param_groups))
        ours = {"clock": self.clock._asdict(), "decoupled": self.decoupled, "schedule": self.schedule.state_dict()}
        # In every group: torch.distributed.checkpoint keeps only `state` and `param_groups` (with all
        # their keys), and may hand back any subset of groups for a shard of the model.
        for group in state["param_groups"]:
            group[STATE_KEY] = ours
        for hook in list(self._optimizer_state_dict_post_hooks.values()):
            result = hook(self, state)
            if result is not None:
                state = result
        return state

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict) -> None:
        """Loads a state dict from ``state_dict()``, or from the plain inner optimizer (clock and schedule
        then stay as they are, and groups without l2 / l1 / l2_sp get the defaults). A state dict of
        torch's own optimizer with ``weight_decay`` goes through ``load_torch_state_dict``. Anchors
        and F come back in their saved dtype on their parameter's device (in place of the current
        ones: a state dict without anchors keeps these). Everything is checked before anything is
        changed."""
        self._settle()
        state_dict = dict(state_dict)
        for hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = dict(result)
        ours = state_dict.pop(STATE_KEY, None)  # where state dicts of l2fast 0.1 kept it
        groups = [dict(group) for group in state_dict.get("param_groups", [])]
        for group in groups:
            saved = group.pop(STATE_KEY, None)
            ours = saved if ours is None else ours
        state_dict["param_groups"] = groups
        schedule = self.schedule
        if ours is not None:
            if ours["decoupled"] != self.decoupled:
                raise ValueError(
                    f"l2fast.Penalized: the state dict was saved with decoupled={ours['decoupled']}, "
                    f"but this optimizer has decoupled={self.decoupled}"
                )
            schedule = copy.deepcopy(self.schedule)
            schedule.load_state_dict(ours["schedule"])
        for i, saved in enumerate(groups):
            self._group_coefficients({**self.defaults, **saved}, i, self.defaults)
        state_dict, loaded = anchors.unpack(state_dict, self.param_groups)
        self.optimizer.load_state_dict(state_dict)
        for group in self.param_groups:
            for key in PENALTY_KEYS:
                group.setdefault(key, self.defaults[key])
        if loaded is not None:
            self._anchors = loaded
        if ours is not None:
            self.schedule = schedule
            self._clock = Clock(**ours["clock"])
        for hook in list(self._optimizer_load_state_dict_post_hooks.values()):
            hook(self)

    def torch_state_dict(self) -> dict:
        """This optimizer's state as torch's own optimizer training the same way would save it: each
        group's coefficient for the next step (schedule applied) becomes its ``weight_decay`` (with
        ``decoupled_weight_decay=True`` for decoupled decay, which is what ``torch.optim.AdamW``
        saves), and the l2fast keys go. Loads into ``torch.optim.Adam`` / ``AdamW`` / ``SGD`` (or the
        inner optimizer's type) over the same parameters. torch has no L1 penalty and no decoupled
        SGD decay and no pull toward anchors: those are refused. The schedule is not kept: torch's decay
        stays at this value."""
        state = self.optimizer.state_dict()
        for i, (group, (l2, l1, l2_sp)) in enumerate(zip(state["param_groups"], self._coefficients())):
            if l1 != 0.0:
                raise ValueError(f"l2fast.Penalized.torch_state_dict: param_groups[{i}] has l1={l1}; torch's "
                                 "optimizers have no L1 penalty to carry it")
            if l2_sp != 0.0:
                raise ValueError(f"l2fast.Penalized.torch_state_dict: param_groups[{i}] has l2_sp={l2_sp}; torch's "
                                 "optimizers have no pull toward anchors (L2-SP, EWC) to carry it")
            if self.decoupled and l2 != 0.0 and "decoupled_weight_decay" not in group:
                raise ValueError(f"l2fast.Penalized.torch_state_dict: param_groups[{i}] has decoupled l2={l2}, but "
                                 f"{type(self.optimizer).__name__} has no decoupled weight_decay in torch")
            for key in PENALTY_KEYS:
                group.pop(key, None)
            if l2 != 0.0:
                group["weight_decay"] = l2
                if self.decoupled:
                    group["decoupled_weight_decay"] = True
        return state

    def load_torch_state_dict(self, state_dict: dict) -> None:
        """Loads the state dict of torch's own optimizer (``Adam``, ``AdamW``, ``SGD`` ...), moving each
        group's ``weight_decay`` into its ``"l2"`` (then multiplied by the schedule from the current
        clock on). A decoupled decay (AdamW's) needs ``decoupled=True`` here, a coupled one
        ``decoupled=False``: a mismatch is an error, as it would change the training."""
        state_dict = dict(state_dict)
        groups = []
        for i, saved in enumerate(state_dict.get("param_groups", [])):
            group = dict(saved)
            decay = group.get("weight_decay", 0.0)
            decoupled = bool(group.get("decoupled_weight_decay", False))
            if decay != 0.0:
                if decoupled != self.decoupled:
                    raise ValueError(
                        f"l2fast.Penalized.load_torch_state_dict: param_groups[{i}] has a "
                        f"{'decoupled (AdamW)' if decoupled else 'coupled'} weight_decay={decay}, but this optimizer "
                        f"has decoupled={self.decoupled}"
                    )
                group["l2"], group["weight_decay"] = decay, 0.0
                if decoupled:  # the decay is now l2fast's, the inner Adam's update plain
                    group["decoupled_weight_decay"] = bool(self.optimizer.defaults.get("decoupled_weight_decay"))
            groups.append(group)
        state_dict["param_groups"] = groups
        self.load_state_dict(state_dict)

    def __getstate__(self) -> dict:
        self._settle()
        return {name: self.__dict__[name] for name in self._PICKLED}

    def __repr__(self) -> str:
        return (
            f"Penalized(l2={self.defaults['l2']}, l1={self.defaults['l1']}, l2_sp={self.defaults['l2_sp']}, "
            f"decoupled={self.decoupled}, "
            f"schedule={self.schedule!r}, fused={self.fused}) wrapping {self.optimizer!r}"
        )
