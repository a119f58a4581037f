"""Which parameters get a penalty: the usual split of a model into a decayed and an undecayed group."""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from numbers import Real

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


# The Hugging Face Trainer's split (its get_decay_parameter_names), to compare runs with the stock AdamW
# setup: exempt what belongs to an nn.LayerNorm, and what has "bias", "layernorm" or "rmsnorm" anywhere
# in its lowercased qualified name, or a path component "norm" or "..._norm" (so T5's
# relative_attention_bias and the norms of gated RMSNorm blocks are exempt, unlike "bias" + "norm").
_HF_TRAINER_EXEMPT = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:\.|$)|_norm(?:\.|$)")


def _hf_trainer(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or bool(_HF_TRAINER_EXEMPT.search(name.lower()))


NO_DECAY_RULES: dict[str, Rule] = {"bias": _is_bias, "norm": _is_norm, "embedding": _is_embedding,
                                   "hf-trainer": _hf_trainer}


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


def _coefficient(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"l2fast.param_groups: {name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"l2fast.param_groups: {name} = {value} is invalid; coefficients must be finite and >= 0")
    return float(value)


def param_groups(
    model: nn.Module,
    l2: float | None = None,
    no_decay: str | Rule | Iterable[str | Rule] = ("bias", "norm"),
    l1: float | None = None,
    key: str = "l2",
    with_names: bool = False,
) -> list[dict]:
    """Splits ``model``'s trainable parameters into two groups that any torch optimizer accepts:
    ``[penalised, exempt]``, e.g. ``[{"params": [...], "l2": l2}, {"params": [...], "l2": 0.0, "l1": 0.0}]``.

    Explicit beats implicit: the penalised group carries a coefficient key only for a coefficient you
    pass (``l2=`` and/or ``l1=``). A group key overrides ``l2fast.Penalized``'s arguments for that group,
    so a key you did not ask for can never silently defeat them: ``Penalized(Adam(param_groups(model)),
    l2=1e-2, l1=1e-3)`` penalises the first group with both and exempts the second. The exempt group
    always carries 0.0 for both (exempting is its purpose).

    A parameter is exempt when any ``no_decay`` rule holds for it: ``"bias"`` (named ``bias``,
    ``*_bias`` or ``bias_*``), ``"norm"`` (owned by a normalisation layer: torch's BatchNorm, LayerNorm,
    GroupNorm, RMSNorm, InstanceNorm, or any module class named ``...Norm``), ``"embedding"`` (owned by
    an ``nn.Embedding`` / ``nn.EmbeddingBag``), ``"hf-trainer"`` (the Hugging Face Trainer's own split,
    by name patterns: ``no_decay="hf-trainer"`` alone gives its groups), or your own function
    ``(qualified_name, param, module) -> bool``. A parameter shared by several modules (tied embeddings) is exempt when a rule holds for
    any owner. Frozen parameters (``requires_grad=False``) are left out. Both groups are always
    returned, penalised first, parameters in ``model.named_parameters()`` order.

    ``key="weight_decay"`` writes the L2 coefficient under torch's own key instead (``weight_decay=l2``
    when given, and ``weight_decay=0.0`` in the exempt group), for a plain torch optimizer without
    ``l2fast.Penalized`` (L1 needs Penalized). ``with_names=True`` adds each group's ``"param_names"``
    (torch's key for named parameters, kept in the optimizer's state_dict): which parameter went where.
    """
    rules = _rules(no_decay)
    given = {name: _coefficient(value, name) for name, value in (("l2", l2), ("l1", l1)) if value is not None}
    if key not in ("l2", "weight_decay"):
        raise ValueError(f"l2fast.param_groups: key must be 'l2' or 'weight_decay', got {key!r}")
    if key == "weight_decay" and given.get("l1", 0.0) != 0.0:
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

    if key == "weight_decay":
        coefficients = ({"weight_decay": given["l2"]} if "l2" in given else {}, {"weight_decay": 0.0})
    else:
        coefficients = (given, {"l2": 0.0, "l1": 0.0})
    groups = []
    for (names, params), keys in zip((decayed, exempt), coefficients):
        group = {"params": params, **keys}
        if with_names:
            group["param_names"] = names
        groups.append(group)
    return groups
