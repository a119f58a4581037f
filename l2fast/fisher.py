"""The diagonal empirical Fisher information of a model on a task: the importance weights of EWC.

``F_i = mean over samples of (d loss / d w_i) ** 2``, with each sample one batch (``per_example=False``:
the gradient of the batch's mean loss, one backward per batch) or one example (``per_example=True``:
the gradient of each example's own loss, through ``torch.func``; the standard EWC estimate). The two
differ: a batch's mean gradient averages the examples' gradients before squaring, so it is smaller
by about the batch size where examples disagree; per-example is what EWC's derivation asks for,
per-batch is cheaper and is the same up to a scale, which the penalty's strength absorbs.

Cost: one forward and backward per batch (per-example: the same flops, with memory for a batch of
gradients at once), and one float32 copy of the parameters for the running sum. Streaming: nothing
but the running sum outlives a batch. Gradients are taken with ``torch.autograd.grad``, so the
model's ``.grad`` fields are left as they were.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist


def diagonal_fisher(
    model: torch.nn.Module,
    batches: Iterable[Any],
    loss: Callable[[torch.nn.Module, Any], torch.Tensor],
    *,
    per_example: bool = False,
    dtype: torch.dtype = torch.float32,
    group: dist.ProcessGroup | None = None,
) -> dict[str, torch.Tensor]:
    """``{name: F}`` for each trainable parameter of ``model`` (names as ``named_parameters()``).

    ``loss(model, batch)`` returns the mean loss of ``batch``. With ``per_example``, ``batch`` is a
    tensor or a (nested) tuple/list/dict of tensors whose first dimension is the example: each
    example is passed to ``loss`` as a batch of one. The model is used in the mode it is in (call
    ``model.eval()`` first for an estimate without dropout). ``dtype`` is the stored result's
    (``torch.bfloat16`` halves it); the sum is kept in float32. With ``group``, each process
    estimates on its own batches and the result is the mean over all of them.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("l2fast.diagonal_fisher: the model has no trainable parameters")
    params = [p for _, p in named]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    count = torch.zeros((), dtype=torch.float64, device=params[0].device)
    square_sums = _per_example_square_sums if per_example else _batch_square_sums
    for batch in batches:
        count += square_sums(model, named, batch, loss, sums)
    if group is not None:
        for value in [count, *sums]:
            dist.all_reduce(value, group=group)
    if count.item() == 0:
        raise ValueError("l2fast.diagonal_fisher: no batches (the Fisher is a mean over at least one sample)")
    return {name: (total / count).to(dtype) for (name, _), total in zip(named, sums)}


def _batch_square_sums(model, named, batch, loss, sums) -> int:
    value = loss(model, batch)
    grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
    for total, grad in zip(sums, grads):
        if grad is not None:  # a parameter this loss does not use has no information
            total.add_(grad.float().square())
    return 1


def _per_example_square_sums(model, named, batch, loss, sums) -> int:
    examples = _leading_size(batch)
    params = {name: p.detach() for name, p in named}

    def example_loss(weights, example):
        one = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0), example)
        return torch.func.functional_call(_LossOf(model, loss), {"model." + k: v for k, v in weights.items()}, (one,))

    grads = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0))(params, batch)
    torch._foreach_add_(sums, [grads[name].float().square().sum(0) for name, _ in named])
    return examples


class _LossOf(torch.nn.Module):
    """``loss(model, batch)`` as a module, so that torch.func can call it with substituted weights."""

    def __init__(self, model, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch):
        return self.loss(self.model, batch)


def _leading_size(batch) -> int:
    sizes = {t.shape[0] if t.dim() else None for t in torch.utils._pytree.tree_leaves(batch)
             if isinstance(t, torch.Tensor)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("l2fast.diagonal_fisher(per_example=True): every tensor of a batch needs the same "
                         f"first (example) dimension; got sizes {sorted(map(str, sizes))}")
    return sizes.pop()
