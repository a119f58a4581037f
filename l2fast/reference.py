"""Pure-PyTorch versions of every l2fast op: the test oracle, and the fallback without the native library.

Each function has the signature and the meaning of the native op of the same name (see
csrc/l2fast.cpp), and runs the same argument checks (l2fast/checks.py): coefficient lists hold one
value for all tensors or one per tensor, a tensor whose coefficients are all zero is not read (its
penalty gradient is exactly 0, whatever the scale), sums accumulate in float64, and results are
float64 when any input is float64, else float32 (float32 on the CPU for empty lists).
The in-place ops write with torch's in-place ops, so autograd sees the writes as it sees the native
ones (version counters, leaves that require grad). This module imports only torch and checks.py.
"""
from __future__ import annotations

import torch

from . import checks


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weighted_sums(tensors, sq_weights, abs_weights) -> list[torch.Tensor]:
    """Per tensor, sq * sum(x^2) + abs * sum|x| in float64; zero weights leave their term out."""
    values = []
    for x, a, b in zip(tensors, sq_weights, abs_weights):
        x64 = x.to(torch.float64)
        value = x64.new_zeros(())
        if a != 0.0:
            value = value + a * x64.pow(2).sum()
        if b != 0.0:
            value = value + b * x64.abs().sum()
        values.append(value)
    return values


def _finish(tensors, values, per_tensor: bool) -> torch.Tensor:
    dtype = checks.result_dtype(tensors)
    device = tensors[0].device if tensors else torch.device("cpu")
    if not values:
        return torch.zeros((0,) if per_tensor else (), dtype=dtype, device=device)
    stacked = torch.stack(values)
    return (stacked if per_tensor else stacked.sum()).to(dtype)


def sq_norm(tensors, coeffs, per_tensor: bool) -> torch.Tensor:
    checks.check_norm_args(tensors, coeffs)
    cs = checks.expand_coeffs(coeffs, len(tensors))
    return _finish(tensors, _weighted_sums(tensors, cs, [0.0] * len(cs)), per_tensor)


def l1_norm(tensors, coeffs, per_tensor: bool) -> torch.Tensor:
    checks.check_norm_args(tensors, coeffs)
    cs = checks.expand_coeffs(coeffs, len(tensors))
    return _finish(tensors, _weighted_sums(tensors, [0.0] * len(cs), cs), per_tensor)


def _penalty_value(params, l2s, l1s) -> torch.Tensor:
    return _finish(params, _weighted_sums(params, [0.5 * c for c in l2s], l1s), per_tensor=False)


def penalty(params, l2, l1) -> torch.Tensor:
    checks.check_penalty_args(params, l2, l1)
    return _penalty_value(params, checks.expand_coeffs(l2, len(params)), checks.expand_coeffs(l1, len(params)))


def _step(w: torch.Tensor, l2: float, l1: float) -> torch.Tensor:
    """l2 * w + l1 * sign(w) in the op-math dtype of w, leaving out terms with a zero coefficient."""
    w = w.to(opmath_dtype(w.dtype))
    step = torch.zeros_like(w)
    if l2 != 0.0:
        step = l2 * w
    if l1 != 0.0:
        step = step + l1 * torch.sign(w)
    return step


def penalty_grad(params, scale, l2, l1) -> list[torch.Tensor]:
    checks.check_penalty_grad_args(params, scale, l2, l1)
    grads = []
    for w, a, b in zip(params, checks.expand_coeffs(l2, len(params)), checks.expand_coeffs(l1, len(params))):
        if a == 0.0 and b == 0.0:
            grads.append(torch.zeros_like(w))  # not read, and exactly 0 even for a NaN or infinite scale
            continue
        s = scale.reshape(()).to(opmath_dtype(w.dtype))
        grads.append((s * _step(w, a, b)).to(w.dtype))
    return grads


def add_penalty_grad_(params, grads, l2, l1) -> torch.Tensor:
    checks.check_add_penalty_grad_args(params, grads, l2, l1)
    l2s, l1s = checks.expand_coeffs(l2, len(params)), checks.expand_coeffs(l1, len(params))
    value = _penalty_value([w.detach() for w in params], l2s, l1s)  # before grads[i] may write params[i]
    for w, g, a, b in zip(params, grads, l2s, l1s):
        if a != 0.0 or b != 0.0:
            g.copy_(g.to(opmath_dtype(g.dtype)) + _step(w, a, b))
    return value


def decay_(params, factors, l2) -> torch.Tensor:
    checks.check_decay_args(params, factors, l2)
    l2s = checks.expand_coeffs(l2, len(params))
    value = _penalty_value([w.detach() for w in params], l2s, [0.0] * len(params))  # before the decay
    for w, fraction in zip(params, checks.expand_coeffs(factors, len(params))):
        if fraction != 0.0:
            w.copy_(w.to(opmath_dtype(w.dtype)) * (1.0 - fraction))
    return value
