"""The one-pass step of ``l2fast.Penalized`` over torch's Adam, AdamW and SGD: per bucket of tensors
(one device, one set of per-call flags, one set of process groups), one call of the native
``adam_step_`` / ``sgd_step_`` reads w, g and the optimizer state once and writes them once, with the
GradScaler unscaling, the clip coefficient, the penalty gradient, the decoupled decay, the pull toward
anchors (L2-SP / EWC) and the penalty value of the weights the step started from in the same pass.

The optimizer state stays in the inner optimizer's ``state``, created exactly as torch creates it, so
state dicts move between this path, the two-pass path and plain torch at any step.
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch.optim.optimizer import _get_scalar_dtype

from . import _ops, functional, sharding

FUSABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class Coefficients(NamedTuple):
    """A group's penalty coefficients for one step, schedule applied (l2_sp: the pull toward anchors)."""

    l2: float
    l1: float
    l2_sp: float = 0.0


def unsupported(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the one-pass step cannot run this optimizer as configured now; None when it can."""
    if type(optimizer) not in FUSABLE:
        return f"the inner optimizer is {type(optimizer).__name__}, not exactly torch.optim.Adam, AdamW or SGD"
    for i, group in enumerate(optimizer.param_groups):
        reason = _unsupported_group(optimizer, group)
        if reason is not None:
            return f"param_groups[{i}] {reason}"
    return None


# The options the one-pass kernels read, and the range they take. torch checks them when a group is
# built, not when it is changed later (a negative lr, for one, steps fine in torch).
_NON_NEGATIVE_OPTIONS = ("lr", "eps", "weight_decay", "momentum", "dampening")


def _out_of_range(group: dict) -> str | None:
    for name in _NON_NEGATIVE_OPTIONS:
        value = group.get(name)
        if value is not None and not torch.is_tensor(value) and not (math.isfinite(value) and value >= 0.0):
            return f"['{name}'] = {value} (the one-pass step takes finite values >= 0)"
    betas = group.get("betas")
    if betas is not None and not all(torch.is_tensor(b) or 0.0 <= b < 1.0 for b in betas):
        return f"['betas'] = {tuple(betas)} (the one-pass step takes 0 <= beta < 1)"
    return None


def _unsupported_group(optimizer, group: dict) -> str | None:
    out_of_range = _out_of_range(group)
    if out_of_range is not None:
        return f"has {out_of_range}"
    if group.get("differentiable", False):
        return "has differentiable=True"
    if isinstance(optimizer, torch.optim.Adam) and any(torch.is_tensor(b) for b in group["betas"]):
        return "has tensor betas"
    if torch.is_tensor(group["lr"]) and group["lr"].device.type != "cpu":
        return f"has a tensor lr on {group['lr'].device}"
    params = group["params"]
    # Checked per distinct dtype and device (one pass each), the first offending index found only then.
    if not {p.dtype for p in params} <= set(DTYPES):
        j = next(j for j, p in enumerate(params) if p.dtype not in DTYPES)
        return f"params[{j}] has dtype {params[j].dtype} (supported: float32, float64, float16, bfloat16)"
    if not all(_has_kernel(device) for device in {p.device for p in params}):
        j = next(j for j, p in enumerate(params) if not _has_kernel(p.device))
        return f"params[{j}] is on {params[j].device}, for which this build has no one-pass kernel"
    return None


def _has_kernel(device: torch.device) -> bool:
    """The CPU always (native or reference); another device where the native library registered one."""
    if device.type == "cpu":
        return True
    key = torch._C._dispatch_key_for_device(device.type)
    return _ops.LOADED and torch._C._dispatch_has_kernel_for_dispatch_key("l2fast::adam_step_", key)


def per_step_fallback(optimizer: torch.optim.Optimizer) -> str | None:
    """What in this step's gradients the one-pass step cannot take, naming the tensor; None when it can
    (memory layouts are checked by step() itself, which raises LayoutMismatch)."""
    for i, group in enumerate(optimizer.param_groups):
        dtensor = sharding.dtensor_in(group["params"])
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if g.layout != torch.strided:
                return f"param_groups[{i}]['params'][{j}] has a sparse gradient"
            if g.dtype != p.dtype:
                return f"param_groups[{i}]['params'][{j}] is {p.dtype} but its gradient {g.dtype}"
            if dtensor is not None and isinstance(p, dtensor) and tuple(g.placements) != tuple(p.placements):
                return (f"param_groups[{i}]['params'][{j}] has placements {tuple(p.placements)} but its gradient "
                        f"{tuple(g.placements)}")
    return None


class LayoutMismatch(Exception):
    """A gradient or state tensor in another memory layout than its parameter: the kernels walk w, g
    and the state in one element order, so the step falls back (found while its arguments are
    gathered, before anything is written)."""


# The tensor lists of a call that must share their parameter's layout, as a message names them.
_SAME_LAYOUT = {"grads": "gradient", "exp_avgs": "state 'exp_avg'", "exp_avg_sqs": "state 'exp_avg_sq'",
                "max_exp_avg_sqs": "state 'max_exp_avg_sq'", "momentum_buffers": "state 'momentum_buffer'"}


def _check_layouts(i: int, group: dict, params: list, local_params: list, lists: dict) -> None:
    checked = [tensors for name, tensors in lists.items() if name in _SAME_LAYOUT]
    if all(map(torch.Tensor.is_contiguous, itertools.chain(local_params, *checked))):
        return  # the usual case, and the cheapest test: contiguous tensors of one shape share their layout
    strides = [p.stride() for p in local_params]
    for name, tensors in lists.items():
        if name not in _SAME_LAYOUT:
            continue
        if [t.stride() for t in tensors] == strides:  # the usual case, compared as whole lists
            continue
        for p, s, t in zip(params, strides, tensors):
            if t.stride() != s:
                j = next(j for j, q in enumerate(group["params"]) if q is p)
                hint = "" if name == "grads" else " (state made for, or loaded from, a model in another memory format?)"
                raise LayoutMismatch(f"param_groups[{i}]['params'][{j}] has strides {s} but its {_SAME_LAYOUT[name]} "
                                     f"{t.stride()}{hint}")


def grad_norm(optimizer, grad_scale: torch.Tensor | None, shard_group) -> torch.Tensor:
    """The global L2 norm of every gradient of the optimizer's parameters (unscaled by grad_scale):
    one fused squared-norm pass per device, float64-accumulated, summed over the shards of DTensor
    gradients and over ``shard_group`` for plain ones. Every process takes part in the sums, with
    nothing to add or not; the norm is a plain tensor, the same on every process."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(p.grad)
    total = None
    for grads in by_device.values() if by_device else [[]]:
        sq = functional.sq_norm(grads, group=shard_group)
        total = sq if total is None else total + sq.to(total.device)
    norm = total.sqrt()
    if grad_scale is not None:
        norm = norm * _inv_scale(grad_scale).to(norm.device)
    return norm


def clip_coefficient(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_ forms it."""
    return (max_norm / (norm + 1e-6)).clamp(max=1.0)


def _inv_scale(grad_scale: torch.Tensor) -> torch.Tensor:
    return grad_scale.double().reciprocal().float()  # as GradScaler.unscale_ forms it


class _Call:
    """The arguments of one native call: tensor lists and per-tensor hyperparameters (and, for a call
    of anchored tensors, whether their pull is decoupled)."""

    def __init__(self, decoupled_sp: bool):
        self.lists: dict[str, list] = {}
        self.decoupled_sp = decoupled_sp

    def extend(self, count: int, lists: dict, scalars: dict) -> None:
        """Appends `count` tensors: `lists` hold one entry per tensor, `scalars` one value for all."""
        for name, values in lists.items():
            self.lists.setdefault(name, []).extend(values)
        for name, value in scalars.items():
            self.lists.setdefault(name, []).extend([value] * count)


def _by_placement(params: list, shard_group, dtensor: type | None) -> dict[tuple, list]:
    """params by (device, process groups their values sum over): DTensors over their mesh's sharded
    dimensions, plain tensors over shard_group (if any)."""
    if dtensor is None:
        reduce_over = () if shard_group is None else (shard_group,)
        devices = {p.device for p in params}
        if len(devices) <= 1:  # the usual case: one bucket, the list as it is
            return {(devices.pop(), reduce_over): params} if devices else {}
        keys = [(p.device, reduce_over) for p in params]
    else:
        keys = [(p.device, sharding.reduce_groups(p, shard_group, dtensor)) for p in params]
    buckets: dict[tuple, list] = {}
    for key, p in zip(keys, params):
        buckets.setdefault(key, []).append(p)
    return buckets


def _locals(tensors: list, dtensor: type | None) -> list:
    """The local shards (DTensors are stepped shard by shard: the update is elementwise)."""
    if dtensor is None or not tensors or not torch.is_tensor(tensors[0]):
        return tensors
    return [sharding.local(t, dtensor) for t in tensors]


def gather(optimizer, coefficients, decoupled: bool, shard_group=None, anchors=None) -> tuple[dict, list]:
    """The native calls of one step of every group that has gradients, and the SGD momentum buffers
    they would create, as (calls, fresh_buffers) for run(). ``coefficients``: (l2, l1[, l2_sp]) per
    group; ``anchors`` (``l2fast.anchors.Anchors``): what pulls each parameter of a group whose l2_sp is
    not zero. Writes nothing but the lazy state a torch optimizer would create; raises LayoutMismatch
    for a tensor the kernels cannot take."""
    adam = isinstance(optimizer, torch.optim.Adam)
    calls: dict[tuple, _Call] = {}
    fresh_buffers = []
    for i, (group, given) in enumerate(zip(optimizer.param_groups, coefficients)):
        l2, l1, l2_sp = Coefficients(*given)
        lr = float(group["lr"])
        wd = float(group["weight_decay"])
        adamw = adam and group.get("decoupled_weight_decay", False)
        # Only one of the penalty and the inner weight_decay is non-zero (Penalized refuses both).
        grad_l2 = (0.0 if decoupled else l2) + (0.0 if adamw else wd)
        decay = lr * (l2 if decoupled else 0.0) + (lr * wd if adamw else 0.0)
        maximize = bool(group.get("maximize", False))
        coeffs = dict(lr=lr, l2=grad_l2, l1=l1, decay=decay, value_l2=l2)
        with_grads = [p for p in group["params"] if p.grad is not None]
        dtensor = sharding.dtensor_in(with_grads)
        pulled = l2_sp != 0.0 and anchors is not None and anchors.pulls_any(with_grads)
        for (device, reduce_over), placed in _by_placement(with_grads, shard_group, dtensor).items():
            for kind, params in (_by_kind(placed, anchors) if pulled else {None: placed}).items():
                states = [optimizer.state[p] for p in params]
                grads = [p.grad for p in params]
                if adam:
                    key, lists, per_group = _adam_arguments(group, device, maximize, params, states)
                else:
                    key, lists, per_group = _sgd_arguments(group, device, maximize, states, grads, fresh_buffers)
                if kind is not None:  # the other calls are the ones of a build without anchors
                    lists.update(anchors.arguments(params, kind))
                    per_group["l2_sp"] = l2_sp
                lists = {name: _locals(tensors, dtensor) for name, tensors in dict(grads=grads, **lists).items()}
                local_params = _locals(params, dtensor)
                _check_layouts(i, group, params, local_params, lists)
                call = calls.setdefault((reduce_over, key, kind), _Call(decoupled))
                call.extend(len(params), dict(params=local_params, **lists), dict(coeffs, **per_group))
    return calls, fresh_buffers


def _by_kind(params: list, anchors) -> dict:
    """params by what pulls them (anchors.kind): a call's tensors are all plain, all anchored, or all
    anchored with an importance."""
    kinds: dict = {}
    for p in params:
        kinds.setdefault(anchors.kind(p), []).append(p)
    return kinds


def run(calls: dict, fresh_buffers: list, scalars: dict) -> list:
    """The native calls gathered by gather(); returns [(process groups to sum over, value)] per call.
    ``scalars``: grad_scale, found_inf and clip (each a tensor or None), on any one device."""
    # A skipped step leaves the state as it is: new buffers are not kept. Only a step that creates
    # buffers (the first, for most training) reads found_inf on the host for that.
    if fresh_buffers and not skipped_now(scalars["found_inf"]):
        for state, buf in fresh_buffers:
            state["momentum_buffer"] = buf
    impl = _ops.impl
    values = []
    per_device: dict[torch.device, dict] = {}
    for (reduce_over, key, kind), call in calls.items():
        a = call.lists
        device = key[0]
        if device not in per_device:
            per_device[device] = _on_device(scalars, device)
        common = dict(l2=a["l2"], l1=a["l1"], decay=a["decay"], value_l2=a["value_l2"], maximize=key[2],
                      **per_device[device])
        if kind is not None:
            common.update(anchors=a["anchors"], fisher=a.get("fisher"), l2_sp=a["l2_sp"],
                          decoupled_sp=call.decoupled_sp)
        if key[1] == "adam":
            value = impl.adam_step_(a["params"], a["grads"], a["exp_avgs"], a["exp_avg_sqs"],
                                    a.get("max_exp_avg_sqs", []), a["steps"], a["lr"], a["beta1"], a["beta2"],
                                    a["eps"], **common)
        else:
            value = impl.sgd_step_(a["params"], a["grads"], a.get("momentum_buffers", []), a["lr"], a["momentum"],
                                   a["dampening"], a.get("fresh", [0]), nesterov=key[4], **common)
        values.append((reduce_over, value))
    return values


def _on_device(scalars: dict, device: torch.device) -> dict:
    """The step's scalars on ``device``: GradScaler's grad_scale and found_inf and the clip coefficient
    live on one device, and each device's call gets its own copy, made without waiting for it (as
    torch's fused Adam does)."""
    return {name: None if t is None else t.to(device, non_blocking=True) for name, t in scalars.items()}


def skipped_now(found_inf: torch.Tensor | None) -> bool:
    """Whether GradScaler's found_inf skips this step, read on the host now (a sync on a GPU)."""
    return found_inf is not None and bool(found_inf)


class LateSkip:
    """GradScaler's found_inf of a one-pass step, for the host to read one step late. The kernels skip
    the step on the device; the wrapper's clock learns whether they did when it is next read, from a
    copy started without waiting (into pinned memory, on a GPU). By then the device is normally past
    that step, so the read does not stall the host's lead over the device."""

    def __init__(self, found_inf: torch.Tensor):
        self._copied = None
        if found_inf.device.type == "cuda":
            self._host = torch.empty(found_inf.shape, dtype=found_inf.dtype, pin_memory=True)
            self._host.copy_(found_inf, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record(torch.cuda.current_stream(found_inf.device))
        else:
            self._host = found_inf  # host memory already: nothing to wait for

    def skipped(self) -> bool:
        if self._copied is not None:
            self._copied.synchronize()
        return bool(self._host)


def _adam_arguments(group: dict, device: torch.device, maximize: bool, params: list, states: list):
    """The call key, per-tensor state lists and per-group hyperparameters of Adam over params."""
    amsgrad = bool(group["amsgrad"])
    for p, state in zip(params, states):
        if not state:
            _init_adam_state(state, p, group)
    if device.type != "cpu":
        for state in states:
            if state["step"].device != device:
                # The device kernel counts steps on the device (no host sync), as torch's fused Adam does.
                state["step"] = state["step"].to(device)
    lists = dict(exp_avgs=[s["exp_avg"] for s in states], exp_avg_sqs=[s["exp_avg_sq"] for s in states],
                 steps=[s["step"] for s in states])
    if amsgrad:
        lists["max_exp_avg_sqs"] = [s["max_exp_avg_sq"] for s in states]
    per_group = dict(beta1=float(group["betas"][0]), beta2=float(group["betas"][1]), eps=float(group["eps"]))
    return (device, "adam", maximize, amsgrad), lists, per_group


def _sgd_arguments(group: dict, device: torch.device, maximize: bool, states: list, grads: list, fresh_buffers: list):
    """The call key, per-tensor lists and per-group hyperparameters of SGD; new momentum buffers are
    appended to fresh_buffers as (state, buffer), kept only if the step is not skipped."""
    momentum = float(group["momentum"])
    nesterov = bool(group["nesterov"])
    lists = {}
    if momentum != 0.0:
        buffers, fresh = [], []
        for state, g in zip(states, grads):
            buf = state.get("momentum_buffer")
            fresh.append(int(buf is None))
            if buf is None:
                buf = torch.empty_like(g)  # written with the gradient by this step
                fresh_buffers.append((state, buf))
            buffers.append(buf)
        lists = dict(momentum_buffers=buffers, fresh=fresh)
    per_group = dict(momentum=momentum, dampening=float(group["dampening"]))
    return (device, "sgd", maximize, momentum != 0.0, nesterov), lists, per_group


def _init_adam_state(state: dict, p: torch.Tensor, group: dict) -> None:
    """Adam's lazy state initialisation of an empty state, as torch.optim.Adam._init_group does it."""
    on_device = group["capturable"] or group["fused"]
    state["step"] = (
        torch.zeros((), dtype=_get_scalar_dtype(is_fused=group["fused"]), device=p.device)
        if on_device
        else torch.tensor(0.0, dtype=_get_scalar_dtype())
    )
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if group["amsgrad"]:
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
