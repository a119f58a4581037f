"""Pure-PyTorch versions of every l2fast op: the test oracle, and the fallback without the native library.

Each function has the signature and the meaning of the native op of the same name (see
csrc/l2fast.cpp): coefficient lists hold one value for all tensors or one per tensor, a tensor
whose coefficients are all zero is not read, sums accumulate in float64, and results are float64
when any input is float64, else float32. This module imports only torch.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensors(tensors, name: str = "tensors") -> None:
    for i, t in enumerate(tensors):
        if t is None:
            raise RuntimeError(f"l2fast: {name}[{i}] is undefined (None)")
        if t.layout != torch.strided:
            raise RuntimeError(
                f"l2fast: {name}[{i}] has layout {t.layout}; only dense (strided) tensors are supported, not sparse ones"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise RuntimeError(
                f"l2fast: {name}[{i}] has dtype {t.dtype}; supported dtypes are float32, float64, float16 and bfloat16"
            )
        if t.device != tensors[0].device:
            raise RuntimeError(
                f"l2fast: {name}[{i}] is on {t.device} but {name}[0] is on {tensors[0].device}; "
                "all tensors must be on one device"
            )
        if not _is_dense(t):
            raise RuntimeError(
                f"l2fast: {name}[{i}] with shape {list(t.shape)} and strides {list(t.stride())} is not dense in memory; "
                "pass .contiguous() tensors"
            )


def _is_dense(t: torch.Tensor) -> bool:
    if t.is_contiguous() or t.numel() <= 1:
        return True
    # Dense in some dimension order (e.g. channels_last): sorted strides build up the sizes exactly.
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def check_pairs(params, grads) -> None:
    if len(params) != len(grads):
        raise RuntimeError(f"l2fast: got {len(params)} params but {len(grads)} grads; they must pair up one to one")
    for i, (w, g) in enumerate(zip(params, grads)):
        if g is None:
            raise RuntimeError(f"l2fast: grads[{i}] is undefined (None)")
        if g.dtype != w.dtype:
            raise RuntimeError(f"l2fast: grads[{i}] has dtype {g.dtype} but params[{i}] has dtype {w.dtype}")
        if g.shape != w.shape:
            raise RuntimeError(f"l2fast: grads[{i}] has shape {list(g.shape)} but params[{i}] has shape {list(w.shape)}")
        if g.stride() != w.stride() and not (g.is_contiguous() and w.is_contiguous()):
            raise RuntimeError(
                f"l2fast: grads[{i}] has strides {list(g.stride())} but params[{i}] has strides {list(w.stride())}; "
                "they must share one memory layout"
            )


def expand_coeffs(coeffs, n: int, name: str) -> list[float]:
    coeffs = [float(c) for c in coeffs]
    if len(coeffs) not in (1, n):
        raise RuntimeError(f"l2fast: {name} has {len(coeffs)} values for {n} tensors; give one value, or one per tensor")
    return coeffs * n if len(coeffs) == 1 else coeffs


def result_dtype(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


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
    dtype = result_dtype(tensors)
    device = tensors[0].device if tensors else torch.device("cpu")
    if per_tensor:
        if not values:
            return torch.zeros(0, dtype=dtype, device=device)
        return torch.stack(values).to(dtype)
    if not values:
        return torch.zeros((), dtype=dtype, device=device)
    return torch.stack(values).sum().to(dtype)


def sq_norm(tensors, coeffs, per_tensor: bool) -> torch.Tensor:
    check_tensors(tensors)
    cs = expand_coeffs(coeffs, len(tensors), "coeffs")
    return _finish(tensors, _weighted_sums(tensors, cs, [0.0] * len(cs)), per_tensor)


def l1_norm(tensors, coeffs, per_tensor: bool) -> torch.Tensor:
    check_tensors(tensors)
    cs = expand_coeffs(coeffs, len(tensors), "coeffs")
    return _finish(tensors, _weighted_sums(tensors, [0.0] * len(cs), cs), per_tensor)


def penalty(params, l2, l1) -> torch.Tensor:
    check_tensors(params, "params")
    l2s = expand_coeffs(l2, len(params), "l2")
    l1s = expand_coeffs(l1, len(params), "l1")
    return _finish(params, _weighted_sums(params, [0.5 * c for c in l2s], l1s), per_tensor=False)


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
    check_tensors(params, "params")
    if scale.numel() != 1:
        raise RuntimeError(f"l2fast: scale must hold one value, got shape {list(scale.shape)}")
    l2s = expand_coeffs(l2, len(params), "l2")
    l1s = expand_coeffs(l1, len(params), "l1")
    grads = []
    for w, a, b in zip(params, l2s, l1s):
        s = scale.reshape(()).to(opmath_dtype(w.dtype))
        grads.append((s * _step(w, a, b)).to(w.dtype))
    return grads


def add_penalty_grad_(params, grads, l2, l1) -> torch.Tensor:
    check_tensors(params, "params")
    check_pairs(params, grads)
    check_tensors(grads, "grads")
    l2s = expand_coeffs(l2, len(params), "l2")
    l1s = expand_coeffs(l1, len(params), "l1")
    with torch.no_grad():
        for w, g, a, b in zip(params, grads, l2s, l1s):
            if a != 0.0 or b != 0.0:
                g.copy_(g.to(opmath_dtype(g.dtype)) + _step(w, a, b))
        return penalty([w.detach() for w in params], l2s, l1s)


def decay_(params, factors, l2) -> torch.Tensor:
    check_tensors(params, "params")
    fs = expand_coeffs(factors, len(params), "factors")
    with torch.no_grad():
        value = penalty([w.detach() for w in params], l2, [0.0])  # of the weights before the decay
        for w, f in zip(params, fs):
            if f != 0.0:
                w.copy_(w.to(opmath_dtype(w.dtype)) * (1.0 - f))
    return value
