"""l2fast: fused multi-tensor weight penalties for PyTorch."""
__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

from ._ops import backend_reason
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
from .fisher import diagonal_fisher
from .groups import param_groups
from .optim import Penalized

__all__ = [
    "Penalized",
    "add_penalty_grad_",
    "backend",
    "backend_reason",
    "clip_grad_norm_",
    "decay_",
    "diagonal_fisher",
    "l1_norm",
    "param_groups",
    "penalty",
    "schedules",
    "sq_norm",
]
