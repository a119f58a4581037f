"""Penalized inside the training loops people already use.

``l2fast.integrations.hf`` (a Hugging Face ``TrainerCallback``) and ``l2fast.integrations.lightning``
(a Lightning ``Callback``) import their framework when they are imported themselves; this module
imports none, so ``l2fast`` has no framework dependency. With accelerate, log ``metrics(optimizer)``
beside the loss.
"""
from __future__ import annotations

import torch

from ..optim import Penalized

# Attributes under which the frameworks keep the optimizer they wrap: accelerate's AcceleratedOptimizer
# and Lightning's LightningOptimizer.
_WRAPPED = ("optimizer", "_optimizer")


def find_penalized(optimizer) -> Penalized | None:
    """The Penalized inside a framework's optimizer wrappers (or ``optimizer`` itself), else None."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if isinstance(optimizer, Penalized):
            return optimizer
        seen.add(id(optimizer))
        optimizer = next((getattr(optimizer, name) for name in _WRAPPED if hasattr(optimizer, name)), None)
    return None


def metrics(optimizer) -> dict[str, torch.Tensor]:
    """``penalty`` (the last step's penalty value) and, where Penalized clips, ``grad_norm`` (the norm
    before clipping), as device tensors: reading them costs no host sync until they are converted.
    Empty before the first step or when ``optimizer`` holds no Penalized."""
    penalized = find_penalized(optimizer)
    if penalized is None:
        return {}
    found = {"penalty": penalized.last_penalty, "grad_norm": penalized.last_grad_norm}
    return {name: value.detach() for name, value in found.items() if value is not None}
