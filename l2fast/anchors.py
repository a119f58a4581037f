"""The anchors of ``l2fast.Penalized``'s anchored penalty (L2-SP, EWC): the forms they are given in,
resolved to one tensor per parameter and checked, and their place in state dicts.

An anchor is the weight a parameter is pulled toward (``w0``); its importance ``F`` (EWC's diagonal
Fisher) weighs the pull element by element. Both are copies owned here, in the parameter's memory
layout on its device (the ops walk w, the anchor and F in one element order), in the parameter's dtype
or bfloat16 (F in its anchor's dtype). A DTensor parameter's anchor and F are DTensors with its
placements: the ops take the local shards.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from . import sharding

ANCHOR_KEY, FISHER_KEY = "l2fast_anchor", "l2fast_fisher"  # in state_dict()["state"][index]
FISHER_FORMS = "a dict {param: tensor} or {name: tensor} (l2fast.diagonal_fisher's result), or an nn.Module"
ANCHOR_FORMS = "'current', a dict {param: tensor} or {name: tensor} (a state dict), or an nn.Module"


class Anchors:
    """The anchor of each anchored parameter and its importance where one was given, keyed by the
    parameter itself (as an optimizer's ``state`` is)."""

    def __init__(self, anchor: dict | None = None, fisher: dict | None = None):
        self.anchor = {} if anchor is None else anchor
        self.fisher = {} if fisher is None else fisher

    def __bool__(self) -> bool:
        return bool(self.anchor)

    def pulls_any(self, params: list) -> bool:
        return bool(self.anchor) and any(p in self.anchor for p in params)

    def kind(self, p: torch.Tensor) -> str | None:
        """What pulls p: None (nothing), "anchor" (L2-SP) or "fisher" (an anchor weighted by F, EWC).
        Tensors of one kind go into one call: the ops take anchors (and fisher) for all or none."""
        if p not in self.anchor:
            return None
        return "fisher" if p in self.fisher else "anchor"

    def arguments(self, params: list, kind: str | None, dtensor: type | None = None) -> dict:
        """The ops' anchors= / fisher= lists for params of one kind ({} for None); with ``dtensor``,
        DTensors as their local shards."""
        if kind is None:
            return {}
        lists = {"anchors": [sharding.local(self.anchor[p], dtensor) for p in params]}
        if kind == "fisher":
            lists["fisher"] = [sharding.local(self.fisher[p], dtensor) for p in params]
        return lists

    def pack(self, state: dict, params_by_index: dict) -> None:
        """Puts each anchored parameter's anchor and F into ``state["state"][index]`` (a new entry: the
        inner optimizer's entries are its live per-parameter state)."""
        for index, p in params_by_index.items():
            anchor = self.anchor.get(p)
            if anchor is None:
                continue
            entry = {**state["state"].get(index, {}), ANCHOR_KEY: anchor}
            if p in self.fisher:
                entry[FISHER_KEY] = self.fisher[p]
            state["state"][index] = entry


def indexed_params(saved_groups: list[dict], groups: list[dict]) -> dict | None:
    """{state-dict index: parameter}, pairing the saved groups' indices with the groups' parameters as
    torch's load_state_dict pairs them; None where the groups do not pair up (torch then refuses)."""
    sizes = [len(g["params"]) for g in groups]
    if [len(s["params"]) for s in saved_groups] != sizes:
        return None
    return {index: p for s, g in zip(saved_groups, groups) for index, p in zip(s["params"], g["params"])}


def unpack(state_dict: dict, groups: list[dict]) -> tuple[dict, Anchors | None]:
    """Takes the anchors out of a state dict from ``Penalized.state_dict()``: (the state dict without
    them, for the inner optimizer's load, which would cast them to the parameter's dtype; the anchors,
    each in its saved dtype on its parameter's device, checked like given ones), the anchors None when
    it has none. The caller's dict is not changed."""
    saved_state = state_dict.get("state", {})
    carrying = [index for index, entry in saved_state.items() if isinstance(entry, Mapping) and ANCHOR_KEY in entry]
    stray = [index for index, entry in saved_state.items()
             if isinstance(entry, Mapping) and FISHER_KEY in entry and ANCHOR_KEY not in entry]
    if stray:
        raise ValueError(f"l2fast.Penalized.load_state_dict: state[{stray[0]}] has '{FISHER_KEY}' without "
                         f"'{ANCHOR_KEY}'; fisher weighs the pull toward an anchor")
    if not carrying:
        return state_dict, None
    state = dict(saved_state)
    for index in carrying:
        entry = {k: v for k, v in state[index].items() if k not in (ANCHOR_KEY, FISHER_KEY)}
        if entry:
            state[index] = entry
        else:
            del state[index]
    params = indexed_params(state_dict.get("param_groups", []), groups)
    if params is None:
        return {**state_dict, "state": state}, None
    anchor, fisher = {}, {}
    for index in carrying:
        p, saved = params.get(index), saved_state[index]
        if p is None:
            raise ValueError(f"l2fast.Penalized.load_state_dict: state[{index}] carries an anchor, but the "
                             "state dict's param_groups list no parameter with that index")
        anchor[p] = _copy_for(p, saved[ANCHOR_KEY], None, f"the saved anchor of state[{index}]")
        if FISHER_KEY in saved:
            fisher[p] = _copy_for(p, saved[FISHER_KEY], anchor[p].dtype, f"the saved fisher of state[{index}]")
    _check_finite(anchor, {p: f"the saved anchor of state[{i}]" for i, p in params.items()})
    _check_importance(fisher, {p: f"the saved fisher of state[{i}]" for i, p in params.items()})
    return {**state_dict, "state": state}, Anchors(anchor, fisher)


def resolve(groups: list[dict], anchor, fisher, anchor_dtype: torch.dtype | None, l2_sp: list[float]) -> Anchors:
    """Anchors (and importances) from the forms ``Penalized(anchor=, fisher=)`` takes, copied in
    ``anchor_dtype`` (default: each parameter's dtype). ``l2_sp``: each group's coefficient, for the
    check that a name-keyed map covers every parameter of a group that is pulled."""
    if anchor_dtype is not None and not isinstance(anchor_dtype, torch.dtype):
        raise TypeError(f"l2fast.Penalized: anchor_dtype must be a torch.dtype or None, got "
                        f"{type(anchor_dtype).__name__}")
    if anchor is None:
        if fisher is not None:
            raise ValueError("l2fast.Penalized: fisher needs anchor= (fisher is the importance of each weight's pull "
                             "toward its anchor)")
        return Anchors()
    places = _Places(groups)
    if isinstance(anchor, str):
        if anchor != "current":
            raise ValueError(f"l2fast.Penalized: anchor={anchor!r} is not a form; anchor is None, {ANCHOR_FORMS}")
        given = {p: p for p in places.where}  # copied below: a snapshot of the weights now
    else:
        given = places.match(anchor, "anchor", l2_sp)
        for p, value in given.items():
            if isinstance(value, torch.Tensor) and _same_memory(value, p):
                raise ValueError(f"l2fast.Penalized: the anchor of {places.where[p]} is the parameter itself, whose "
                                 "pull would always be zero; pass anchor='current' for a snapshot of the weights now")
    anchors = {p: _copy_for(p, value, anchor_dtype or _kept_dtype(p, value), f"the anchor of {places.where[p]}")
               for p, value in given.items()}
    _check_finite(anchors, {p: f"the anchor of {where}" for p, where in places.where.items()})
    importances = {}
    if fisher is not None:
        if isinstance(fisher, str):
            raise ValueError(f"l2fast.Penalized: fisher={fisher!r} is not a form; fisher is None or {FISHER_FORMS}")
        for p, value in places.match(fisher, "fisher", l2_sp, within=anchors).items():
            importances[p] = _copy_for(p, value, anchors[p].dtype, f"the fisher of {places.where[p]}")
        _check_importance(importances, {p: f"the fisher of {where}" for p, where in places.where.items()})
    return Anchors(anchors, importances)


class _Places:
    """Where each parameter of the groups is, for messages, and its name where the groups give them."""

    def __init__(self, groups: list[dict]):
        self.groups = groups
        self.where, self.by_name = {}, {}
        for i, group in enumerate(groups):
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                name = f" ({names[j]!r})" if names is not None else ""
                self.where[p] = f"param_groups[{i}]['params'][{j}]{name}"
                if names is not None:
                    self.by_name[names[j]] = p

    def match(self, form, what: str, l2_sp: list[float], within: dict | None = None) -> dict:
        """{param: given tensor} from a dict keyed by parameters or names, or a module's parameters.
        Keys that match no parameter (or, ``within``, no anchored one) are refused; so is a name-keyed
        map that leaves out a parameter of a group with l2_sp > 0 (``within``: an anchored one)."""
        if isinstance(form, torch.nn.Module):
            form = dict(form.named_parameters())
        if not isinstance(form, Mapping):
            forms = ANCHOR_FORMS if what == "anchor" else FISHER_FORMS
            raise TypeError(f"l2fast.Penalized: {what} must be None, {forms}; got {type(form).__name__}")
        keys = list(form)
        if not keys:
            return {}
        if all(isinstance(k, str) for k in keys):
            return self._by_name(form, what, l2_sp, within)
        if not all(isinstance(k, torch.Tensor) for k in keys):
            raise TypeError(f"l2fast.Penalized: the keys of {what} must all be parameters or all be names (str)")
        stray = [k for k in keys if k not in self.where]
        if stray:
            raise ValueError(f"l2fast.Penalized: {what} has {len(stray)} key(s) that are not parameters of this "
                             f"optimizer (the first has shape {list(stray[0].shape)})")
        self._check_within(keys, what, within)
        return dict(form)

    def _by_name(self, form: Mapping, what: str, l2_sp: list[float], within: dict | None) -> dict:
        unnamed = [i for i, group in enumerate(self.groups) if "param_names" not in group]
        if unnamed:
            raise ValueError(
                f"l2fast.Penalized: {what} is keyed by name, but param_groups[{unnamed[0]}] has no 'param_names' to "
                "match them with; build the inner optimizer from model.named_parameters() (or "
                "l2fast.param_groups(model, with_names=True)), or key it by parameter"
            )
        unmatched = [name for name in form if name not in self.by_name]
        if unmatched:
            raise ValueError(
                f"l2fast.Penalized: {what} has entries {_listed(unmatched)} that match no parameter of this optimizer "
                "(by the groups' 'param_names'); pass only the entries of the parameters it trains"
            )
        for i, group in enumerate(self.groups):
            pulled = [n for n, p in zip(group["param_names"], group["params"]) if within is None or p in within]
            missing = [n for n in pulled if n not in form]
            if l2_sp[i] != 0.0 and missing:
                raise ValueError(
                    f"l2fast.Penalized: param_groups[{i}] has l2_sp={l2_sp[i]}, but {what} has no entry for "
                    f"{_listed(missing)}; give each of its parameters one, or move those to a group with 'l2_sp': 0.0"
                )
        given = {self.by_name[name]: value for name, value in form.items()}
        self._check_within(given, what, within)
        return given

    def _check_within(self, params, what: str, within: dict | None) -> None:
        if within is None:
            return
        bare = [p for p in params if p not in within]
        if bare:
            raise ValueError(f"l2fast.Penalized: {what} has an entry for {self.where[bare[0]]}, which has no anchor; "
                             f"{what} weighs the pull toward an anchor")


def _listed(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > 5 else ""
    return f"[{', '.join(map(repr, names[:5]))}{more}]"


def _same_memory(value: torch.Tensor, p: torch.Tensor) -> bool:
    dtensor = sharding.dtensor_type()
    return torch._C._overlaps(sharding.local(value, dtensor), sharding.local(p, dtensor))


def _copy_for(p: torch.Tensor, value, dtype: torch.dtype | None, what: str) -> torch.Tensor:
    """value copied in p's memory layout on p's device, in dtype (None: value's own): checked to be a
    floating-point tensor of p's shape, stored in p's dtype or bfloat16. For a DTensor p: a DTensor
    with p's placements, or the whole tensor (held by every process: each keeps its own shard of it)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"l2fast.Penalized: {what} is a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise TypeError(f"l2fast.Penalized: {what} has dtype {value.dtype}; anchors and fisher are floating-point")
    if value.shape != p.shape:
        raise ValueError(f"l2fast.Penalized: {what} has shape {list(value.shape)} but the parameter has shape "
                         f"{list(p.shape)}")
    dtype = value.dtype if dtype is None else dtype
    if dtype not in (p.dtype, torch.bfloat16):
        raise ValueError(f"l2fast.Penalized: {what} would be stored as {dtype}, but the parameter is {p.dtype}; an "
                         "anchor is stored in its parameter's dtype or in bfloat16 (anchor_dtype)")
    dtensor = sharding.dtensor_type()
    value = value.detach()
    if dtensor is not None and isinstance(p, dtensor) and not isinstance(value, dtensor):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)  # no communication
    if _placed(value, dtensor) != _placed(p, dtensor):
        raise ValueError(
            f"l2fast.Penalized: {what} is {_placed(value, dtensor)} but the parameter is {_placed(p, dtensor)}; "
            "give a DTensor parameter a DTensor with its placements or the whole tensor, and a plain one a plain tensor"
        )
    with torch.no_grad():
        return torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format).copy_(value)


def _kept_dtype(p: torch.Tensor, value) -> torch.dtype:
    """The dtype an anchor is stored in without anchor_dtype: bfloat16 where it is given in bfloat16 (it
    was made small on purpose), else the parameter's."""
    return torch.bfloat16 if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16 else p.dtype


def _placed(t: torch.Tensor, dtensor: type | None) -> str:
    if dtensor is not None and isinstance(t, dtensor):
        return f"a DTensor with placements {tuple(t.placements)} on {t.device_mesh}"
    return "a plain tensor"


def _check_finite(anchors: dict, where: dict) -> None:
    """Refuses an anchor with a NaN or infinite value (it would make the weights NaN at the first step):
    one reduction per tensor (its local shard)."""
    dtensor = sharding.dtensor_type()
    for p, a in anchors.items():
        a = sharding.local(a, dtensor)
        if a.numel() and a.device.type != "meta" and not bool(torch.isfinite(a).all()):
            raise ValueError(f"l2fast.Penalized: {where[p]} has NaN or infinite values; an anchor must be finite")


def _check_importance(fisher: dict, where: dict) -> None:
    """Refuses negative or non-finite importances: one min/max reduction per tensor (its local shard)."""
    dtensor = sharding.dtensor_type()
    for p, f in fisher.items():
        f = sharding.local(f, dtensor)
        if f.numel() == 0 or f.device.type == "meta":
            continue
        low, high = (float(x) for x in torch.aminmax(f))
        if not (low >= 0.0 and math.isfinite(high)):  # NaN fails both
            raise ValueError(f"l2fast.Penalized: {where[p]} has values in [{low}, {high}]; importances must be "
                             "finite and >= 0")
