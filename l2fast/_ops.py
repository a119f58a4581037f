"""Loads the native library, registers every op's fake kernel and gives penalty_grad its autograd formula.

The fake kernel of an op (its meta kernel too) is the native entry point with kernels that make no pass
over memory (csrc/entry/no_pass.cpp): the native argument checks, run without data on the devices the
fake tensors stand for, and the results allocated. The native library registers everything else (the
backends' kernels and the autograd kernels of the other ops).

`impl` is what the rest of l2fast calls: `torch.ops.l2fast` when the native library loaded, else
the pure-PyTorch `reference` module (with one warning that says why; `REASON` keeps that line).
L2FAST_REQUIRE_NATIVE=1 turns a failed load into an ImportError, so a broken build can never pass
unnoticed.
"""
from __future__ import annotations

import functools
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


def _register_fake_kernels() -> None:
    # Registered from here rather than as C++ Meta kernels: torch calls a Python fake kernel with the
    # fake tensors as they are (on the devices they stand for), a Meta kernel with meta tensors only,
    # where a device mismatch could not be told from a match.
    no_pass = torch._C.DispatchKey.CompositeExplicitAutograd
    for name in torch._C._dispatch_get_all_op_names():
        if name.startswith("l2fast::"):
            op = torch._library.utils.lookup_op(name)
            torch.library.register_fake(name, functools.partial(op._op_dk, no_pass), allow_override=False)


def _register_autograd() -> None:
    # The reductions' backward is one fused pass of penalty_grad (their Autograd kernels are C++:
    # csrc/dispatch/reduce_autograd.cpp, as are those of the in-place ops, csrc/dispatch/inplace_autograd.cpp).
    # penalty_grad's own derivative is here, so second derivatives (Hessian-vector products,
    # gradgradcheck) are exact too.
    def penalty_grad_setup(ctx, inputs, output):
        params, scale, l2, l1, anchors, fisher, l2_sp = inputs
        anchors, fisher = list(anchors or []), list(fisher or [])
        reference.check_constant_anchors(anchors, fisher)  # runs only when autograd records the call
        ctx.save_for_backward(scale, *params, *anchors, *fisher)
        ctx.counts = len(params), len(anchors)
        ctx.l2, ctx.l1, ctx.l2_sp = l2, l1, l2_sp

    def penalty_grad_backward(ctx, grad_outs):
        # out_i = scale * (l2_i w_i + l1_i sign(w_i) + sp_i F_i (w_i - a_i)). d out_i / d w_i =
        # scale * (l2_i + sp_i F_i), elementwise (sign is flat almost everywhere); d out_i / d scale is
        # the step at scale 1. A tensor with zero coefficients is not read: its gradients are exactly 0,
        # as its output is. Anchors and fisher are constants: they get no gradient.
        n, n_anchors = ctx.counts
        scale, *tensors = ctx.saved_tensors
        params, anchors, fisher = tensors[:n], tensors[n : n + n_anchors], tensors[n + n_anchors :]
        l2s, sps = reference.expand_coeffs(ctx.l2, n), reference.expand_coeffs(ctx.l2_sp, n)
        grad_params = None
        if any(ctx.needs_input_grad[0]):
            s = scale.reshape(())
            grad_params = [_penalty_grad_of_w(g, w, s, l2s[i], sps[i], fisher[i] if fisher else None)
                           for i, (g, w) in enumerate(zip(grad_outs, params))]
        grad_scale = None
        if ctx.needs_input_grad[1]:
            steps = torch.ops.l2fast.penalty_grad(params, torch.ones_like(scale), ctx.l2, ctx.l1, anchors or None,
                                                  fisher or None, ctx.l2_sp)
            total = scale.new_zeros((), dtype=torch.float64)
            for g, step in zip(grad_outs, steps):
                total = total + (g.double() * step.double()).sum()
            grad_scale = total.to(scale.dtype).reshape(scale.shape)
        # The rest get no gradient, in the structure of the arguments as called (needs_input_grad's: the
        # dispatcher leaves out trailing ones at their defaults): a list of Nones for a tensor list.
        rest = [[None] * len(x) if isinstance(x, (list, tuple)) else None for x in ctx.needs_input_grad[2:]]
        return grad_params, grad_scale, *rest

    torch.library.register_autograd("l2fast::penalty_grad", penalty_grad_backward, setup_context=penalty_grad_setup)


def _penalty_grad_of_w(grad_out, w, s, l2, sp, fisher):
    """grad_out * d out / d w for one tensor: grad_out * s * (l2 + sp * F), F = 1 without fisher."""
    if l2 == 0.0 and sp == 0.0:
        return torch.zeros_like(w)
    if sp == 0.0 or fisher is None:
        return (grad_out * (s * (l2 + sp))).to(w.dtype)
    return (grad_out * (s * (l2 + sp * fisher.to(reference.opmath_dtype(w.dtype))))).to(w.dtype)


if BACKEND == "native":
    _register_fake_kernels()
    _register_autograd()
