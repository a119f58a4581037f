"""Argument checks of the penalized optimizer steps (adam_step_, sgd_step_) in Python: the checks of
csrc/common/optim_step.cpp with the same messages, for the fake kernels and the reference. Imports
only torch and checks.py.
"""
from __future__ import annotations

import torch

from . import checks


def check_adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, l2, l1,
                    decay, value_l2, grad_scale, found_inf, clip) -> dict:
    """Checks adam_step_'s arguments; returns its coefficient lists by name."""
    states = {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    if max_exp_avg_sqs:
        states["max_exp_avg_sqs"] = max_exp_avg_sqs
    coeffs = {"beta1": beta1, "beta2": beta2, "eps": eps, "lr": lr, "l2": l2, "l1": l1, "decay": decay,
              "value_l2": value_l2}
    _check_step_args(params, grads, states, steps, coeffs, {"grad_scale": grad_scale, "found_inf": found_inf, "clip": clip})
    return coeffs


def check_sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, l2, l1, decay, value_l2, grad_scale,
                   found_inf, clip) -> dict:
    """Checks sgd_step_'s arguments; returns its coefficient lists by name."""
    states = {"momentum_buffers": momentum_buffers} if momentum_buffers else {}
    coeffs = {"momentum": momentum, "dampening": dampening, "lr": lr, "l2": l2, "l1": l1, "decay": decay,
              "value_l2": value_l2}
    _check_step_args(params, grads, states, None, coeffs, {"grad_scale": grad_scale, "found_inf": found_inf, "clip": clip})
    return coeffs


def _check_step_args(params, grads, states: dict, steps, coeffs: dict, scalars: dict) -> None:
    checks.check_tensors(params, "params")
    checks.check_tensors(grads, "grads")  # before the pairing, so a sparse grad is named as sparse
    checks.check_pairs(params, grads)
    for name, tensors in states.items():
        _check_state(params, tensors, name)
    if params:
        device = params[0].device
        for i, step in enumerate(steps or []):
            _check_scalar(step, f"steps[{i}]", device, host_allowed=True)
        for name, t in scalars.items():
            if t is not None:
                _check_scalar(t, name, device, host_allowed=False)
        # grads are written too (unscaled and clipped), so nothing of the three may share memory.
        written = list(params) + list(grads) + [t for tensors in states.values() for t in tensors]
        checks.check_no_overlap(written, "params, grads and state", [], "")
    if steps is not None and len(steps) != len(params):
        raise RuntimeError(f"l2fast: got {len(params)} params but {len(steps)} steps")
    for name, values in coeffs.items():
        checks.check_coeffs(values, len(params), name)


def _check_state(params, states, name: str) -> None:
    if len(states) != len(params):
        raise RuntimeError(f"l2fast: got {len(params)} params but {len(states)} {name}")
    checks.check_tensors(states, name)
    for i, (w, s) in enumerate(zip(params, states)):
        if s.device != w.device:
            raise RuntimeError(f"l2fast: {name}[{i}] is on {s.device} but params[{i}] is on {w.device}")
        if s.dtype != w.dtype:
            raise RuntimeError(
                f"l2fast: {name}[{i}] has dtype {s.dtype} but params[{i}] has dtype {w.dtype}; "
                "optimizer state is kept in the parameter dtype"
            )
        if s.shape != w.shape:
            raise RuntimeError(f"l2fast: {name}[{i}] has shape {list(s.shape)} but params[{i}] has shape {list(w.shape)}")


def _check_scalar(t: torch.Tensor, name: str, device: torch.device, host_allowed: bool) -> None:
    if t.numel() != 1:
        raise RuntimeError(f"l2fast: {name} must hold one value, got shape {list(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"l2fast: {name} has dtype {t.dtype}; expected float32 or float64")
    if t.device != device and not (host_allowed and t.device.type == "cpu"):
        raise RuntimeError(f"l2fast: {name} is on {t.device} but params are on {device}")
