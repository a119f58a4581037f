"""Loads the native library and gives every op its fake (meta) kernel and autograd formula.

`impl` is what the rest of l2fast calls: `torch.ops.l2fast` when the native library loaded, else
the pure-PyTorch `reference` module (with one warning that says why; `REASON` keeps that line).
L2FAST_REQUIRE_NATIVE=1 turns a failed load into an ImportError, so a broken build can never pass
unnoticed.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import _native, reference

LOADED, REASON = _native.load()  # loading registers torch.ops.l2fast.*

if not LOADED:
    if os.environ.get("L2FAST_REQUIRE_NATIVE") == "1":
        raise ImportError(f"l2fast: L2FAST_REQUIRE_NATIVE=1 but the native library did not load: {REASON}")
    warnings.warn(f"l2fast: {REASON}; using the slower pure-PyTorch reference ops", RuntimeWarning, stacklevel=2)
    impl = reference
    BACKEND = "reference"
else:
    impl = torch.ops.l2fast
    BACKEND = "native"


def backend_reason() -> str:
    """One line on why backend() is what it is: the torch the build was made for, or why it is unused."""
    return REASON


def _new_result(tensors, per_tensor: bool) -> torch.Tensor:
    dtype = reference.result_dtype(tensors)
    shape = (len(tensors),) if per_tensor else ()
    return tensors[0].new_empty(shape, dtype=dtype)


def _register_fakes() -> None:
    # Fake kernels run the same argument checks as the native ones, so tracing fails as eagerly would.
    @torch.library.register_fake("l2fast::sq_norm")
    def _(tensors, coeffs, per_tensor):
        reference.check_tensors(tensors)
        reference.expand_coeffs(coeffs, len(tensors), "coeffs")
        return _new_result(tensors, per_tensor)

    torch.library.register_fake("l2fast::l1_norm")(_)

    @torch.library.register_fake("l2fast::penalty")
    def _(params, l2, l1):
        reference.check_tensors(params, "params")
        reference.expand_coeffs(l2, len(params), "l2")
        reference.expand_coeffs(l1, len(params), "l1")
        return _new_result(params, per_tensor=False)

    @torch.library.register_fake("l2fast::penalty_grad")
    def _(params, scale, l2, l1):
        reference.check_tensors(params, "params")
        torch._check(scale.numel() == 1, lambda: "l2fast: scale must hold one value")
        return [torch.empty_like(p) for p in params]

    @torch.library.register_fake("l2fast::add_penalty_grad_")
    def _(params, grads, l2, l1):
        reference.check_tensors(params, "params")
        reference.check_pairs(params, grads)
        return _new_result(params, per_tensor=False)

    @torch.library.register_fake("l2fast::decay_")
    def _(params, factors, l2):
        reference.check_tensors(params, "params")
        reference.expand_coeffs(factors, len(params), "factors")
        reference.expand_coeffs(l2, len(params), "l2")
        return _new_result(params, per_tensor=False)


def _register_autograd() -> None:
    # Every backward is one fused pass of penalty_grad: d/dw of l2/2 ||w||^2 + l1 |w|_1, times the
    # incoming gradient.
    def save_params(ctx, tensors, l2, l1, per_tensor=False):
        ctx.save_for_backward(*tensors)
        ctx.l2, ctx.l1, ctx.per_tensor = l2, l1, per_tensor

    def backward(ctx, grad_output):
        tensors = list(ctx.saved_tensors)
        if not ctx.per_tensor:
            return torch.ops.l2fast.penalty_grad(tensors, grad_output, ctx.l2, ctx.l1)
        grads = torch.ops.l2fast.penalty_grad(tensors, grad_output.new_ones(()), ctx.l2, ctx.l1)
        torch._foreach_mul_(grads, list(grad_output.unbind()))
        return grads

    def penalty_setup(ctx, inputs, output):
        params, l2, l1 = inputs
        save_params(ctx, params, l2, l1)

    def sq_norm_setup(ctx, inputs, output):  # d/dx c ||x||^2 = 2c x: an L2 coefficient of 2c
        tensors, coeffs, per_tensor = inputs
        save_params(ctx, tensors, [2.0 * c for c in coeffs], [0.0], per_tensor)

    def l1_norm_setup(ctx, inputs, output):  # d/dx c |x|_1 = c sign(x): an L1 coefficient of c
        tensors, coeffs, per_tensor = inputs
        save_params(ctx, tensors, [0.0], coeffs, per_tensor)

    for name, setup in (("penalty", penalty_setup), ("sq_norm", sq_norm_setup), ("l1_norm", l1_norm_setup)):
        n_extra = 2  # coefficient arguments, which get no gradient
        torch.library.register_autograd(
            f"l2fast::{name}", lambda ctx, g: (backward(ctx, g),) + (None,) * n_extra, setup_context=setup
        )


if BACKEND == "native":
    _register_fakes()
    _register_autograd()
