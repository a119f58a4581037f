"""The one-pass step of ``l2fast.Penalized`` over torch's Adam, AdamW and SGD: per bucket of tensors
(one device, one set of per-call flags, one set of process groups), one call of the native
``adam_step_`` / ``sgd_step_`` reads w, g and the optimizer state once and writes them once, with the
GradScaler unscaling, the clip coefficient, the penalty gradient, the decoupled decay and the penalty
value of the weights the step started from in the same pass.

The optimizer state stays in the inner optimizer's ``state``, created exactly as torch creates it, so
state dicts move between this path, the two-pass path and plain torch at any step.
"""
from __future__ import annotations

import torch
from torch.optim.optimizer import _get_scalar_dtype

from . import _ops, functional

FUSABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def unsupported(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the one-pass step cannot run this optimizer as configured now; None when it can."""
    if type(optimizer) not in FUSABLE:
        return f"the inner optimizer is {type(optimizer).__name__}, not exactly torch.optim.Adam, AdamW or SGD"
    for i, group in enumerate(optimizer.param_groups):
        reason = _unsupported_group(optimizer, group)
        if reason is not None:
            return f"param_groups[{i}] {reason}"
    return None


def _unsupported_group(optimizer, group: dict) -> str | None:
    if group.get("differentiable", False):
        return "has differentiable=True"
    if isinstance(optimizer, torch.optim.Adam) and any(torch.is_tensor(b) for b in group["betas"]):
        return "has tensor betas"
    if torch.is_tensor(group["lr"]) and group["lr"].device.type != "cpu":
        return f"has a tensor lr on {group['lr'].device}"
    for j, p in enumerate(group["params"]):
        if p.dtype not in DTYPES:
            return f"params[{j}] has dtype {p.dtype} (supported: float32, float64, float16, bfloat16)"
        if not _has_kernel(p.device):
            return f"params[{j}] is on {p.device}, for which this build has no one-pass kernel"
    return None


def _has_kernel(device: torch.device) -> bool:
    """The CPU always (native or reference); another device where the native library registered one."""
    if device.type == "cpu":
        return True
    return _ops.LOADED and torch._C._dispatch_has_kernel_for_dispatch_key("l2fast::adam_step_", device.type.upper())


def per_step_fallback(optimizer: torch.optim.Optimizer, dtensor: type | None) -> str | None:
    """What in this step's gradients the one-pass step cannot take (it then falls back for the step)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if dtensor is not None and isinstance(p, dtensor):
                return "DTensor parameters"
            if g.layout != torch.strided:
                return "a sparse gradient"
            if g.dtype != p.dtype:
                return f"a {g.dtype} gradient of a {p.dtype} parameter"
    return None


def grad_norm(optimizer, grad_scale: torch.Tensor | None, reduce_over: tuple) -> torch.Tensor:
    """The global L2 norm of every gradient of the optimizer's parameters (unscaled by grad_scale):
    one fused squared-norm pass per device, float64-accumulated, summed over process groups."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(p.grad)
    if not by_device:
        return torch.zeros(())
    total = None
    for grads in by_device.values():
        sq = functional.sq_norm(grads)
        total = sq if total is None else total + sq.to(total.device)
    for group in reduce_over:
        torch.distributed.all_reduce(total, group=group)
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
    """The arguments of one native call: tensor lists and per-tensor hyperparameters."""

    def __init__(self):
        self.lists: dict[str, list] = {}

    def add(self, **values) -> None:
        for name, value in values.items():
            self.lists.setdefault(name, []).append(value)


def step(optimizer, coefficients, decoupled: bool, scalars: dict, reduce_over: tuple, skip: bool):
    """One step of every group that has gradients; returns [(reduce_over, value)] per native call."""
    adam = isinstance(optimizer, torch.optim.Adam)
    calls: dict[tuple, _Call] = {}
    fresh_buffers = []
    for group, (l2, l1) in zip(optimizer.param_groups, coefficients):
        lr = float(group["lr"])
        wd = float(group["weight_decay"])
        adamw = adam and group.get("decoupled_weight_decay", False)
        # Only one of the penalty and the inner weight_decay is non-zero (Penalized refuses both).
        grad_l2 = (0.0 if decoupled else l2) + (0.0 if adamw else wd)
        decay = lr * (l2 if decoupled else 0.0) + (lr * wd if adamw else 0.0)
        maximize = bool(group.get("maximize", False))
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state[p]
            if adam:
                amsgrad = bool(group["amsgrad"])
                _init_adam_state(state, p, group)
                if state["step"].device != p.device and p.device.type != "cpu":
                    # The device kernel counts steps on the device (no host sync), as torch's fused Adam does.
                    state["step"] = state["step"].to(p.device)
                call = calls.setdefault((p.device, "adam", maximize, amsgrad), _Call())
                call.add(params=p, grads=p.grad, exp_avgs=state["exp_avg"], exp_avg_sqs=state["exp_avg_sq"],
                         steps=state["step"], beta1=float(group["betas"][0]), beta2=float(group["betas"][1]),
                         eps=float(group["eps"]))
                if amsgrad:
                    call.add(max_exp_avg_sqs=state["max_exp_avg_sq"])
            else:
                momentum = float(group["momentum"])
                nesterov = bool(group["nesterov"])
                call = calls.setdefault((p.device, "sgd", maximize, momentum != 0.0, nesterov), _Call())
                call.add(params=p, grads=p.grad, momentum=momentum, dampening=float(group["dampening"]))
                if momentum != 0.0:
                    buf = state.get("momentum_buffer")
                    fresh = buf is None
                    if fresh:
                        buf = torch.empty_like(p.grad)  # written with the gradient by this step
                        fresh_buffers.append((state, buf))
                    call.add(momentum_buffers=buf, fresh=int(fresh))
            call.add(lr=lr, l2=grad_l2, l1=l1, decay=decay, value_l2=l2)
    if not skip:  # a skipped step leaves the state as it is: new buffers are not kept
        for state, buf in fresh_buffers:
            state["momentum_buffer"] = buf
    impl = _ops.impl
    values = []
    for key, call in calls.items():
        a = call.lists
        common = dict(l2=a["l2"], l1=a["l1"], decay=a["decay"], value_l2=a["value_l2"], maximize=key[2], **scalars)
        if key[1] == "adam":
            value = impl.adam_step_(a["params"], a["grads"], a["exp_avgs"], a["exp_avg_sqs"],
                                    a.get("max_exp_avg_sqs", []), a["steps"], a["lr"], a["beta1"], a["beta2"],
                                    a["eps"], **common)
        else:
            value = impl.sgd_step_(a["params"], a["grads"], a.get("momentum_buffers", []), a["lr"], a["momentum"],
                                   a["dampening"], a.get("fresh", [0]), nesterov=key[4], **common)
        values.append((reduce_over, value))
    return values


def _init_adam_state(state: dict, p: torch.Tensor, group: dict) -> None:
    """Adam's lazy state initialisation, as torch.optim.Adam._init_group does it."""
    if len(state) != 0:
        return
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
