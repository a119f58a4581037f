"""l2fast: fused multi-tensor weight penalties for PyTorch."""
from .functional import (
    add_penalty_grad_,
    backend,
    clip_grad_norm_,
    decay_,
    l1_norm,
    penalty,
    sq_norm,
)
from . import schedules
from .groups import param_groups
from .optim import Penalized

__all__ = [
    "Penalized",
    "add_penalty_grad_",
    "backend",
    "clip_grad_norm_",
    "decay_",
    "l1_norm",
    "param_groups",
    "penalty",
    "schedules",
    "sq_norm",
]
__version__ = "0.1.0"
