"""Global values over sharded tensors: which process groups a tensor's shards add up over, and the
one mechanism that computes on local shards and sums over those groups.

A DTensor (FSDP2's ``fully_shard``, any mesh) adds up over the mesh dimensions it is sharded on
(``Shard`` placements); it is replicated over the others. A plain tensor is a shard only when the
caller says so with ``group=`` (FSDP1 flat parameters, ZeRO partitions). Every process makes the
same collectives in the same order, whatever it holds: the order follows the tensor list, which
every process passes alike, and a process whose shards are empty contributes zeros.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.distributed as dist


def dtensor_type() -> type | None:
    # Only present once torch.distributed.tensor is imported, which any DTensor implies.
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def dtensor_in(tensors: list) -> type | None:
    """The DTensor type if any of tensors is one, else None (the plain-tensor fast paths)."""
    dtensor = dtensor_type()
    # Over the distinct types only: one type() per tensor is what a list of 10,000 parameters can afford.
    return dtensor if dtensor is not None and any(issubclass(kind, dtensor) for kind in set(map(type, tensors))) else None


def reduce_groups(t: torch.Tensor, group, dtensor: type | None) -> tuple:
    """The process groups t's value adds up over."""
    if dtensor is not None and isinstance(t, dtensor):
        mesh = t.device_mesh
        for placement in t.placements:
            if placement.is_partial():
                raise ValueError(
                    f"l2fast: a DTensor with placements {tuple(t.placements)} holds partial values, whose norm is not "
                    "the sum of local norms; redistribute it to Shard or Replicate first"
                )
        return tuple(mesh.get_group(dim) for dim, placement in enumerate(t.placements) if placement.is_shard())
    return () if group is None else (group,)


def local(t: torch.Tensor, dtensor: type | None) -> torch.Tensor:
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def all_reduce_sum(value: torch.Tensor, groups: tuple) -> torch.Tensor:
    for group in groups:
        dist.all_reduce(value, group=group)
    return value


def is_sharded(tensors: list, group) -> bool:
    """Whether any value over tensors needs a collective (the fast path skips this module otherwise)."""
    if group is not None:
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"l2fast: group must be a torch.distributed process group (dist.group.WORLD, "
                            f"dist.new_group(...)), got {type(group).__name__}")
        return True
    return dtensor_in(tensors) is not None


def global_value(tensors: list, group, compute: Callable[[list[int], list[torch.Tensor]], torch.Tensor],
                 per_tensor: bool = False) -> torch.Tensor:
    """compute(indices, local_tensors) on the local shards of each run of tensors that add up over the
    same process groups, summed over those groups; the runs' values added (or, per_tensor, each
    tensor's value put in its place). The result is a plain tensor, the same on every process. A
    differentiable value (``penalty``) keeps the gradient of the local shards: the global value's
    gradient with respect to the weights this process owns."""
    dtensor = dtensor_type()
    runs: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        runs.setdefault(reduce_groups(t, group, dtensor), []).append(i)
    if not runs:  # nothing here, but the other processes of `group` sum with this one
        runs[() if group is None else (group,)] = []
    result = None
    for groups, indices in runs.items():
        value = compute(indices, [local(tensors[i], dtensor) for i in indices])
        if value.requires_grad:  # the global value forward; the gradient reaches the local shards only
            value = value + (all_reduce_sum(value.detach().clone(), groups) - value).detach()
        else:
            value = all_reduce_sum(value, groups)
        if per_tensor:
            if result is None:
                result = value.new_zeros(len(tensors))
            result[indices] = value
        else:
            result = value if result is None else result + value.to(result.device)
    return result
