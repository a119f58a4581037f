"""The functions users call. Each takes tensors (a list, any iterable such as model.parameters(), or
one tensor) and coefficients (one float for every tensor, or a sequence with one value per tensor).

penalty, add_penalty_grad_ and decay_ also pull weights toward anchors (L2-SP; EWC with fisher):
``anchors`` and ``fisher`` are sequences aligned with the params (or None), and each tensor's pull
adds l2_sp / 2 * sum(F * (w - anchor)^2) to the value and l2_sp * F * (w - anchor) to the gradient
(F = 1 without fisher). An anchor is stored in its parameter's dtype or in bfloat16, fisher in its
anchor's dtype; a tensor whose l2_sp is zero has its anchor and fisher left unread. Anchors and fisher
are constants: no gradient flows to them.
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


def _optional_tensor_list(tensors: Tensors | None, name: str) -> list[torch.Tensor] | None:
    return None if tensors is None else _tensor_list(tensors, name)


def _anchor_args(n: int, anchors: list | None, fisher: list | None, sp: dict, indices: list[int] | None = None,
                 dtensor: type | None = None) -> tuple:
    """The ops' trailing arguments: anchors, fisher, then the pull coefficients (sp: lists by name, in
    argument order), for the n tensors or, on the sharded path, the local shards of those at indices.
    Left out when no anchors or fisher are given and no coefficient asks for them (or there are no
    tensors, whose empty sum needs none), so such a call is the op's call without anchors exactly."""
    if not anchors and not fisher and (n == 0 or not any(c != 0.0 for cs in sp.values() for c in cs)):
        return ()
    if indices is None:
        return (anchors, fisher, *sp.values())
    return (_picked_local(anchors, indices, n, "anchors", dtensor),
            _picked_local(fisher, indices, n, "fisher", dtensor),
            *(_picked(coeffs, indices, n, name) for name, coeffs in sp.items()))


def _picked_local(tensors: list | None, indices: list[int], n: int, name: str, dtensor: type | None) -> list | None:
    """The local shards of tensors (anchors, fisher) at indices (sharded path), None when not given."""
    if not tensors:
        return None
    _same_length(n, tensors, name)
    return [sharding.local(tensors[i], dtensor) for i in indices]


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
        return _ops.impl.sq_norm(tensors, coeffs, per_tensor)
    return sharding.global_value(tensors, group, lambda idx, local: _ops.impl.sq_norm(
        local, _picked(coeffs, idx, len(tensors), "coeffs"), per_tensor), per_tensor)


def l1_norm(tensors: Tensors, coeffs: Coeffs | None = None, per_tensor: bool = False, group=None) -> torch.Tensor:
    """sum_i c_i * |x_i|_1 (c_i = 1 by default), or one value per tensor when per_tensor."""
    tensors = _tensor_list(tensors, "tensors")
    coeffs = _coeff_list(1.0 if coeffs is None else coeffs, "coeffs")
    if not sharding.is_sharded(tensors, group):
        return _ops.impl.l1_norm(tensors, coeffs, per_tensor)
    return sharding.global_value(tensors, group, lambda idx, local: _ops.impl.l1_norm(
        local, _picked(coeffs, idx, len(tensors), "coeffs"), per_tensor), per_tensor)


def penalty(params: Tensors, l2: Coeffs = 0.0, l1: Coeffs = 0.0, group=None, *, anchors: Tensors | None = None,
            fisher: Tensors | None = None, l2_sp: Coeffs = 0.0) -> torch.Tensor:
    """Differentiable l2/2 * sum ||w||^2 + l1 * sum |w|_1 + l2_sp/2 * sum F (w - anchor)^2, computed and
    differentiated in one fused pass.

    The drop-in for the hand-written penalty: ``loss = task_loss + l2fast.penalty(model.parameters(), l2=1e-4)``
    gives every weight the gradient ``l2 * w``, exactly what ``weight_decay=l2`` means in torch.optim.SGD.
    With ``anchors`` (L2-SP) the gradient gains ``l2_sp * F * (w - anchor)``; differentiable in the
    params only. Over shards the value is the whole model's and each process's shards get their own gradient.
    """
    params = _tensor_list(params, "params")
    l2, l1 = _coeff_list(l2, "l2"), _coeff_list(l1, "l1")
    anchors, fisher = _optional_tensor_list(anchors, "anchors"), _optional_tensor_list(fisher, "fisher")
    sp = {"l2_sp": _coeff_list(l2_sp, "l2_sp")}
    n = len(params)
    if not sharding.is_sharded(params, group):
        return _ops.impl.penalty(params, l2, l1, *_anchor_args(n, anchors, fisher, sp))
    dtensor = sharding.dtensor_type()
    return sharding.global_value(params, group, lambda idx, local: _ops.impl.penalty(
        local, _picked(l2, idx, n, "l2"), _picked(l1, idx, n, "l1"),
        *_anchor_args(n, anchors, fisher, sp, idx, dtensor)))


def add_penalty_grad_(
    params: Tensors, grads: Tensors | None = None, l2: Coeffs = 0.0, l1: Coeffs = 0.0, group=None, *,
    anchors: Tensors | None = None, fisher: Tensors | None = None, l2_sp: Coeffs = 0.0
) -> torch.Tensor:
    """grads_i += l2_i * w_i + l1_i * sign(w_i) + l2_sp_i * F_i * (w_i - anchor_i), in place; returns the
    penalty value of the same pass.

    grads defaults to each parameter's .grad. The value is l2/2 * sum ||w||^2 + l1 * sum |w|_1 +
    l2_sp/2 * sum F (w - anchor)^2, a tensor on the parameters' device (no host synchronisation).
    """
    params = _tensor_list(params, "params")
    if grads is None:
        grads = [p.grad for p in params]
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise RuntimeError(f"l2fast: params{missing[:5]} have no .grad; run backward first or pass grads")
    grads = _tensor_list(grads, "grads")
    l2, l1 = _coeff_list(l2, "l2"), _coeff_list(l1, "l1")
    anchors, fisher = _optional_tensor_list(anchors, "anchors"), _optional_tensor_list(fisher, "fisher")
    sp = {"l2_sp": _coeff_list(l2_sp, "l2_sp")}
    n = len(params)
    with torch.no_grad():  # the op reads params and writes grads: nothing for autograd to record
        if not sharding.is_sharded(params, group):
            return _ops.impl.add_penalty_grad_(params, grads, l2, l1, *_anchor_args(n, anchors, fisher, sp))
        _same_length(n, grads, "grads")
        dtensor = sharding.dtensor_type()
        return sharding.global_value(params, group, lambda idx, local: _ops.impl.add_penalty_grad_(
            local, [sharding.local(grads[i], dtensor) for i in idx], _picked(l2, idx, n, "l2"),
            _picked(l1, idx, n, "l1"), *_anchor_args(n, anchors, fisher, sp, idx, dtensor)))


def decay_(params: Tensors, factors: Coeffs, l2: Coeffs = 0.0, group=None, *, anchors: Tensors | None = None,
           fisher: Tensors | None = None, sp_factors: Coeffs = 0.0, l2_sp: Coeffs = 0.0) -> torch.Tensor:
    """w_i = w_i * (1 - f_i) - s_i * F_i * (w_i - anchor_i), in place: decoupled weight decay, as
    torch.optim.AdamW applies lr * weight_decay, and a decoupled pull toward the anchors.

    ``factors`` are the decay fractions f_i (AdamW's ``lr * weight_decay``): finite and >= 0, like
    AdamW's lr and weight_decay (a fraction above 1 is allowed, as AdamW allows it). ``sp_factors``
    are the pull fractions s_i (``lr * l2_sp``); both terms are taken from the weights before the update.

    Returns l2/2 * sum ||w||^2 + l2_sp/2 * sum F (w - anchor)^2 of the weights before the update,
    measured in the same pass (zero when l2 and l2_sp are zero), so decoupled training reports its
    penalty without a second read of the weights.
    """
    params = _tensor_list(params, "params")
    factors, l2 = _coeff_list(factors, "factors"), _coeff_list(l2, "l2")
    anchors, fisher = _optional_tensor_list(anchors, "anchors"), _optional_tensor_list(fisher, "fisher")
    sp = {"sp_factors": _coeff_list(sp_factors, "sp_factors"), "l2_sp": _coeff_list(l2_sp, "l2_sp")}
    n = len(params)
    with torch.no_grad():  # an in-place update of leaf parameters, as optimizers make it
        if not sharding.is_sharded(params, group):
            return _ops.impl.decay_(params, factors, l2, *_anchor_args(n, anchors, fisher, sp))
        dtensor = sharding.dtensor_type()
        return sharding.global_value(params, group, lambda idx, local: _ops.impl.decay_(
            local, _picked(factors, idx, n, "factors"), _picked(l2, idx, n, "l2"),
            *_anchor_args(n, anchors, fisher, sp, idx, dtensor)))


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


def _same_length(n: int, others: list, name: str) -> None:
    """others (grads, anchors, fisher) has one tensor per param (sharded path: it is indexed by param)."""
    if len(others) != n:
        raise ValueError(f"l2fast: got {n} params but {len(others)} {name}")
