"""The argument checks of the native ops (csrc/common/checks.cpp), of the fake kernels and of the
reference (both l2fast/checks.py) on the same bad inputs: the same error, word for word."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from l2fast import reference

ops = torch.ops.l2fast


def bad_calls():
    w = torch.randn(6)
    x = torch.randn(3, 2)
    g = torch.randn(6)
    half = torch.randn(6, dtype=torch.float16)
    one = torch.ones(())
    # Long lists (sorted by radix in the native check) of views in shuffled memory order.
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(0)).tolist()
    base = torch.randn(3 * 5000 + 1)
    views = [base[3 * k : 3 * k + 3] for k in order]
    shifted = list(views)
    shifted[4321] = base[3 * order[4321] + 1 : 3 * order[4321] + 4]  # reaches into its right neighbour
    other = torch.randn(3 * 5000)
    grads = [other[3 * k : 3 * k + 3] for k in order]
    grads_reading = list(grads)
    grads_reading[17] = base[3 * order[2500] : 3 * order[2500] + 3]  # grads[17] is params[2500]
    return {
        "no-such-dtype": ("sq_norm", ([w, torch.arange(3)], [1.0], False)),
        "complex": ("l1_norm", ([torch.randn(2, dtype=torch.complex64)], [1.0], True)),
        "not-dense": ("penalty", ([w, x[:, :1]], [1.0], [0.0])),
        "sparse": ("sq_norm", ([w, x.to_sparse()], [1.0], False)),
        "coeff-count": ("sq_norm", ([w, x], [1.0, 2.0, 3.0], False)),
        "coeff-negative": ("penalty", ([w, x], [1.0], [0.0, -2.0])),
        "coeff-nan": ("l1_norm", ([w], [float("nan")], False)),
        "coeff-inf": ("penalty_grad", ([w], one, [float("inf")], [0.0])),
        "factor-negative": ("decay_", ([w, x], [0.1, -0.5], [0.0])),
        "scale-shape": ("penalty_grad", ([w], torch.ones(2), [1.0], [0.0])),
        "pair-count": ("add_penalty_grad_", ([w, x], [g], [1.0], [0.0])),
        "pair-dtype": ("add_penalty_grad_", ([w], [half], [1.0], [0.0])),
        "pair-shape": ("add_penalty_grad_", ([w], [g[:5]], [1.0], [0.0])),
        "pair-strides": ("add_penalty_grad_", ([x.t().contiguous().t()], [torch.randn(3, 2)], [1.0], [0.0])),
        "sparse-grad": ("add_penalty_grad_", ([w], [g.to_sparse()], [1.0], [0.0])),
        "grads-not-dense": ("add_penalty_grad_", ([w[:3]], [g[::2]], [1.0], [0.0])),
        "listed-twice": ("decay_", ([w, x, w], [0.1], [0.0])),
        "overlap": ("decay_", ([w[:4], w[3:]], [0.1], [0.0])),
        "grads-overlap": ("add_penalty_grad_", ([w[:3], w[3:]], [g[:3], g[2:5]], [1.0], [0.0])),
        "grads-read": ("add_penalty_grad_", ([w[:3], w[3:]], [g[:3], w[1:4]], [1.0], [0.0])),
        "empty-coeff-count": ("penalty", ([], [1.0, 2.0], [0.0])),
        "long-shuffled-overlap": ("decay_", (shifted, [0.1], [0.0])),
        "long-shuffled-grads-read": ("add_penalty_grad_", (views, grads_reading, [1.0], [0.0])),
    }


def message(call):
    with pytest.raises(RuntimeError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize("case", list(bad_calls()))
def test_native_fake_and_reference_checks_agree(case):
    name, args = bad_calls()[case]
    native = message(lambda: getattr(ops, name)(*args))
    assert native.startswith("l2fast: ")
    assert message(lambda: getattr(reference, name)(*args)) == native
    if not case.startswith("sparse"):  # fake tensors cannot be sparse
        with FakeTensorMode() as mode:
            fake = torch.utils._pytree.tree_map_only(torch.Tensor, mode.from_tensor, args)
            assert message(lambda: getattr(ops, name)(*fake)) == native


def test_a_sparse_grad_is_named_as_sparse():
    # The grads are checked on their own before they are paired with the params: a sparse grad's
    # strides would otherwise be reported as a layout mismatch.
    w, g = torch.randn(6), torch.randn(6).to_sparse()
    assert message(lambda: ops.add_penalty_grad_([w], [g], [1.0], [0.0])).startswith(
        "l2fast: grads[0] has layout torch.sparse_coo")


def test_long_shuffled_lists_without_overlap_pass():
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(1)).tolist()
    params, grads = torch.randn(3 * 5000), torch.randn(3 * 5000)
    want = grads.clone()
    value = ops.add_penalty_grad_([params[3 * k : 3 * k + 3] for k in order], [grads[3 * k : 3 * k + 3] for k in order],
                                  [0.5], [0.0])
    torch.testing.assert_close(grads, want + 0.5 * params)
    torch.testing.assert_close(value.double(), 0.25 * params.double().pow(2).sum(), rtol=1e-6, atol=0)
