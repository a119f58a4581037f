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


# The penalized optimizer steps: torch.optim's for-loop Adam / SGD, written with the same torch ops
# (lerp_, add(alpha=), addcmul_, addcdiv_), in the op-math dtype of the parameters (the state is
# stored back in the parameter dtype).


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


def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, l2, l1, decay,
               value_l2, maximize, grad_scale, found_inf, clip) -> torch.Tensor:
    from . import optim_checks

    coeffs = optim_checks.check_adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                                          beta2, eps, l2, l1, decay, value_l2, grad_scale, found_inf, clip)
    n = len(params)
    ex = {k: checks.expand_coeffs(v, n) for k, v in coeffs.items()}
    value = _penalty_value([w.detach() for w in params], ex["value_l2"], ex["l1"])
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
        wi = wi * (1.0 - ex["decay"][i])
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
              maximize, grad_scale, found_inf, clip) -> torch.Tensor:
    from . import optim_checks

    coeffs = optim_checks.check_sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, l2, l1, decay,
                                         value_l2, grad_scale, found_inf, clip)
    n = len(params)
    ex = {k: checks.expand_coeffs(v, n) for k, v in coeffs.items()}
    fresh = list(fresh) * n if len(fresh) == 1 else list(fresh)
    value = _penalty_value([w.detach() for w in params], ex["value_l2"], ex["l1"])
    skip, inv_scale, clip_value = _step_scalars(grad_scale, found_inf, clip)
    if skip:
        return value
    for i, w in enumerate(params):
        op = opmath_dtype(w.dtype)
        wi = w.to(op)
        g = _op_grad(wi, grads[i], inv_scale, clip_value, maximize, ex["l2"][i], ex["l1"][i])
        if grad_scale is not None or clip is not None:
            grads[i].copy_(_unscaled(grads[i], inv_scale, clip_value))
        wi = wi * (1.0 - ex["decay"][i])
        if momentum_buffers:
            mu = ex["momentum"][i]
            buf = g if fresh[i] else momentum_buffers[i].to(op).mul_(mu).add_(g, alpha=1.0 - ex["dampening"][i])
            momentum_buffers[i].copy_(buf)
            g = g.add(buf, alpha=mu) if nesterov else buf
        w.copy_(wi.add_(g, alpha=-ex["lr"][i]))
    return value
