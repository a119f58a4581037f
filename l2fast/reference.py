"""Pure-PyTorch versions of every l2fast op: the test oracle, and the fallback without the native library.

Each function has the signature and the meaning of the native op of the same name (see
csrc/l2fast.cpp), and runs the native op's argument checks with the same messages (the checks at the
end of this file; tests/ops/test_checks.py holds them to the native ones): coefficient lists hold one
value for all tensors or one per tensor, a tensor whose coefficients are all zero is not read (its
penalty gradient is exactly 0, whatever the scale), sums accumulate in float64, and results are
float64 when any input is float64, else float32 (float32 on the CPU for empty lists).
Anchored penalties (L2-SP, EWC) add sp_i / 2 * sum(F_i * (w - a_i)^2) per tensor: a pull toward the
anchor a_i weighted by the importance F_i (1 without fisher); a tensor whose l2_sp is zero has its
anchor and fisher left unread. Anchors are constants: no gradient flows to them.
The in-place ops write with torch's in-place ops, so autograd sees the writes as it sees the native
ones (version counters, leaves that require grad). This module imports only torch.
"""
from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import is_fake


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
    if not values:
        return torch.zeros((0,) if per_tensor else (), dtype=dtype, device=device)
    stacked = torch.stack(values)
    return (stacked if per_tensor else stacked.sum()).to(dtype)


def sq_norm(tensors, coeffs, per_tensor: bool) -> torch.Tensor:
    check_norm_args(tensors, coeffs)
    cs = expand_coeffs(coeffs, len(tensors))
    return _finish(tensors, _weighted_sums(tensors, cs, [0.0] * len(cs)), per_tensor)


def l1_norm(tensors, coeffs, per_tensor: bool) -> torch.Tensor:
    check_norm_args(tensors, coeffs)
    cs = expand_coeffs(coeffs, len(tensors))
    return _finish(tensors, _weighted_sums(tensors, [0.0] * len(cs), cs), per_tensor)


def _anchor_lists(anchors, fisher) -> tuple[list, list]:
    """The anchors and fisher arguments as lists; None and [] both mean none given."""
    return list(anchors or []), list(fisher or [])


def _anchor_of(anchors: list, fisher: list, i: int) -> tuple:
    """(anchors[i], fisher[i]), None for a list not given."""
    return anchors[i] if anchors else None, fisher[i] if fisher else None


def _pull(w: torch.Tensor, anchor: torch.Tensor, fisher) -> torch.Tensor:
    """F * (w - anchor) in the dtype of w (the op math); w - anchor without fisher."""
    d = w - anchor.to(w.dtype)
    return d if fisher is None else fisher.to(w.dtype) * d


def _pull_sq_sum(w: torch.Tensor, anchor: torch.Tensor, fisher) -> torch.Tensor:
    """sum(F * (w - anchor)^2) in float64."""
    d2 = (w.to(torch.float64) - anchor.to(torch.float64)).pow(2)
    return d2.sum() if fisher is None else (fisher.to(torch.float64) * d2).sum()


def _penalty_value(params, l2s, l1s, anchors, fisher, sps) -> torch.Tensor:
    values = _weighted_sums(params, [0.5 * c for c in l2s], l1s)
    for i, sp in enumerate(sps):
        if sp != 0.0:
            values[i] = values[i] + 0.5 * sp * _pull_sq_sum(params[i], *_anchor_of(anchors, fisher, i))
    return _finish(params, values, per_tensor=False)


def penalty(params, l2, l1, anchors=None, fisher=None, l2_sp=(0.0,)) -> torch.Tensor:
    anchors, fisher = _anchor_lists(anchors, fisher)
    check_penalty_args(params, l2, l1, anchors, fisher, l2_sp)
    if torch.is_grad_enabled():  # autograd records the call
        check_constant_anchors(anchors, fisher)
    n = len(params)
    return _penalty_value(params, expand_coeffs(l2, n), expand_coeffs(l1, n), anchors, fisher, expand_coeffs(l2_sp, n))


def _step(w: torch.Tensor, l2: float, l1: float, sp: float, anchor, fisher) -> torch.Tensor:
    """l2 * w + l1 * sign(w) + sp * F * (w - anchor) in the op-math dtype of w, leaving out terms with a
    zero coefficient."""
    w = w.to(opmath_dtype(w.dtype))
    step = torch.zeros_like(w)
    if l2 != 0.0:
        step = l2 * w
    if l1 != 0.0:
        step = step + l1 * torch.sign(w)
    if sp != 0.0:
        step = step + sp * _pull(w, anchor, fisher)
    return step


def penalty_grad(params, scale, l2, l1, anchors=None, fisher=None, l2_sp=(0.0,)) -> list[torch.Tensor]:
    anchors, fisher = _anchor_lists(anchors, fisher)
    check_penalty_grad_args(params, scale, l2, l1, anchors, fisher, l2_sp)
    if torch.is_grad_enabled():  # autograd records the call
        check_constant_anchors(anchors, fisher)
    n = len(params)
    grads = []
    for i, (w, a, b, sp) in enumerate(zip(params, expand_coeffs(l2, n), expand_coeffs(l1, n), expand_coeffs(l2_sp, n))):
        if a == 0.0 and b == 0.0 and sp == 0.0:
            grads.append(torch.zeros_like(w))  # not read, and exactly 0 even for a NaN or infinite scale
            continue
        s = scale.reshape(()).to(opmath_dtype(w.dtype))
        grads.append((s * _step(w, a, b, sp, *_anchor_of(anchors, fisher, i))).to(w.dtype))
    return grads


def add_penalty_grad_(params, grads, l2, l1, anchors=None, fisher=None, l2_sp=(0.0,)) -> torch.Tensor:
    anchors, fisher = _anchor_lists(anchors, fisher)
    check_add_penalty_grad_args(params, grads, l2, l1, anchors, fisher, l2_sp)
    n = len(params)
    l2s, l1s, sps = expand_coeffs(l2, n), expand_coeffs(l1, n), expand_coeffs(l2_sp, n)
    # The value before grads[i] may write params[i].
    value = _penalty_value([w.detach() for w in params], l2s, l1s, anchors, fisher, sps)
    for i, (w, g, a, b, sp) in enumerate(zip(params, grads, l2s, l1s, sps)):
        if a != 0.0 or b != 0.0 or sp != 0.0:
            g.copy_(g.to(opmath_dtype(g.dtype)) + _step(w, a, b, sp, *_anchor_of(anchors, fisher, i)))
    return value


def decay_(params, factors, l2, anchors=None, fisher=None, sp_factors=(0.0,), l2_sp=(0.0,)) -> torch.Tensor:
    """w = w * (1 - f) - spf * F * (w - anchor), both terms from the weights before the update."""
    anchors, fisher = _anchor_lists(anchors, fisher)
    check_decay_args(params, factors, l2, anchors, fisher, sp_factors, l2_sp)
    n = len(params)
    value = _penalty_value([w.detach() for w in params], expand_coeffs(l2, n), [0.0] * n, anchors, fisher,
                           expand_coeffs(l2_sp, n))  # before the decay
    for i, (w, fraction, spf) in enumerate(zip(params, expand_coeffs(factors, n), expand_coeffs(sp_factors, n))):
        if fraction != 0.0 or spf != 0.0:
            wi = w.to(opmath_dtype(w.dtype))
            new = wi * (1.0 - fraction)
            if spf != 0.0:
                new = new.add(_pull(wi, *_anchor_of(anchors, fisher, i)), alpha=-spf)
            w.copy_(new)
    return value


# The penalized optimizer steps: torch.optim's for-loop Adam / SGD, written with the same torch ops
# (lerp_, add(alpha=), addcmul_, addcdiv_), in the op-math dtype of the parameters (the state is
# stored back in the parameter dtype). The pull toward an anchor joins the gradient (coupled), or
# moves the weight beside the decoupled decay (decoupled_sp: AdamW's order, both from the old weight).


def _step_scalars(grad_scale, found_inf, clip) -> tuple[bool, float, float]:
    """(skip, inv_scale, clip) read on the host: the reference may synchronise."""
    skip = found_inf is not None and float(found_inf) != 0.0
    inv_scale = float(torch.tensor(1.0 / float(grad_scale), dtype=torch.float32)) if grad_scale is not None else 1.0
    return skip, inv_scale, 1.0 if clip is None else float(clip)


def _unscaled(g, inv_scale, clip):
    """(g * inv_scale) * clip in op math: the gradient GradScaler.unscale_ and clip_grad_norm_ leave."""
    return g.to(opmath_dtype(g.dtype)) * inv_scale * clip


def _op_grad(w, g, inv_scale, clip, maximize, l2, l1):
    """_unscaled(g), negated under maximize, plus l2 * w + l1 * sign(w); all in op math."""
    g = _unscaled(g, inv_scale, clip)
    if maximize:
        g = -g
    if l2 != 0.0:
        g = g.add(w, alpha=l2)
    if l1 != 0.0:
        g = g + l1 * torch.sign(w)
    return g


def _anchored_step(wi, g, keep, lr, sp, decoupled, anchor, fisher):
    """(the weight times keep, the gradient) with the pull sp * F * (wi - anchor) added to the
    gradient, or (decoupled) its lr-multiple taken from the weight."""
    new = wi * keep
    if sp == 0.0:
        return new, g
    pull = _pull(wi, anchor, fisher)
    if decoupled:
        return new.add(pull, alpha=-(lr * sp)), g
    return new, g.add(pull, alpha=sp)


def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, l2, l1, decay,
               value_l2, maximize, grad_scale, found_inf, clip, anchors=None, fisher=None, l2_sp=(0.0,),
               decoupled_sp=False) -> torch.Tensor:
    anchors, fisher = _anchor_lists(anchors, fisher)
    states = {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "max_exp_avg_sqs": max_exp_avg_sqs}
    _check_step_args(params, grads, states, steps, grad_scale, found_inf, clip, anchors, fisher, l2_sp)
    if len(steps) != len(params):
        raise RuntimeError(f"l2fast: got {len(params)} params but {len(steps)} steps")
    coeffs = {"beta1": beta1, "beta2": beta2, "eps": eps, "lr": lr, "l2": l2, "l1": l1, "decay": decay,
              "value_l2": value_l2}
    _check_step_coeffs(coeffs, len(params))
    n = len(params)
    ex = {k: expand_coeffs(v, n) for k, v in {**coeffs, "l2_sp": l2_sp}.items()}
    value = _penalty_value([w.detach() for w in params], ex["value_l2"], ex["l1"], anchors, fisher, ex["l2_sp"])
    skip, inv_scale, clip_value = _step_scalars(grad_scale, found_inf, clip)
    if skip:
        return value
    for i, w in enumerate(params):
        steps[i].add_(1)
        step = float(steps[i])
        op = opmath_dtype(w.dtype)
        wi = w.to(op)
        g = _op_grad(wi, grads[i], inv_scale, clip_value, maximize, ex["l2"][i], ex["l1"][i])
        if grad_scale is not None or clip is not None:
            grads[i].copy_(_unscaled(grads[i], inv_scale, clip_value))
        wi, g = _anchored_step(wi, g, 1.0 - ex["decay"][i], ex["lr"][i], ex["l2_sp"][i], decoupled_sp,
                               *_anchor_of(anchors, fisher, i))
        b1, b2 = ex["beta1"][i], ex["beta2"][i]
        m = exp_avgs[i].to(op).lerp_(g, 1.0 - b1)
        v = exp_avg_sqs[i].to(op).mul_(b2).addcmul_(g, g, value=1.0 - b2)
        v_hat = v
        if max_exp_avg_sqs:
            v_hat = torch.maximum(max_exp_avg_sqs[i].to(op), v)
            max_exp_avg_sqs[i].copy_(v_hat)
        step_size = ex["lr"][i] / (1.0 - b1**step)
        denom = v_hat.sqrt() / (1.0 - b2**step) ** 0.5 + ex["eps"][i]
        w.copy_(wi.addcdiv_(m, denom, value=-step_size))
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
    return value


def sgd_step_(params, grads, momentum_buffers, lr, momentum, dampening, fresh, l2, l1, decay, value_l2, nesterov,
              maximize, grad_scale, found_inf, clip, anchors=None, fisher=None, l2_sp=(0.0,),
              decoupled_sp=False) -> torch.Tensor:
    anchors, fisher = _anchor_lists(anchors, fisher)
    _check_step_args(params, grads, {"momentum_buffers": momentum_buffers}, [], grad_scale, found_inf, clip, anchors,
                     fisher, l2_sp)
    _check_step_coeffs({"momentum": momentum, "dampening": dampening}, len(params))
    if len(fresh) not in (1, len(params)):
        raise RuntimeError(f"l2fast: fresh has {len(fresh)} values for {len(params)} tensors; give one value, or one per tensor")
    coeffs = {"momentum": momentum, "dampening": dampening, "lr": lr, "l2": l2, "l1": l1, "decay": decay,
              "value_l2": value_l2}
    _check_step_coeffs({k: coeffs[k] for k in ("lr", "l2", "l1", "decay", "value_l2")}, len(params))
    n = len(params)
    ex = {k: expand_coeffs(v, n) for k, v in {**coeffs, "l2_sp": l2_sp}.items()}
    fresh = list(fresh) * n if len(fresh) == 1 else list(fresh)
    value = _penalty_value([w.detach() for w in params], ex["value_l2"], ex["l1"], anchors, fisher, ex["l2_sp"])
    skip, inv_scale, clip_value = _step_scalars(grad_scale, found_inf, clip)
    if skip:
        return value
    for i, w in enumerate(params):
        op = opmath_dtype(w.dtype)
        wi = w.to(op)
        g = _op_grad(wi, grads[i], inv_scale, clip_value, maximize, ex["l2"][i], ex["l1"][i])
        if grad_scale is not None or clip is not None:
            grads[i].copy_(_unscaled(grads[i], inv_scale, clip_value))
        wi, g = _anchored_step(wi, g, 1.0 - ex["decay"][i], ex["lr"][i], ex["l2_sp"][i], decoupled_sp,
                               *_anchor_of(anchors, fisher, i))
        if momentum_buffers:
            mu = ex["momentum"][i]
            buf = g if fresh[i] else momentum_buffers[i].to(op).mul_(mu).add_(g, alpha=1.0 - ex["dampening"][i])
            momentum_buffers[i].copy_(buf)
            g = g.add(buf, alpha=mu) if nesterov else buf
        w.copy_(wi.add_(g, alpha=-ex["lr"][i]))
    return value


# --- argument checks: those of csrc/entry/checks.cpp and optim_step.cpp, in the same order with the
# same messages, for the fallback (with the native library, the fake kernels run the native checks) ---

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_norm_args(tensors, coeffs) -> None:
    check_tensors(tensors, "tensors")
    check_coeffs(coeffs, len(tensors), "coeffs")


# anchors and fisher: lists (empty: none given), as the ops pass them after _anchor_lists.


def check_penalty_args(params, l2, l1, anchors=(), fisher=(), l2_sp=(0.0,)) -> None:
    check_tensors(params, "params")
    check_coeffs(l2, len(params), "l2")
    check_coeffs(l1, len(params), "l1")
    check_anchors(params, anchors, fisher, {"l2_sp": l2_sp})


def check_penalty_grad_args(params, scale, l2, l1, anchors=(), fisher=(), l2_sp=(0.0,)) -> None:
    check_tensors(params, "params")
    if scale.numel() != 1:
        raise RuntimeError(f"l2fast: scale must hold one value, got shape {list(scale.shape)}")
    if params and scale.device != params[0].device:
        raise RuntimeError(f"l2fast: scale is on {scale.device} but params are on {params[0].device}")
    check_coeffs(l2, len(params), "l2")
    check_coeffs(l1, len(params), "l1")
    check_anchors(params, anchors, fisher, {"l2_sp": l2_sp})


def check_add_penalty_grad_args(params, grads, l2, l1, anchors=(), fisher=(), l2_sp=(0.0,)) -> None:
    check_tensors(params, "params")
    check_tensors(grads, "grads")  # before the pairing, so a sparse grad is named as sparse
    _check_paired(params, grads, "grads")
    check_coeffs(l2, len(params), "l2")
    check_coeffs(l1, len(params), "l1")
    check_anchors(params, anchors, fisher, {"l2_sp": l2_sp})
    check_no_overlap({"grads": grads}, ("params", params), {"anchors": anchors, "fisher": fisher})


def check_decay_args(params, factors, l2, anchors=(), fisher=(), sp_factors=(0.0,), l2_sp=(0.0,)) -> None:
    check_tensors(params, "params")
    check_coeffs(factors, len(params), "factors")
    check_coeffs(l2, len(params), "l2")
    check_anchors(params, anchors, fisher, {"sp_factors": sp_factors, "l2_sp": l2_sp})
    check_no_overlap({"params": params}, constants={"anchors": anchors, "fisher": fisher})


def check_anchors(params, anchors, fisher, sp_coeffs: dict) -> None:
    """The anchors and fisher lists against params, then the pull coefficients (sp_coeffs: lists by
    name, in argument order; each valid, and zero without anchors), then that no anchor or fisher lies
    in its own parameter's memory: csrc/entry/checks.cpp's check_anchors."""
    if fisher and not anchors:
        raise RuntimeError("l2fast: fisher needs anchors (the importance of each weight's pull toward its anchor)")
    _check_aligned(params, anchors, "anchors", lambda i, a: None if a.dtype in (params[i].dtype, torch.bfloat16) else (
        f"l2fast: anchors[{i}] has dtype {a.dtype} but params[{i}] has dtype {params[i].dtype}; "
        "an anchor is stored in its parameter's dtype or in bfloat16"))
    _check_aligned(params, fisher, "fisher", lambda i, f: None if f.dtype == anchors[i].dtype else (
        f"l2fast: fisher[{i}] has dtype {f.dtype} but anchors[{i}] has dtype {anchors[i].dtype}; "
        "fisher is stored in its anchor's dtype"))
    for name, coeffs in sp_coeffs.items():
        check_coeffs(coeffs, len(params), name)
        if not anchors and any(c != 0.0 for c in coeffs):
            raise RuntimeError(f"l2fast: {name} is nonzero but no anchors were given; "
                               "pass anchors (the weights to pull toward)")
    # In its own parameter's memory, an anchor would move with the weight (a zero pull), fisher with it.
    for i, (w, a) in enumerate(zip(params, anchors)):
        if _shares_memory(a, w):
            raise RuntimeError(f"l2fast: anchors[{i}] shares memory with params[{i}]; the pull toward it would always "
                               "be zero (anchor a copy: p.detach().clone())")
        if fisher and _shares_memory(fisher[i], w):
            raise RuntimeError(f"l2fast: fisher[{i}] shares memory with params[{i}]; pass a tensor of its own")


def _check_aligned(params, others, name: str, dtype_error) -> None:
    """others (anchors, fisher; empty: not given) are valid tensors, one per param, each lying like its
    param; dtype_error(i, others[i]): the message of a dtype that does not fit, or None."""
    check_tensors(others, name)
    if not others:
        return
    _check_count(params, others, name)
    for i, (w, x) in enumerate(zip(params, others)):
        _check_like_param(i, w, x, name, dtype_error(i, x))


def check_constant_anchors(anchors, fisher) -> None:
    """No anchor or fisher requires grad where autograd records a call: they are constants, given no
    gradient. The native autograd kernels of penalty (csrc/dispatch/reduce_autograd.cpp) and of
    penalty_grad (_ops.py) refuse them alike."""
    for name, tensors in (("anchors", anchors), ("fisher", fisher)):
        if any(t.requires_grad for t in tensors):
            raise RuntimeError(f"l2fast: {name} require grad, but the penalty has no gradient with respect to them; "
                               "pass constants (tensor.detach())")


def _check_step_args(params, grads, states: dict, steps, grad_scale, found_inf, clip, anchors, fisher, l2_sp) -> None:
    """The tensor arguments of adam_step_ and sgd_step_, their anchors and l2_sp; states: the state lists
    by name (empty: absent)."""
    states = {name: tensors for name, tensors in states.items() if tensors}
    check_tensors(params, "params")
    check_tensors(grads, "grads")
    _check_paired(params, grads, "grads")
    for name, tensors in states.items():
        _check_paired(params, tensors, name)
    check_anchors(params, anchors, fisher, {"l2_sp": l2_sp})
    if not params:
        return
    device = params[0].device
    for i, step in enumerate(steps):
        _check_scalar(step, f"steps[{i}]", device, host_allowed=True)
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf), ("clip", clip)):
        if t is not None:
            _check_scalar(t, name, device, host_allowed=False)
    check_no_overlap({"params": params, "grads": grads, **states, "steps": steps},
                     constants={"anchors": anchors, "fisher": fisher})


def _check_step_coeffs(coeffs: dict, n: int) -> None:
    for name, values in coeffs.items():
        check_coeffs(values, n, name)


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


def _check_count(params, others, name: str) -> None:
    if len(params) != len(others):
        tail = "; they must pair up one to one" if name == "grads" else ""
        raise RuntimeError(f"l2fast: got {len(params)} params but {len(others)} {name}{tail}")


def _check_paired(params, others, name: str) -> None:
    """others[i] (grads, or an optimizer state list) matches params[i]: device, dtype, shape, layout."""
    _check_count(params, others, name)
    if name != "grads":  # grads are checked on their own before they are paired
        check_tensors(others, name)
    note = "" if name == "grads" else "; optimizer state is kept in the parameter dtype"
    for i, (w, x) in enumerate(zip(params, others)):
        if x is None:
            raise RuntimeError(f"l2fast: {name}[{i}] is undefined (None)")
        dtype_error = None if x.dtype == w.dtype else (
            f"l2fast: {name}[{i}] has dtype {x.dtype} but params[{i}] has dtype {w.dtype}{note}")
        _check_like_param(i, w, x, name, dtype_error)


def _check_like_param(i: int, w: torch.Tensor, x: torch.Tensor, name: str, dtype_error) -> None:
    """x = name[i] lies like w = params[i]: its device, then its dtype (dtype_error: the message of a
    mismatch, None when it fits), shape and memory layout, the order of the native checks."""
    if x.device != w.device:
        raise RuntimeError(f"l2fast: {name}[{i}] is on {x.device} but params[{i}] is on {w.device}")
    if dtype_error is not None:
        raise RuntimeError(dtype_error)
    if x.shape != w.shape:
        raise RuntimeError(f"l2fast: {name}[{i}] has shape {list(x.shape)} but params[{i}] has shape {list(w.shape)}")
    if x.stride() != w.stride() and not (x.is_contiguous() and w.is_contiguous()):
        raise RuntimeError(
            f"l2fast: {name}[{i}] has strides {list(x.stride())} but params[{i}] has strides {list(w.stride())}; "
            "they must share one memory layout"
        )


def _check_scalar(t: torch.Tensor, name: str, device: torch.device, host_allowed: bool) -> None:
    if t.numel() != 1:
        raise RuntimeError(f"l2fast: {name} must hold one value, got shape {list(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"l2fast: {name} has dtype {t.dtype}; expected float32 or float64")
    if t.device != device and not (host_allowed and t.device.type == "cpu"):
        raise RuntimeError(f"l2fast: {name} is on {t.device} but params are on {device}")


def check_coeffs(coeffs, n: int, name: str) -> None:
    if len(coeffs) not in (1, n):
        raise RuntimeError(f"l2fast: {name} has {len(coeffs)} values for {n} tensors; give one value, or one per tensor")
    for i, c in enumerate(coeffs):
        if not math.isfinite(c) or c < 0.0:
            raise RuntimeError(f"l2fast: {name}[{i}] = {c:g} is invalid; coefficients must be finite and >= 0")


def _byte_range(t: torch.Tensor, read: bool, list_index: int, index: int) -> tuple:
    """(base, start, end, read, list, index) of the bytes a dense tensor occupies: by address when it has
    data, within its storage when it has none (meta and fake tensors)."""
    storage = t.untyped_storage()
    offset = t.storage_offset() * t.element_size()
    size = t.numel() * t.element_size()
    base, start = (storage._cdata, offset) if t.is_meta or is_fake(t) else (0, storage.data_ptr() + offset)
    return base, start, start + size, read, list_index, index


def check_no_overlap(written: dict, read: tuple = ("", []), constants: dict | None = None) -> None:
    """No two tensors of the written lists (by name) share memory, and no tensor of the read list
    (name, tensors) shares memory with a written one, except read[i] being exactly the first written
    list's [i] (updated in place element by element); nor does any tensor of the constants (read lists
    by name, anchors and fisher, without that exception). O(n log n)."""
    constants = constants or {}
    names = list(written) + [read[0]] + list(constants)
    ranges = [_byte_range(t, False, k, i) for k, ts in enumerate(written.values()) for i, t in enumerate(ts) if t.numel()]
    first = next(iter(written.values()))
    for i, t in enumerate(read[1]):
        if t.numel() == 0:
            continue
        r = _byte_range(t, True, len(written), i)
        if i < len(first) and first[i].numel() > 0 and _byte_range(first[i], False, 0, i)[:3] == r[:3]:
            continue
        ranges.append(r)
    for k, ts in enumerate(constants.values(), start=len(written) + 1):
        ranges += [_byte_range(t, True, k, i) for i, t in enumerate(ts) if t.numel()]
    ranges.sort(key=lambda r: (r[0], r[1], r[3], r[4], r[5]))  # base, start, written first, list, index
    # Sweep in start order: a range overlaps an earlier one exactly when it starts before the furthest
    # end reached so far, so keeping the furthest-reaching written and read range is enough.
    furthest = [None, None]  # [read]
    for r in ranges:
        furthest = [f if f is not None and f[0] == r[0] else None for f in furthest]
        w, rd = furthest
        if w is not None and w[2] > r[1]:
            _overlap_error(w, r, names)
        if not r[3] and rd is not None and rd[2] > r[1]:
            _overlap_error(rd, r, names)
        if furthest[r[3]] is None or r[2] > furthest[r[3]][2]:
            furthest[r[3]] = r


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b have any byte in common."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    ra, rb = _byte_range(a, True, 0, 0), _byte_range(b, True, 0, 0)
    return ra[0] == rb[0] and ra[1] < rb[2] and rb[1] < ra[2]


def _overlap_error(a: tuple, b: tuple, names: list):
    def name(r):
        return f"{names[r[4]]}[{r[5]}]"

    if not a[3] and not b[3]:
        a, b = sorted((a, b), key=lambda r: (r[4], r[5]))  # in argument order
        how = "are the same memory (a tensor listed twice?)" if a[1:3] == b[1:3] else "overlap in memory"
        raise RuntimeError(f"l2fast: {name(a)} and {name(b)} {how}; an in-place op must write each element once")
    w, r = (b, a) if a[3] else (a, b)
    raise RuntimeError(f"l2fast: {name(w)} overlaps {name(r)} in memory; the op would read values while it overwrites them")


def expand_coeffs(coeffs, n: int) -> list[float]:
    """A checked coefficient list (one value, or one per tensor) as one float per tensor."""
    coeffs = [float(c) for c in coeffs]
    return coeffs * n if len(coeffs) == 1 else coeffs


def result_dtype(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
