"""The argument checks of the native ops (csrc/entry/checks.cpp, optim_step.cpp), run by the CPU
kernels, by the fake kernels of torch.compile (which are the meta kernels too) and, in Python, by the
reference, on the same bad inputs: the same error, word for word."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from l2fast import reference
from conftest import native_without_anchors

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
    return {**penalty_calls(w, x, g, half, one, views, shifted, grads, grads_reading), **step_calls(),
            **anchored_calls()}


def penalty_calls(w, x, g, half, one, views, shifted, grads, grads_reading):
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


def adam(params, grads=None, states=None, steps=None, beta1=(0.9,), lr=(1e-2,), value_l2=(0.0,), scalars=(None,) * 3):
    """adam_step_'s arguments: two states (no amsgrad) of zeros unless given, and step counters."""
    grads = [torch.randn_like(p) for p in params] if grads is None else grads
    states = [[torch.zeros_like(p) for p in params] for _ in range(2)] + [[]] if states is None else states
    steps = [torch.tensor(0.0) for _ in params] if steps is None else steps
    return ("adam_step_", (params, grads, *states, steps, list(lr), list(beta1), [0.99], [1e-8], [0.0], [0.0], [0.0],
                           list(value_l2), False, *scalars))


def sgd(params, grads=None, buffers=None, fresh=(0,), momentum=(0.9,), scalars=(None,) * 3):
    grads = [torch.randn_like(p) for p in params] if grads is None else grads
    buffers = [torch.zeros_like(p) for p in params] if buffers is None else buffers
    return ("sgd_step_", (params, grads, buffers, [1e-2], list(momentum), [0.0], list(fresh), [0.0], [0.0], [0.0],
                          [0.0], False, False, *scalars))


def step_calls():
    w, v = torch.randn(6), torch.randn(2, 3)
    ps = [w, v]
    zeros = [torch.zeros_like(p) for p in ps]
    step = torch.tensor(0.0)
    return {
        "step-grads-count": adam(ps, grads=[torch.randn(6)]),
        "step-sparse-grad": adam(ps, grads=[w.clone().to_sparse(), v.clone()]),
        "step-state-count": adam(ps, states=[zeros, zeros[:1], []]),
        "step-state-dtype": adam(ps, states=[zeros, [zeros[0], zeros[1].double()], []]),
        "step-state-shape": adam(ps, states=[zeros, [zeros[0], torch.zeros(3, 2)], []]),
        "step-state-strides": adam([v.t().contiguous().t()], states=[[torch.zeros(2, 3)], [torch.zeros(2, 3)], []]),
        "step-state-not-dense": sgd(ps, buffers=[torch.zeros(12)[::2], zeros[1]]),
        "step-steps-shape": adam(ps, steps=[step, torch.zeros(2)]),
        "step-steps-dtype": adam(ps, steps=[step, torch.tensor(0, dtype=torch.int64)]),
        "step-steps-device": adam(ps, steps=[step, torch.tensor(0.0, device="meta")]),
        "step-steps-count": adam(ps, steps=[step]),
        "step-steps-listed-twice": adam(ps, steps=[step, step]),
        "step-steps-in-a-state": adam(ps, states=[[torch.zeros(6), torch.zeros(2, 3)], zeros, []],
                                       steps=[step, zeros[1].view(-1)[2]]),
        "step-grad-scale-shape": adam(ps, scalars=(torch.ones(2), None, None)),
        "step-found-inf-dtype": sgd(ps, scalars=(None, torch.tensor(0, dtype=torch.int32), None)),
        "step-clip-device": sgd(ps, scalars=(None, None, torch.tensor(1.0, device="meta"))),
        "step-state-is-a-param": sgd(ps, buffers=[zeros[0], v]),
        "step-grad-is-a-state": adam(ps, grads=[torch.randn(6), zeros[1]], states=[zeros, [torch.zeros(6), v.clone()], []]),
        "step-params-overlap": sgd([w[:4], w[3:]]),
        "step-beta-negative": adam(ps, beta1=(0.9, -0.1)),
        "step-lr-count": adam(ps, lr=(1.0, 2.0, 3.0)),
        "step-value-l2-nan": adam(ps, value_l2=(float("nan"),)),
        "step-momentum-inf": sgd(ps, momentum=(float("inf"),)),
        "step-fresh-count": sgd(ps, fresh=(1, 0, 1)),
    }


def anchored_calls():
    """The anchored penalty's arguments (L2-SP, EWC): anchors and fisher lists, l2_sp / sp_factors. Some
    calls hold two faults, to pin which is reported first: each coefficient list is checked whole (valid,
    then zero without anchors) before the next; anchors[i] and fisher[i] share no memory with params[i],
    tensor by tensor; a step checks its anchors with its tensors, before its coefficients."""
    w, x = torch.randn(6), torch.randn(2, 3)
    ps, anchors, fisher = [w, x], [torch.randn(6), torch.randn(2, 3)], [torch.rand(6), torch.rand(2, 3)]
    bf16 = [a.bfloat16() for a in anchors]
    grads = [torch.randn(6), torch.randn(2, 3)]
    base = torch.randn(9)

    def penalty(anchors=anchors, fisher=None, l2_sp=(0.5,), params=ps):
        return "penalty", (params, [0.1], [0.0], anchors, fisher, list(l2_sp))

    name, adam_args = adam(ps)
    _, bad_beta = adam(ps, beta1=(-0.1,))
    return {
        "anchored-fisher-without-anchors": penalty(anchors=None, fisher=fisher),
        "anchored-anchors-not-dense": penalty(anchors=[torch.randn(12)[::2], anchors[1]]),
        "anchored-anchors-count": penalty(anchors=anchors[:1]),
        "anchored-anchors-device": penalty(anchors=[a.to("meta") for a in anchors]),
        "anchored-anchors-dtype": penalty(anchors=[anchors[0], anchors[1].half()]),
        "anchored-anchors-shape": penalty(anchors=[anchors[0], torch.randn(3, 2)]),
        "anchored-anchors-strides": penalty(anchors=[anchors[0], torch.randn(3, 2).t()]),
        "anchored-fisher-count": penalty(fisher=fisher[:1]),
        "anchored-fisher-dtype": penalty(anchors=bf16, fisher=fisher),
        "anchored-fisher-shape": penalty(anchors=bf16, fisher=[torch.rand(2, 3).bfloat16(), fisher[1].bfloat16()]),
        "anchored-l2-sp-negative": ("penalty_grad", (ps, torch.ones(()), [0.1], [0.0], anchors, None, [0.5, -1.0])),
        "anchored-l2-sp-without-anchors": ("add_penalty_grad_", (ps, grads, [0.1], [0.0], [], None, [0.5])),
        "anchored-sp-factors-without-anchors": ("decay_", (ps, [0.1], [0.0], None, None, [0.01], [-1.0])),
        "anchored-anchor-is-its-param": penalty(anchors=[w, anchors[1]], l2_sp=(0.0,)),
        "anchored-fisher-overlaps-its-param": penalty(params=[base[:6], x], anchors=[anchors[0], x],
                                                      fisher=[base[3:], fisher[1]]),
        "anchored-anchor-is-a-grad": ("add_penalty_grad_", (ps, grads, [0.1], [0.0], [anchors[0], grads[1]], None,
                                                            [0.5])),
        "anchored-anchor-is-another-param": ("decay_", ([base[:6], x], [0.1], [0.0],
                                                        [base[:6].clone(), base[3:].view(2, 3)], None, [0.1], [0.0])),
        "anchored-fisher-in-a-state": (name, (*adam_args, anchors, [adam_args[3][1].view(6), fisher[1]], [0.5], True)),
        "anchored-step-before-its-coefficients": (name, (*bad_beta, None, None, [0.5], False)),
    }


def message(call):
    with pytest.raises(RuntimeError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize("case", list(bad_calls()))
def test_native_fake_and_reference_checks_agree(case):
    if case.startswith("anchored-") and native_without_anchors() is not None:
        pytest.skip(native_without_anchors())
    name, args = bad_calls()[case]
    native = message(lambda: getattr(ops, name)(*args))
    assert native.startswith("l2fast: ")
    assert message(lambda: getattr(reference, name)(*args)) == native
    if "sparse" not in case:  # fake tensors cannot be sparse
        with FakeTensorMode() as mode:
            fake = torch.utils._pytree.tree_map_only(torch.Tensor, mode.from_tensor, args)
            assert message(lambda: getattr(ops, name)(*fake)) == native


def test_messages_name_the_lists_the_step_writes():
    assert message(lambda: ops.adam_step_(*bad_calls()["step-steps-in-a-state"][1])) == (
        "l2fast: exp_avg_sqs[1] and steps[1] overlap in memory; an in-place op must write each element once")
    assert message(lambda: ops.sgd_step_(*bad_calls()["step-state-is-a-param"][1])) == (
        "l2fast: params[1] and momentum_buffers[1] are the same memory (a tensor listed twice?); "
        "an in-place op must write each element once")


def test_a_step_counter_listed_twice_is_refused_before_it_counts():
    """The CPU kernel would count it twice and a GPU's once: refused, and left as it was."""
    params = [torch.randn(3), torch.randn(2)]
    step = torch.tensor(4.0)
    name, args = adam(params, steps=[step, step])
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match=r"steps\[0\] and steps\[1\] are the same memory"):
        getattr(ops, name)(*args)
    assert step.item() == 4.0 and all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("case", ["decay", "adam", "sgd"])
def test_meta_calls_run_the_native_checks_and_allocate_the_result(case):
    params = [torch.ones(3, device="meta"), torch.ones(3, device="meta")]
    name, args = {"decay": ("decay_", (params, [0.1], [0.0])), "adam": adam(params), "sgd": sgd(params)}[case]
    if case == "adam":
        args = (*args[:5], [torch.tensor(0.0, device="meta") for _ in params], *args[6:])
    result = getattr(ops, name)(*args)
    assert result.device.type == "meta" and result.shape == () and result.dtype == torch.float32
    with pytest.raises(RuntimeError, match=r"params\[0\] and params\[1\] are the same memory"):
        getattr(ops, name)(*(([params[0], params[0]],) + args[1:]))


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
