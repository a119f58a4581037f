"""The ops' argument checks in Python: the same checks, in the same order, with the same messages as
csrc/common/checks.cpp. The fake kernels and the pure-PyTorch reference run them, so a bad call fails
alike natively, under torch.compile and without the native library. This module imports only torch.
"""
from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import is_fake

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_norm_args(tensors, coeffs) -> None:
    check_tensors(tensors, "tensors")
    check_coeffs(coeffs, len(tensors), "coeffs")


def check_penalty_args(params, l2, l1) -> None:
    check_tensors(params, "params")
    check_coeffs(l2, len(params), "l2")
    check_coeffs(l1, len(params), "l1")


def check_penalty_grad_args(params, scale, l2, l1) -> None:
    check_tensors(params, "params")
    _check_scale(scale, params)
    check_coeffs(l2, len(params), "l2")
    check_coeffs(l1, len(params), "l1")


def check_add_penalty_grad_args(params, grads, l2, l1) -> None:
    check_tensors(params, "params")
    check_tensors(grads, "grads")  # before the pairing, so a sparse grad is named as sparse
    check_pairs(params, grads)
    check_coeffs(l2, len(params), "l2")
    check_coeffs(l1, len(params), "l1")
    check_no_overlap(grads, "grads", params, "params")


def check_decay_args(params, factors, l2) -> None:
    check_tensors(params, "params")
    check_coeffs(factors, len(params), "factors")
    check_coeffs(l2, len(params), "l2")
    check_no_overlap(params, "params", [], "")


def check_tensors(tensors, name: str) -> None:
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
        if g.device != w.device:
            raise RuntimeError(f"l2fast: grads[{i}] is on {g.device} but params[{i}] is on {w.device}")
        if g.dtype != w.dtype:
            raise RuntimeError(f"l2fast: grads[{i}] has dtype {g.dtype} but params[{i}] has dtype {w.dtype}")
        if g.shape != w.shape:
            raise RuntimeError(f"l2fast: grads[{i}] has shape {list(g.shape)} but params[{i}] has shape {list(w.shape)}")
        if g.stride() != w.stride() and not (g.is_contiguous() and w.is_contiguous()):
            raise RuntimeError(
                f"l2fast: grads[{i}] has strides {list(g.stride())} but params[{i}] has strides {list(w.stride())}; "
                "they must share one memory layout"
            )


def check_coeffs(coeffs, n: int, name: str) -> None:
    if len(coeffs) not in (1, n):
        raise RuntimeError(f"l2fast: {name} has {len(coeffs)} values for {n} tensors; give one value, or one per tensor")
    for i, c in enumerate(coeffs):
        if not math.isfinite(c) or c < 0.0:
            raise RuntimeError(f"l2fast: {name}[{i}] = {c:g} is invalid; coefficients must be finite and >= 0")


def _check_scale(scale: torch.Tensor, params) -> None:
    if scale.numel() != 1:
        raise RuntimeError(f"l2fast: scale must hold one value, got shape {list(scale.shape)}")
    if params and scale.device != params[0].device:
        raise RuntimeError(f"l2fast: scale is on {scale.device} but params are on {params[0].device}")


def _span(t: torch.Tensor, written: bool, index: int) -> tuple:
    """(base, start, end, list, index) of the bytes a dense tensor occupies: by address when it has data,
    within its storage when it has none (meta and fake tensors)."""
    storage = t.untyped_storage()
    offset = t.storage_offset() * t.element_size()
    size = t.numel() * t.element_size()
    data = 0 if t.is_meta or is_fake(t) else storage.data_ptr()
    base, start = (0, data + offset) if data else (storage._cdata, offset)
    return base, start, start + size, 0 if written else 1, index


def check_no_overlap(written, written_name: str, read, read_name: str) -> None:
    """No two written tensors share memory, and no read tensor shares memory with a written one except
    read[i] being exactly written[i] (updated in place element by element). O(n log n)."""
    spans = [_span(t, True, i) for i, t in enumerate(written) if t.numel() > 0]
    for i, t in enumerate(read):
        if t.numel() == 0:
            continue
        span = _span(t, False, i)
        if i < len(written) and written[i].numel() > 0 and _span(written[i], True, i)[:3] == span[:3]:
            continue
        spans.append(span)
    spans.sort(key=lambda s: (s[0], s[1], s[3], s[4]))  # base, start, written first, index
    # Sweep in start order: a span overlaps an earlier one exactly when it starts before the furthest
    # end reached so far, so keeping the furthest-reaching written and read span is enough.
    furthest = [None, None]
    for span in spans:
        base, start, end, kind, _ = span
        furthest = [f if f is not None and f[0] == base else None for f in furthest]
        w, r = furthest
        if w is not None and w[2] > start:
            _overlap_error(w, span, written_name, read_name)
        if kind == 0 and r is not None and r[2] > start:
            _overlap_error(r, span, written_name, read_name)
        if furthest[kind] is None or end > furthest[kind][2]:
            furthest[kind] = span


def _overlap_error(a: tuple, b: tuple, written_name: str, read_name: str):
    if a[3] == 0 and b[3] == 0:
        how = "are the same memory (a tensor listed twice?)" if a[1:3] == b[1:3] else "overlap in memory"
        raise RuntimeError(
            f"l2fast: {written_name}[{min(a[4], b[4])}] and {written_name}[{max(a[4], b[4])}] {how}; "
            "an in-place op must write each element once"
        )
    w, r = (a, b) if a[3] == 0 else (b, a)
    raise RuntimeError(
        f"l2fast: {written_name}[{w[4]}] overlaps {read_name}[{r[4]}] in memory; "
        "the op would read values while it overwrites them"
    )


def expand_coeffs(coeffs, n: int) -> list[float]:
    """A checked coefficient list (one value, or one per tensor) as one float per tensor."""
    coeffs = [float(c) for c in coeffs]
    return coeffs * n if len(coeffs) == 1 else coeffs


def result_dtype(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
