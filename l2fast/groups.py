"""Which parameters get a penalty: the usual split of a model into a decayed and an undecayed group."""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

from torch import nn

Rule = Callable[[str, nn.Parameter, nn.Module], bool]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)
# Normalisation layers from other libraries (T5LayerNorm, LlamaRMSNorm, FusedLayerNorm, ...) by class name.
_NORM_NAME = re.compile(r"Norm(\d+d)?$")


def _is_bias(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    local = name.rsplit(".", 1)[-1]
    return local == "bias" or local.endswith("_bias") or local.startswith("bias_")  # in_proj_bias, bias_k


def _is_norm(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def _is_embedding(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    return isinstance(module, (nn.Embedding, nn.EmbeddingBag))


NO_DECAY_RULES: dict[str, Rule] = {"bias": _is_bias, "norm": _is_norm, "embedding": _is_embedding}


def _rules(no_decay: str | Rule | Iterable[str | Rule]) -> list[Rule]:
    if isinstance(no_decay, str) or callable(no_decay):
        no_decay = [no_decay]
    rules = []
    for rule in no_decay:
        if callable(rule):
            rules.append(rule)
        elif rule in NO_DECAY_RULES:
            rules.append(NO_DECAY_RULES[rule])
        else:
            raise ValueError(
                f"l2fast.param_groups: unknown no_decay rule {rule!r}; use {sorted(NO_DECAY_RULES)} "
                "or a function (name, param, module) -> bool"
            )
    return rules


def param_groups(
    model: nn.Module,
    l2: float = 0.0,
    no_decay: str | Rule | Iterable[str | Rule] = ("bias", "norm"),
    l1: float = 0.0,
    key: str = "l2",
    with_names: bool = False,
) -> list[dict]:
    """Splits ``model``'s trainable parameters into two groups that any torch optimizer accepts:

    ``[{"params": penalised, "l2": l2, "l1": l1}, {"params": exempt, "l2": 0.0, "l1": 0.0}]``

    A parameter is exempt when any ``no_decay`` rule holds for it: ``"bias"`` (named ``bias``,
    ``*_bias`` or ``bias_*``), ``"norm"`` (owned by a normalisation layer: torch's BatchNorm, LayerNorm,
    GroupNorm, RMSNorm, InstanceNorm, or any module class named ``...Norm``), ``"embedding"`` (owned by
    an ``nn.Embedding`` / ``nn.EmbeddingBag``), or your own function ``(qualified_name, param, module)
    -> bool``. A parameter shared by several modules (tied embeddings) is exempt when a rule holds for
    any owner. Frozen parameters (``requires_grad=False``) are left out. Both groups are always
    returned, penalised first, parameters in ``model.named_parameters()`` order.

    ``key="weight_decay"`` writes the coefficient under torch's own key instead, for a plain torch
    optimizer without ``l2fast.Penalized`` (L1 needs Penalized). ``with_names=True`` adds each group's
    ``"param_names"`` (torch's key for named parameters, kept in the optimizer's state_dict): which
    parameter went where.
    """
    rules = _rules(no_decay)
    for name, value in (("l2", l2), ("l1", l1)):
        if not math.isfinite(value) or value < 0.0:
            raise ValueError(f"l2fast.param_groups: {name} = {value} is invalid; coefficients must be finite and >= 0")
    if key not in ("l2", "weight_decay"):
        raise ValueError(f"l2fast.param_groups: key must be 'l2' or 'weight_decay', got {key!r}")
    if key == "weight_decay" and l1 != 0.0:
        raise ValueError("l2fast.param_groups: l1 needs l2fast.Penalized; torch optimizers have no L1 weight_decay")

    owners: dict[nn.Parameter, list[tuple[str, nn.Module]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, param in module.named_parameters(recurse=False):
            owners.setdefault(param, []).append((f"{module_name}.{local}" if module_name else local, module))

    decayed, exempt = ([], []), ([], [])  # (names, params) each
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_exempt = any(rule(owner_name, param, module) for owner_name, module in owners[param] for rule in rules)
        names, params = exempt if is_exempt else decayed
        names.append(name)
        params.append(param)

    coefficients = {"l2": [l2, 0.0], "l1": [l1, 0.0]} if key == "l2" else {"weight_decay": [l2, 0.0]}
    groups = []
    for i, (names, params) in enumerate((decayed, exempt)):
        group = {"params": params, **{k: float(v[i]) for k, v in coefficients.items()}}
        if with_names:
            group["param_names"] = names
        groups.append(group)
    return groups
