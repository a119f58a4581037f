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

from . import _native, checks, optim_checks, reference

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
    if not tensors:  # as the native ops answer empty lists: an empty sum, float32 on the CPU
        return torch.zeros((0,) if per_tensor else (), dtype=torch.float32)
    shape = (len(tensors),) if per_tensor else ()
    return tensors[0].new_empty(shape, dtype=checks.result_dtype(tensors))


def _register_fakes() -> None:
    # Fake kernels run exactly the checks of the native ones (checks.py mirrors checks.cpp), so a
    # traced or meta call fails as the eager one would.
    @torch.library.register_fake("l2fast::sq_norm")
    def _(tensors, coeffs, per_tensor):
        checks.check_norm_args(tensors, coeffs)
        return _new_result(tensors, per_tensor)

    torch.library.register_fake("l2fast::l1_norm")(_)

    @torch.library.register_fake("l2fast::penalty")
    def _(params, l2, l1):
        checks.check_penalty_args(params, l2, l1)
        return _new_result(params, per_tensor=False)

    @torch.library.register_fake("l2fast::penalty_grad")
    def _(params, scale, l2, l1):
        checks.check_penalty_grad_args(params, scale, l2, l1)
        return [torch.empty_like(p) for p in params]

    @torch.library.register_fake("l2fast::add_penalty_grad_")
    def _(params, grads, l2, l1):
        checks.check_add_penalty_grad_args(params, grads, l2, l1)
        return _new_result(params, per_tensor=False)

    @torch.library.register_fake("l2fast::decay_")
    def _(params, factors, l2):
        checks.check_decay_args(params, factors, l2)
        return _new_result(params, per_tensor=False)

    @torch.library.register_fake("l2fast::adam_step_")
    def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, l2, l1, decay,
          value_l2, maximize, grad_scale, found_inf, clip):
        optim_checks.check_adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2,
                                     eps, l2, l1, decay, value_l2, grad_scale, found_inf, clip)
        return _new_result(params, per_tensor=False)

    @torch.library.register_fake("l2fast::sgd_step_")
    def _(params, grads, momentum_buffers, lr, momentum, dampening, fresh, l2, l1, decay, value_l2, nesterov,
          maximize, grad_scale, found_inf, clip):
        optim_checks.check_sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, l2, l1, decay, value_l2,
                                    grad_scale, found_inf, clip)
        return _new_result(params, per_tensor=False)


def _register_autograd() -> None:
    # The reductions' backward is one fused pass of penalty_grad (their Autograd kernels are C++:
    # csrc/common/reduce_autograd.cpp, as are those of the in-place ops, csrc/common/inplace_autograd.cpp).
    # penalty_grad's own derivative is here, so second derivatives (Hessian-vector products,
    # gradgradcheck) are exact too.
    def penalty_grad_setup(ctx, inputs, output):
        params, scale, l2, l1 = inputs
        ctx.save_for_backward(scale, *params)
        ctx.l2, ctx.l1 = l2, l1

    def penalty_grad_backward(ctx, grad_outs):
        # out_i = scale * (l2_i w_i + l1_i sign(w_i)). d out_i / d w_i = scale * l2_i, elementwise (sign is
        # flat almost everywhere); d out_i / d scale = l2_i w_i + l1_i sign(w_i), the step at scale 1. A
        # tensor with zero coefficients is not read: its gradients are exactly 0, as its output is.
        scale, *params = ctx.saved_tensors
        l2s = checks.expand_coeffs(ctx.l2, len(params))
        grad_params = None
        if any(ctx.needs_input_grad[0]):
            s = scale.reshape(())
            grad_params = [
                (g * (s * a)).to(w.dtype) if a != 0.0 else torch.zeros_like(w) for g, w, a in zip(grad_outs, params, l2s)
            ]
        grad_scale = None
        if ctx.needs_input_grad[1]:
            steps = torch.ops.l2fast.penalty_grad(params, torch.ones_like(scale), ctx.l2, ctx.l1)
            total = scale.new_zeros((), dtype=torch.float64)
            for g, step in zip(grad_outs, steps):
                total = total + (g.double() * step.double()).sum()
            grad_scale = total.to(scale.dtype).reshape(scale.shape)
        return grad_params, grad_scale, None, None

    torch.library.register_autograd("l2fast::penalty_grad", penalty_grad_backward, setup_context=penalty_grad_setup)


if BACKEND == "native":
    _register_fakes()
    _register_autograd()
