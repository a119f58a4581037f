"""The functions users call. Each takes tensors (a list, any iterable such as model.parameters(), or
one tensor) and coefficients (one float for every tensor, or a sequence with one value per tensor).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Real

import torch

from . import _ops, sharding

Tensors = torch.Tensor | Iterable[torch.Tensor]
Coeffs = float | Sequence[float]


def backend() -> str:
    """"native" when the compiled kernels are in use, "reference" for the pure-PyTorch fallback."""
    return _ops.BACKEND


# Element types accepted without a per-element isinstance call: a list of 10,000 parameters costs
# ~0.2 ms through one pass of type() against ~0.9 ms through isinstance (nn.Parameter's instance
# check runs in Python). Other tensor subclasses take the slow path.
_PLAIN_TENSOR_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))


def _tensor_list(tensors: Tensors, name: str) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    if not isinstance(tensors, Iterable):
        raise TypeError(f"l2fast: {name} must be a tensor or an iterable of tensors, got {type(tensors).__name__}")
    tensors = list(tensors)
    if _PLAIN_TENSOR_TYPES.issuperset(map(type, tensors)):
        return tensors
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"l2fast: {name}[{i}] is a {type(t).__name__}, not a tensor")
    return tensors


def _coeff_list(coeffs: Coeffs, name: str) -> list[float]:
    """Coefficients as floats. Their values are checked by the ops themselves (finite, >= 0), so
    torch.ops.l2fast.* calls are checked too; here only what the ops cannot see: the types (a string
    would otherwise be read character by character)."""
    if isinstance(coeffs, Real) and not isinstance(coeffs, bool):
        return [float(coeffs)]
    if isinstance(coeffs, (str, bytes, torch.Tensor)) or not isinstance(coeffs, Iterable):
        raise TypeError(f"l2fast: {name} must be a float or a sequence of floats, got {type(coeffs).__name__}")
    values = list(coeffs)
    for i, c in enumerate(values):
        if isinstance(c, bool) or not isinstance(c, Real):
            raise TypeError(f"l2fast: {name}[{i}] is a {type(c).__name__}, not a number")
    return [float(c) for c in values]


def _picked(coeffs: list[float], indices: list[int], n: int, name: str) -> list[float]:
    """The coefficients of the tensors at indices (sharded path: each run of tensors is one call)."""
    if len(coeffs) == 1:
        return coeffs
    if len(coeffs) != n:
        raise ValueError(f"l2fast: {name} has {len(coeffs)} values for {n} tensors; give one value, or one per tensor")
    return [coeffs[i] for i in indices]


# Every function below takes ``group``: a process group over which plain tensors are shards (FSDP1
# flat parameters, ZeRO partitions), so that the value returned is the whole model's, on every
# process. DTensors (FSDP2, any mesh) need no group: their shards are found and summed by themselves.
# Every process of the group must call the function, holding tensors or not.


def sq_norm(tensors: Tensors, coeffs: Coeffs | None = None, per_tensor: bool = False, group=None) -> torch.Tensor:
    """sum_i c_i * ||x_i||^2 (c_i = 1 by default), or one value per tensor when per_tensor."""
    tensors = _tensor_list(tensors, "tensors")
    coeffs = _coeff_list(1.0 if coeffs is None else coeffs, "coeffs")
    if not sharding.is_sharded(tensors, group):
        return _ops.impl_for(tensors).sq_norm(tensors, coeffs, per_tensor)
    return sharding.global_value(tensors, group, lambda idx, local: _ops.impl_for(local).sq_norm(
        local, _picked(coeffs, idx, len(tensors), "coeffs"), per_tensor), per_tensor)


def l1_norm(tensors: Tensors, coeffs: Coeffs | None = None, per_tensor: bool = False, group=None) -> torch.Tensor:
    """sum_i c_i * |x_i|_1 (c_i = 1 by default), or one value per tensor when per_tensor."""
    tensors = _tensor_list(tensors, "tensors")
    coeffs = _coeff_list(1.0 if coeffs is None else coeffs, "coeffs")
    if not sharding.is_sharded(tensors, group):
        return _ops.impl_for(tensors).l1_norm(tensors, coeffs, per_tensor)
    return sharding.global_value(tensors, group, lambda idx, local: _ops.impl_for(local).l1_norm(
        local, _picked(coeffs, idx, len(tensors), "coeffs"), per_tensor), per_tensor)


def penalty(params: Tensors, l2: Coeffs = 0.0, l1: Coeffs = 0.0, group=None) -> torch.Tensor:
    """Differentiable l2/2 * sum ||w||^2 + l1 * sum |w|_1, computed and differentiated in one fused pass.

    The drop-in for the hand-written penalty: ``loss = task_loss + l2fast.penalty(model.parameters(), l2=1e-4)``
    gives every weight the gradient ``l2 * w``, exactly what ``weight_decay=l2`` means in torch.optim.SGD.
    Over shards the value is the whole model's and each process's shards get their own ``l2 * w``.
    """
    params = _tensor_list(params, "params")
    l2, l1 = _coeff_list(l2, "l2"), _coeff_list(l1, "l1")
    if not sharding.is_sharded(params, group):
        return _ops.impl_for(params).penalty(params, l2, l1)
    n = len(params)
    return sharding.global_value(params, group, lambda idx, local: _ops.impl_for(local).penalty(
        local, _picked(l2, idx, n, "l2"), _picked(l1, idx, n, "l1")))


def add_penalty_grad_(
    params: Tensors, grads: Tensors | None = None, l2: Coeffs = 0.0, l1: Coeffs = 0.0, group=None
) -> torch.Tensor:
    """grads_i += l2_i * w_i + l1_i * sign(w_i), in place; returns the penalty value of the same pass.

    grads defaults to each parameter's .grad. The value is l2/2 * sum ||w||^2 + l1 * sum |w|_1, a
    tensor on the parameters' device (no host synchronisation).
    """
    params = _tensor_list(params, "params")
    if grads is None:
        grads = [p.grad for p in params]
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise RuntimeError(f"l2fast: params{missing[:5]} have no .grad; run backward first or pass grads")
    grads = _tensor_list(grads, "grads")
    l2, l1 = _coeff_list(l2, "l2"), _coeff_list(l1, "l1")
    with torch.no_grad():  # the op reads params and writes grads: nothing for autograd to record
        if not sharding.is_sharded(params, group):
            return _ops.impl_for(params).add_penalty_grad_(params, grads, l2, l1)
        _same_length(params, grads)
        n, dtensor = len(params), sharding.dtensor_type()
        return sharding.global_value(params, group, lambda idx, local: _ops.impl_for(local).add_penalty_grad_(
            local, [sharding.local(grads[i], dtensor) for i in idx], _picked(l2, idx, n, "l2"), _picked(l1, idx, n, "l1")))


def decay_(params: Tensors, factors: Coeffs, l2: Coeffs = 0.0, group=None) -> torch.Tensor:
    """w_i *= (1 - f_i), in place: decoupled weight decay, as torch.optim.AdamW applies lr * weight_decay.

    ``factors`` are the decay fractions f_i (AdamW's ``lr * weight_decay``): finite and >= 0, like
    AdamW's lr and weight_decay (a fraction above 1 is allowed, as AdamW allows it).

    Returns l2/2 * sum ||w||^2 of the weights before the decay, measured in the same pass (zero when
    l2 is zero), so decoupled training reports its penalty without a second read of the weights.
    """
    params = _tensor_list(params, "params")
    factors, l2 = _coeff_list(factors, "factors"), _coeff_list(l2, "l2")
    with torch.no_grad():  # an in-place update of leaf parameters, as optimizers make it
        if not sharding.is_sharded(params, group):
            return _ops.impl_for(params).decay_(params, factors, l2)
        n = len(params)
        return sharding.global_value(params, group, lambda idx, local: _ops.impl_for(local).decay_(
            local, _picked(factors, idx, n, "factors"), _picked(l2, idx, n, "l2")))


def clip_grad_norm_(params: Tensors, max_norm: float, eps: float = 1e-6, group=None) -> torch.Tensor:
    """Scales every .grad so the global L2 norm is at most max_norm; returns the norm before clipping.

    Like torch.nn.utils.clip_grad_norm_, but the norm comes from one fused, float64-accumulated pass,
    and nothing waits on the device. Over shards (DTensor gradients, or ``group=``) the norm is the
    whole model's, the same on every process, returned as a plain tensor.
    """
    grads = [p.grad for p in _tensor_list(params, "params") if p.grad is not None]
    if not grads and group is None:
        return torch.zeros(())
    total = sq_norm(grads, group=group).sqrt()
    if grads:
        scale = (max_norm / (total + eps)).clamp(max=1.0)
        dtensor = sharding.dtensor_type()
        local = [sharding.local(g, dtensor) for g in grads]
        torch._foreach_mul_(local, scale.to(local[0].device, local[0].dtype))
    return total


def _same_length(params: list, grads: list) -> None:
    if len(params) != len(grads):
        raise ValueError(f"l2fast: got {len(params)} params but {len(grads)} grads")
