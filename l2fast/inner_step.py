"""How ``Penalized.step`` runs the wrapped optimizer's step so that its hooks fire as torch fires them.

torch's ``Optimizer.step`` is wrapped once per class (``Optimizer.profile_hook_step``): the global
pre-hooks and the optimizer's own pre-hooks, the step, its own post-hooks and the global post-hooks.
``Penalized`` is an Optimizer too, so its ``step`` already runs the global hooks and its own. The
wrapped optimizer's own hooks must fire once per step as well, on the one-pass path (where its step
function never runs) and on the two-pass path (where calling ``inner.step()`` would fire the global
hooks a second time). So both paths run their body through :func:`run_with_hooks`, and the two-pass
body is the inner class's step without torch's hook wrapper (:func:`unhooked_step`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def run_with_hooks(optimizer: torch.optim.Optimizer, closure, body: Callable):
    """``body(closure)`` run as ``optimizer.step(closure)`` would run: the optimizer's own pre-hooks (a
    hook may return new ``(args, kwargs)``, as torch allows), the body, its own post-hooks; then the
    mark an LR scheduler built on the optimizer looks for. The global hooks are the caller's."""
    args, kwargs = ((optimizer,) if closure is None else (optimizer, closure)), {}
    for hook in list(optimizer._optimizer_step_pre_hooks.values()):
        result = hook(optimizer, args, kwargs)
        if result is None:
            continue
        if not (isinstance(result, tuple) and len(result) == 2):
            raise RuntimeError(f"{hook} must return None or a tuple of (new_args, new_kwargs), but got {result}")
        args, kwargs = result
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    out = body(closure)
    for hook in list(optimizer._optimizer_step_post_hooks.values()):
        hook(optimizer, args, kwargs)
    # What torch's LR schedulers set in the step wrapper they install, to tell a scheduler stepped
    # before its optimizer from one stepped after.
    optimizer._opt_called = True
    return out


def unhooked_step(optimizer: torch.optim.Optimizer) -> Callable:
    """The optimizer's step as its class defines it, without torch's hook wrapper (and without an LR
    scheduler's instance wrapper: run_with_hooks does what both do)."""
    step = type(optimizer).step
    if getattr(step, "hooked", False):  # set by Optimizer._patch_step_function on the wrapper
        step = step.__wrapped__
    return step.__get__(optimizer)
