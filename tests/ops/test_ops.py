"""Every op against the float64 reference (l2fast.reference) and hand-worked values."""
import math

import numpy
import pytest
import torch

import l2fast
from l2fast import reference
from conftest import DTYPES, random_tensors, ulp_tol

ops = torch.ops.l2fast
SIZES = {
    "one": [1],
    "mixed": [0, 1, 7, 31, 1000, 32769, 100003],
    "large": [1_048_583],  # 1M+, not a multiple of any chunk or vector width
    "many": [1 + i % 97 for i in range(5000)],
}


def test_native_backend_loaded():
    assert l2fast.backend() == "native"


def test_hand_worked_values(device):
    x = [torch.tensor([3.0, -4.0], device=device), torch.tensor([[1.0, -2.0], [0.0, 2.0]], device=device)]
    assert l2fast.sq_norm(x).item() == 25.0 + 9.0
    assert l2fast.sq_norm(x, coeffs=[2.0, 0.5]).item() == 2 * 25.0 + 0.5 * 9.0
    assert l2fast.l1_norm(x, per_tensor=True).tolist() == [7.0, 5.0]
    assert l2fast.penalty(x, l2=0.5, l1=0.25).item() == 0.25 * 34.0 + 0.25 * 12.0
    g = [torch.ones(2, device=device), torch.ones(2, 2, device=device)]
    value = l2fast.add_penalty_grad_(x, g, l2=0.5, l1=0.25)
    assert value.item() == 0.25 * 34.0 + 0.25 * 12.0
    assert g[0].tolist() == [1 + 1.5 + 0.25, 1 - 2.0 - 0.25]
    assert g[1].tolist() == [[1 + 0.5 + 0.25, 1 - 1.0 - 0.25], [1.0, 1 + 1.0 + 0.25]]
    assert l2fast.decay_(x, [0.5, 0.25], l2=0.5).item() == 0.25 * 34.0  # before the decay
    assert x[0].tolist() == [1.5, -2.0] and x[1].tolist() == [[0.75, -1.5], [0.0, 1.5]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("per_tensor", [False, True])
def test_norms_match_float64_reference(device, dtype, sizes, per_tensor):
    xs = random_tensors(sizes, dtype, device)
    coeffs = [0.5 + (i % 3) for i in range(len(xs))]
    for name in ("sq_norm", "l1_norm"):
        got = getattr(ops, name)(xs, coeffs, per_tensor)
        want = getattr(reference, name)(xs, coeffs, per_tensor)
        assert got.dtype == want.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert got.shape == want.shape and got.device == want.device
        # Both accumulate the exact inputs in float64; only the summation order differs.
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-12 if dtype == torch.float64 else 2e-7, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [SIZES["mixed"], SIZES["many"]], ids=["mixed", "many"])
def test_add_penalty_grad_matches_reference(device, dtype, sizes):
    params = random_tensors(sizes, dtype, device, seed=1)
    grads = random_tensors(sizes, dtype, device, seed=2)
    l2 = [0.0 if i % 4 == 0 else 0.1 * (1 + i % 5) for i in range(len(params))]
    l1 = [0.0 if i % 3 == 0 else 0.01 * (1 + i % 2) for i in range(len(params))]
    want_grads = [g.clone() for g in grads]
    want = reference.add_penalty_grad_(params, want_grads, l2, l1)
    got = ops.add_penalty_grad_(params, grads, l2, l1)
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-12 if dtype == torch.float64 else 2e-7, atol=0)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=ulp_tol(dtype), atol=ulp_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_penalty_grad_and_decay_match_reference(device, dtype):
    params = random_tensors(SIZES["mixed"], dtype, device, seed=3)
    scale = torch.tensor(1.5, device=device)
    got = ops.penalty_grad(params, scale, [0.2], [0.03])
    want = reference.penalty_grad(params, scale, [0.2], [0.03])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=ulp_tol(dtype), atol=ulp_tol(dtype))
    factors = [0.001 * i for i in range(len(params))]
    l2 = [0.0 if i % 3 == 0 else 0.1 * i for i in range(len(params))]
    decayed = [p.clone() for p in params]
    value = ops.decay_(decayed, factors, l2)
    want_value = reference.decay_(params, factors, l2)
    torch.testing.assert_close(value.double(), want_value.double(), rtol=1e-12 if dtype == torch.float64 else 2e-7, atol=0)
    for got_p, want_p in zip(decayed, params):
        torch.testing.assert_close(got_p, want_p, rtol=ulp_tol(dtype), atol=0)


def test_float32_accuracy_where_a_float32_running_sum_fails(device):
    """Relative error against an exact sum <= 1e-7 on 1M values led by one whose square is 2^28 times
    theirs: a float32 running sum then drops every later term (shown below), the kernels must not."""
    g = torch.Generator().manual_seed(7)
    values = torch.rand(1 << 20, generator=g).add_(0.5)
    values[0] = 2.0 ** 14
    sizes = [1, 3, 1000, 4099, 65536, (1 << 20) - 1 - 3 - 1000 - 4099 - 65536]  # the head alone, then mixed sizes
    xs = [x.to(device) for x in values.split(sizes)]
    exact = math.fsum(v * v for v in values.double().tolist())
    running = numpy.cumsum(values.pow(2).numpy(), dtype=numpy.float32)[-1].item()  # float32, one term at a time
    assert abs(running - exact) / exact > 1e-3
    assert abs(l2fast.sq_norm(xs).item() - exact) / exact <= 1e-7
    exact_l1 = math.fsum(abs(v) for v in values.double().tolist())
    assert abs(l2fast.l1_norm(xs).item() - exact_l1) / exact_l1 <= 1e-7


def test_bitwise_deterministic_across_threads_and_calls():
    xs = random_tensors(SIZES["mixed"] + [3_000_001], torch.float32, "cpu", seed=4)
    grads = random_tensors(SIZES["mixed"] + [3_000_001], torch.float32, "cpu", seed=5)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            g = [t.clone() for t in grads]
            value = ops.add_penalty_grad_(xs, g, [1e-2], [1e-3])
            results.append((ops.sq_norm(xs, [1.0], False), ops.l1_norm(xs, [1.0], True), value, g))
    finally:
        torch.set_num_threads(threads)
    first = results[0]
    for other in results[1:]:
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]) and torch.equal(first[2], other[2])
        assert all(torch.equal(a, b) for a, b in zip(first[3], other[3]))


def test_cuda_bitwise_repeatable():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    xs = random_tensors(SIZES["mixed"] + [3_000_001], torch.float32, "cuda", seed=6)
    first = ops.sq_norm(xs, [1.0], False)
    for _ in range(5):
        assert torch.equal(first, ops.sq_norm(xs, [1.0], False))


def test_nan_and_inf_propagate(device):
    x = [torch.ones(100, device=device), torch.ones(70000, device=device)]
    x[1][12345] = float("nan")
    assert torch.isnan(l2fast.sq_norm(x))
    assert l2fast.sq_norm(x, per_tensor=True)[0].item() == 100.0
    x[1][12345] = float("inf")
    assert torch.isinf(l2fast.l1_norm(x))
    g = [torch.zeros(100, device=device), torch.zeros(70000, device=device)]
    assert torch.isinf(l2fast.add_penalty_grad_(x, g, l2=0.0, l1=0.5))
    assert g[1][12345].item() == 0.5  # L1 alone: sign(inf) * l1, not 0 * inf


def test_zero_coefficient_tensor_is_not_read(device):
    x = [torch.full((10,), float("nan"), device=device), torch.ones(10, device=device)]
    assert l2fast.sq_norm(x, coeffs=[0.0, 2.0]).item() == 20.0


def test_empty_inputs(device):
    assert l2fast.sq_norm([]).item() == 0.0 and l2fast.sq_norm([], per_tensor=True).numel() == 0
    empty = [torch.empty(0, device=device), torch.empty(0, 3, device=device)]
    assert l2fast.sq_norm(empty).item() == 0.0
    assert l2fast.l1_norm(empty, per_tensor=True).tolist() == [0.0, 0.0]
    assert l2fast.add_penalty_grad_(empty, [torch.empty_like(t) for t in empty], l2=1.0).item() == 0.0
    assert l2fast.decay_(empty, 0.1, l2=1.0).item() == 0.0


def test_dense_non_contiguous_layouts_work(device):
    w = torch.randn(8, 3, 5, 5, device=device).to(memory_format=torch.channels_last)
    t = torch.randn(300, 200, device=device).t()
    assert not w.is_contiguous() and not t.is_contiguous()
    torch.testing.assert_close(l2fast.sq_norm([w, t]).double(), reference.sq_norm([w, t], [1.0], False).double())
    g = torch.randn_like(w)
    want = g + 0.1 * w
    l2fast.add_penalty_grad_([w], [g], l2=0.1)
    torch.testing.assert_close(g, want)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ([torch.randn(3, device=d)[::2]], None), "not dense"),
        (lambda d: ([torch.randn(3, device=d), torch.arange(3, device=d)], None), "dtype torch.int64"),
        (lambda d: ([torch.randn(3, dtype=torch.complex64, device=d)], None), "dtype torch.complex64"),
        (lambda d: ([torch.randn(3, device=d), torch.randn(3, device="meta")], None), "one device"),
        (lambda d: ([torch.randn(3, 3).to_sparse().to(d)], None), "sparse"),
    ],
    ids=["strided", "integer", "complex", "mixed-devices", "sparse"],
)
def test_bad_tensors_get_clear_errors(device, make_args, message):
    tensors, _ = make_args(device)
    with pytest.raises(RuntimeError, match=message):
        l2fast.sq_norm(tensors)


def test_bad_pairs_and_coefficients_get_clear_errors(device):
    w = [torch.randn(4, device=device), torch.randn(5, device=device)]
    with pytest.raises(RuntimeError, match="2 params but 1 grads"):
        l2fast.add_penalty_grad_(w, [torch.zeros(4, device=device)], l2=1.0)
    with pytest.raises(RuntimeError, match=r"grads\[1\] has shape \[6\]"):
        l2fast.add_penalty_grad_(w, [torch.zeros(4, device=device), torch.zeros(6, device=device)], l2=1.0)
    with pytest.raises(RuntimeError, match=r"grads\[0\] has dtype torch.float64"):
        l2fast.add_penalty_grad_(w, [torch.zeros(4, dtype=torch.float64, device=device), w[1]], l2=1.0)
    with pytest.raises(RuntimeError, match="l2 has 3 values for 2 tensors"):
        l2fast.penalty(w, l2=[1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="have no .grad"):
        l2fast.add_penalty_grad_(w, l2=1.0)
    with pytest.raises(TypeError, match="not a tensor"):
        l2fast.sq_norm([w[0], 3.0])
    with pytest.raises(TypeError, match=r"tensors\[1\] is a float, not a tensor"):
        l2fast.sq_norm([torch.nn.Parameter(w[0]), 3.0])


class TaggedTensor(torch.Tensor):
    """A tensor subclass: lists of these are checked one element at a time, not by the fast path."""


def test_parameters_and_tensor_subclasses_are_accepted(device):
    xs = [torch.randn(5, device=device), torch.randn(3, device=device)]
    want = l2fast.sq_norm(xs)
    assert torch.equal(l2fast.sq_norm([torch.nn.Parameter(x) for x in xs]), want)
    assert torch.equal(l2fast.sq_norm([xs[0].as_subclass(TaggedTensor), xs[1]]), want)


def test_mixed_dtypes_in_one_call(device):
    xs = [torch.randn(100, device=device, dtype=dt) for dt in DTYPES]
    got = l2fast.sq_norm(xs, per_tensor=True)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference.sq_norm(xs, [1.0], True), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_op(device, dtype):
    params = random_tensors([5, 130, 1], dtype, device, seed=8)
    grads = random_tensors([5, 130, 1], dtype, device, seed=9)
    scale = torch.tensor(2.0, device=device)
    cases = [
        (ops.sq_norm.default, (params, [1.0, 2.0, 3.0], False)),
        (ops.sq_norm.default, (params, [0.5], True)),
        (ops.l1_norm.default, (params, [0.5], False)),
        (ops.penalty.default, ([p.requires_grad_() for p in random_tensors([5, 130], dtype, device)], [0.1], [0.2])),
        (ops.penalty_grad.default, (params, scale, [0.1], [0.2])),
        (ops.add_penalty_grad_.default, (params, grads, [0.1], [0.2])),
        (ops.decay_.default, (params, [0.01], [0.0])),
        (ops.decay_.default, (params, [0.01, 0.0, 0.02], [0.5])),
        (ops.adam_step_.default, (params, grads, *[[torch.zeros_like(p) for p in params] for _ in range(3)],
                                  [torch.tensor(0.0, device=device) for _ in params], [1e-2], [0.9], [0.99], [1e-8],
                                  [0.1], [0.01], [0.0], [0.1], False, scale, torch.zeros((), device=device), None)),
        (ops.sgd_step_.default, (params, grads, [torch.zeros_like(p) for p in params], [1e-2], [0.9], [0.1], [1],
                                 [0.1], [0.0], [0.01], [0.1], True, False, None, None, scale)),
        (ops.penalty_grad.default, ([], scale, [0.1], [0.0])),  # no params, but scale has a device
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    # Empty lists: no tensor to dispatch on; the fake kernel places the empty sum where an eager call does.
    for op, args in [
        (ops.sq_norm.default, ([], [1.0], True)),
        (ops.penalty.default, ([], [0.1], [0.0])),
        (ops.add_penalty_grad_.default, ([], [], [0.1], [0.0])),
        (ops.decay_.default, ([], [0.01], [0.0])),
        (ops.sgd_step_.default, ([], [], [], [1e-2], [0.0], [0.0], [0], [0.0], [0.0], [0.0], [0.0], False, False,
                                 None, None, None)),
    ]:
        torch.library.opcheck(op, args)


def test_the_arguments_a_schema_marks_written_are_those_whose_versions_move():
    """The in-place ops' autograd kernels take what they write from the schemas' Tensor(a!) marks."""
    params, grads = random_tensors([5, 130], torch.float32, "cpu", seed=8), random_tensors([5, 130], torch.float32, "cpu")
    states = [[torch.zeros_like(p) for p in params] for _ in range(3)]
    scalars = [torch.tensor(2.0), torch.zeros(()), torch.tensor(0.5)]
    cases = [
        (ops.add_penalty_grad_.default, (params, grads, [0.1], [0.2])),
        (ops.decay_.default, (params, [0.01], [0.0])),
        (ops.adam_step_.default, (params, grads, *states, [torch.tensor(0.0) for _ in params], [1e-2], [0.9], [0.99],
                                  [1e-8], [0.1], [0.01], [0.0], [0.1], False, *scalars)),
        (ops.sgd_step_.default, (params, grads, states[0], [1e-2], [0.9], [0.1], [1], [0.1], [0.0], [0.01], [0.1], True,
                                 False, *scalars)),
    ]
    for op, args in cases:
        marked = []
        for argument, value in zip(op._schema.arguments, args):
            written = argument.alias_info is not None and argument.alias_info.is_write
            marked += [(written, t) for t in (value if isinstance(value, list) else [value]) if isinstance(t, torch.Tensor)]
        assert any(written for written, _ in marked)
        before = [t._version for _, t in marked]
        with torch.no_grad():
            op(*args)
        assert [t._version - v for (_, t), v in zip(marked, before)] == [int(written) for written, _ in marked], op


def away_from_zero(*sizes):
    """float64 leaves with |w| >= 0.1: the kink of |w| at 0 stays further away than gradcheck's steps."""
    g = torch.Generator().manual_seed(11)
    return [(lambda p: (p + 0.1 * p.sign()).requires_grad_())(torch.randn(n, generator=g, dtype=torch.float64)) for n in sizes]


def test_gradcheck_penalty():
    params = away_from_zero(3, 17)
    assert torch.autograd.gradcheck(lambda a, b: l2fast.penalty([a, b], l2=[0.3, 0.7], l1=0.2), params)


@pytest.mark.parametrize("per_tensor", [False, True])
def test_second_derivatives_of_the_norms_and_the_penalty(per_tensor):
    params = away_from_zero(3, 17, 1)
    cases = [
        lambda a, b, c: l2fast.sq_norm([a, b, c], coeffs=[0.5, 2.0, 0.0], per_tensor=per_tensor),
        lambda a, b, c: l2fast.l1_norm([a, b, c], coeffs=[0.5, 2.0, 1.0], per_tensor=per_tensor),  # Hessian 0 a.e.
        lambda a, b, c: l2fast.penalty([a, b, c], l2=[0.3, 0.0, 0.7], l1=0.2),
    ]
    for f in cases:
        assert torch.autograd.gradgradcheck(f, params)


def test_penalty_grad_is_differentiable_in_params_and_scale():
    params = away_from_zero(4, 9)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    def f(a, b, s):
        return tuple(ops.penalty_grad([a, b], s, [0.4, 0.0], [0.1]))

    assert torch.autograd.gradcheck(f, params + [scale])
    assert torch.autograd.gradgradcheck(f, params + [scale])


def test_hessian_vector_product_through_penalty():
    """The issue's example: d^2/dw^2 of 0.3/2 w^2 is 0.3, so H v = 0.3 v (it came out 0)."""
    w = torch.tensor([1.0, -2.0, 3.0])
    v = torch.tensor([1.0, 1.0, -2.0])
    value, hvp = torch.autograd.functional.hvp(lambda w: l2fast.penalty([w], l2=0.3, l1=0.1), w, v)
    assert value.item() == pytest.approx(0.15 * 14 + 0.1 * 6)
    torch.testing.assert_close(hvp, 0.3 * v)


def test_penalty_backward_gives_weight_decay_gradient(device):
    model = torch.nn.Linear(20, 30).to(device)
    x = torch.randn(8, 20, device=device)
    loss = model(x).pow(2).mean() + 2.0 * l2fast.penalty(model.parameters(), l2=1e-2, l1=1e-3)
    loss.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    naive = model(x).pow(2).mean() + 2.0 * sum(
        5e-3 * p.pow(2).sum() + 1e-3 * p.abs().sum() for p in model.parameters()
    )
    naive.backward()
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(device, backend):
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
    params = list(model.parameters())

    def loss_fn(x):
        return model(x).square().mean() + l2fast.penalty(params, l2=0.1) + 0.01 * l2fast.l1_norm(params)

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    x = torch.randn(5, 16, device=device)
    eager = loss_fn(x)
    eager.backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad()
    got = compiled(x)
    got.backward()
    torch.testing.assert_close(got, eager)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w)


def test_compile_fullgraph_in_place_ops(device):
    """The mutating ops (with their Autograd and ADInplaceOrView kernels) trace without graph breaks."""
    params = random_tensors([5, 130], torch.float32, device, seed=12)
    grads = random_tensors([5, 130], torch.float32, device, seed=13)
    want_params, want_grads = [p.clone() for p in params], [g.clone() for g in grads]
    want = reference.add_penalty_grad_(want_params, want_grads, [0.1], [0.01])
    want = want + reference.decay_(want_params, [0.02], [0.1])

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(ps, gs):
        return l2fast.add_penalty_grad_(ps, gs, l2=0.1, l1=0.01) + l2fast.decay_(ps, 0.02, l2=0.1)

    torch.testing.assert_close(step(params, grads), want)
    for got, expected in zip(params + grads, want_params + want_grads):
        torch.testing.assert_close(got, expected)


def test_clip_grad_norm_matches_torch(device):
    model = torch.nn.Linear(50, 40).to(device)
    model(torch.randn(3, 50, device=device)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    total = l2fast.clip_grad_norm_(model.parameters(), max_norm=0.5)
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    want = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
    torch.testing.assert_close(total, want)


@pytest.mark.parametrize("per_tensor", [False, True])
def test_norms_are_differentiable(device, per_tensor):
    xs = [torch.randn(n, device=device, requires_grad=True) for n in (5, 300)]
    weights = torch.tensor([0.7, -1.3], device=device)
    for name, naive in (("sq_norm", lambda x: x.pow(2).sum()), ("l1_norm", lambda x: x.abs().sum())):
        out = getattr(l2fast, name)(xs, coeffs=[2.0, 3.0], per_tensor=per_tensor)
        (out * weights).sum().backward() if per_tensor else out.backward()
        got = [x.grad.clone() for x in xs]
        for x in xs:
            x.grad = None
        values = torch.stack([c * naive(x) for c, x in zip((2.0, 3.0), xs)])
        ((values * weights).sum() if per_tensor else values.sum()).backward()
        for x, g in zip(xs, got):
            torch.testing.assert_close(g, x.grad)
            x.grad = None


def test_reductions_record_autograd_only_when_a_tensor_requires_grad(device):
    plain = [torch.randn(4, device=device), torch.randn(3, device=device)]
    leaf = torch.randn(5, device=device, requires_grad=True)
    for f in (l2fast.sq_norm, l2fast.l1_norm, lambda xs: l2fast.penalty(xs, l2=0.5, l1=0.1)):
        assert f(plain).grad_fn is None
        assert f(plain + [leaf]).grad_fn is not None
        with torch.no_grad():
            assert f(plain + [leaf]).grad_fn is None
        # The saved weights are checked as torch's own ops check theirs: a weight changed in place
        # between forward and backward is an error, not a gradient of the new value.
        value = f(plain + [leaf])
        with torch.no_grad():
            leaf.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            value.backward()


def test_misaligned_views_take_the_scalar_path(device):
    """Views starting 1 element into their storage are not 16-byte aligned: packs cannot be used."""
    base_w = torch.randn(70001, device=device)
    base_g = torch.randn(70001, device=device)
    before = base_g[0].item()
    w, g = base_w[1:], base_g[1:]
    want_g = g + 0.3 * w
    want = reference.sq_norm([w], [1.0], False)
    torch.testing.assert_close(l2fast.sq_norm([w]), want, rtol=2e-7, atol=0)
    l2fast.add_penalty_grad_([w], [g], l2=0.3)
    torch.testing.assert_close(g, want_g)
    assert base_g[0].item() == before  # the element before the view is untouched


# --- aliasing: an in-place op never writes memory twice, or memory it reads elsewhere --------------


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_aliased_and_overlapping_tensors_are_refused(impl):
    w, g = torch.randn(8), torch.randn(8)
    cases = [
        (lambda: impl.decay_([w, w], [0.5], [0.0]), r"params\[0\] and params\[1\] are the same memory"),
        (lambda: impl.decay_([w[:5], g, w[4:]], [0.5], [0.0]), r"params\[0\] and params\[2\] overlap in memory"),
        (lambda: impl.decay_([w.view(2, 4)[1], w.view(2, 4)[1]], [0.5], [0.0]), r"params\[0\] and params\[1\] are the same"),
        (lambda: impl.add_penalty_grad_([w[:4], w[4:]], [g[:4], g[:4]], [1.0], [0.0]), r"grads\[0\] and grads\[1\] are the same"),
        (lambda: impl.add_penalty_grad_([w[:4], w[4:]], [g[:4], w[2:6]], [1.0], [0.0]), r"grads\[1\] overlaps params\[0\]"),
        (lambda: impl.add_penalty_grad_([w[:4], w[4:]], [w[4:], g[:4]], [1.0], [0.0]), r"grads\[0\] overlaps params\[1\]"),
        # Another storage over the same memory is caught by address, not by storage identity.
        (lambda: impl.decay_([w, torch.from_numpy(w.numpy())], [0.5], [0.0]), r"params\[0\] and params\[1\] are the same"),
    ]
    before = (w.clone(), g.clone())
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
    assert torch.equal(w, before[0]) and torch.equal(g, before[1])  # refused before anything was written


def test_listing_a_tensor_twice_no_longer_loses_updates():
    """Two threads once raced on [w, w]: now the call is refused instead of giving a run-dependent answer."""
    w = torch.randn(1 << 18)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="listed twice"):
            ops.add_penalty_grad_([w, w], [torch.zeros_like(w)] * 2, [1.0], [0.0])
        with pytest.raises(RuntimeError, match="listed twice"):
            ops.decay_([w, w], [0.5], [0.0])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_disjoint_views_and_in_place_pairs_are_allowed(impl):
    base = torch.randn(5000 * 3)
    views = [base[3 * i : 3 * i + 3] for i in range(5000)]  # 5,000 disjoint views of one storage
    want = [v * 0.9 for v in views]
    impl.decay_(views, [0.1], [0.0])
    torch.testing.assert_close(torch.cat(views), torch.cat(want))
    with pytest.raises(RuntimeError, match=r"params\[4998\] and params\[4999\] overlap"):
        impl.decay_(views[:4999] + [base[3 * 4998 + 2 : 3 * 4998 + 5]], [0.1], [0.0])
    # grads[i] being params[i] itself reads every element before writing it: allowed, and exact.
    w = torch.tensor([1.0, -2.0, 0.5])
    value = impl.add_penalty_grad_([w], [w], [0.5], [0.0])
    assert value.item() == 0.25 * 5.25 and w.tolist() == [1.5, -3.0, 0.75]


# --- in-place ops and autograd ---------------------------------------------------------------------


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_in_place_ops_bump_version_counters(impl):
    x = torch.randn(5, requires_grad=True)
    y = x * 2
    loss = (y * y).sum()  # saves y for backward
    with torch.no_grad():
        impl.decay_([y], [0.5], [0.0])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    g = x.detach() * 3
    g.requires_grad_()
    h = g * 1.0
    loss = (h * h).sum()
    with torch.no_grad():
        impl.add_penalty_grad_([torch.ones(5)], [h], [1.0], [0.0])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    w = torch.ones(3)
    versions = w._version
    impl.decay_([w], [0.5], [0.0])
    assert w._version > versions


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_in_place_ops_on_a_leaf_that_requires_grad_raise_like_torch(impl):
    w = torch.ones(3, requires_grad=True)
    message = "a leaf Variable that requires grad is being used in an in-place operation"
    with pytest.raises(RuntimeError, match=message):
        w.mul_(0.5)  # torch's own in-place op, for comparison
    with pytest.raises(RuntimeError, match=message):
        impl.decay_([w], [0.5], [0.0])
    with pytest.raises(RuntimeError, match=message):
        impl.add_penalty_grad_([torch.ones(3)], [w], [1.0], [0.0])
    with torch.no_grad():  # as optimizers call them
        impl.decay_([w], [0.5], [0.0])
    assert w.tolist() == [0.5, 0.5, 0.5]


def test_native_in_place_op_outside_no_grad_has_no_silent_derivative():
    p = torch.ones(3, requires_grad=True) * 1.0
    g = torch.zeros(3)
    value = ops.add_penalty_grad_([p], [g], [1.0], [0.0])
    for result in (value, g):
        with pytest.raises(RuntimeError, match="derivative for l2fast::add_penalty_grad_ is not implemented"):
            result.sum().backward(retain_graph=True)


# --- devices, coefficients, empty lists, layouts ------------------------------------------------------


def test_device_mismatches_are_refused_meta_included():
    w = torch.ones(3)
    meta = torch.ones(3, device="meta")
    with pytest.raises(RuntimeError, match=r"grads\[0\] is on meta but params\[0\] is on cpu"):
        ops.add_penalty_grad_([w], [meta], [1.0], [0.0])
    with pytest.raises(RuntimeError, match=r"grads\[0\] is on cpu but params\[0\] is on meta"):
        ops.add_penalty_grad_([meta], [w], [1.0], [0.0])
    with pytest.raises(RuntimeError, match="scale is on meta but params are on cpu"):
        ops.penalty_grad([w], torch.ones((), device="meta"), [1.0], [0.0])
    with pytest.raises(RuntimeError, match=r"tensors\[1\] is on meta but tensors\[0\] is on cpu"):
        ops.sq_norm([w, meta], [1.0], False)
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"grads\[0\] is on cuda:0 but params\[0\] is on cpu"):
            ops.add_penalty_grad_([w], [w.cuda()], [1.0], [0.0])
        with pytest.raises(RuntimeError, match="scale is on cpu but params are on cuda:0"):
            ops.penalty_grad([w.cuda()], torch.ones(()), [1.0], [0.0])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_coefficient_values_are_refused_by_every_op(bad):
    w, g = [torch.ones(3), torch.ones(2)], [torch.zeros(3), torch.zeros(2)]
    text = "nan" if math.isnan(bad) else f"{bad:g}"
    calls = {
        "coeffs": lambda c: ops.sq_norm(w, c, False),
        "l2": lambda c: ops.penalty(w, c, [0.0]),
        "l1": lambda c: ops.add_penalty_grad_(w, g, [0.0], c),
        "factors": lambda c: ops.decay_(w, c, [0.0]),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=rf"{name}\[1\] = {text} is invalid"):
            call([0.5, bad])
    with pytest.raises(RuntimeError, match=rf"l1\[1\] = {text} is invalid"):
        ops.penalty_grad(w, torch.ones(()), [0.0], [0.5, bad])
    with pytest.raises(RuntimeError, match=rf"l2\[0\] = {text} is invalid"):
        l2fast.penalty(w, l2=bad)
    assert g[0].tolist() == [0.0, 0.0, 0.0]


def test_coefficients_of_the_wrong_type_are_refused():
    w = [torch.ones(2)]
    with pytest.raises(TypeError, match="coeffs must be a float or a sequence of floats, got str"):
        l2fast.sq_norm(w, "12")  # once read as [1.0, 2.0]
    with pytest.raises(TypeError, match=r"l2\[0\] is a str, not a number"):
        l2fast.penalty(w, l2=["0.1"])
    with pytest.raises(TypeError, match=r"factors\[0\] is a bool, not a number"):
        l2fast.decay_(w, [True])


def test_decay_fractions_may_exceed_one_as_adamw_allows():
    """AdamW checks lr >= 0 and weight_decay >= 0 only, so lr * weight_decay can exceed 1."""
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=3.0, weight_decay=0.5)  # accepted by torch
    w = torch.tensor([2.0, -1.0])
    ops.decay_([w], [1.5], [0.0])
    assert w.tolist() == [2.0 * (1 - 1.5), -1.0 * (1 - 1.5)]


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_zero_coefficient_tensors_get_exactly_zero_gradient_even_for_a_nan_scale(impl):
    w = [torch.tensor([1.0, float("inf")]), torch.tensor([2.0, -3.0])]
    grads = impl.penalty_grad(w, torch.tensor(float("nan")), [0.0, 1.0], [0.0])
    assert grads[0].tolist() == [0.0, 0.0]  # not read: no 0 * inf, no 0 * nan
    assert all(math.isnan(v) for v in grads[1].tolist())  # a penalised tensor propagates the NaN


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_empty_lists_are_valid_for_every_op(impl):
    scale = torch.tensor(2.0)
    results = [
        impl.sq_norm([], [1.0], False),
        impl.l1_norm([], [1.0], False),
        impl.penalty([], [1.0], [0.5]),
        impl.add_penalty_grad_([], [], [1.0], [0.0]),
        impl.decay_([], [0.1], [1.0]),
    ]
    for r in results:
        assert r.shape == () and r.item() == 0.0 and r.dtype == torch.float32 and r.device.type == "cpu"
    per_tensor = impl.sq_norm([], [1.0], True)
    assert per_tensor.shape == (0,) and per_tensor.dtype == torch.float32
    assert impl.penalty_grad([], scale, [1.0], [0.0]) == []
    with pytest.raises(RuntimeError, match="l2 has 2 values for 0 tensors"):
        impl.penalty([], [1.0, 2.0], [0.0])
    with pytest.raises(RuntimeError, match=r"coeffs\[0\] = -1 is invalid"):
        impl.sq_norm([], [-1.0], False)


def test_empty_lists_under_fake_tensors_and_compile():
    with torch._subclasses.fake_tensor.FakeTensorMode():
        for fake in (ops.sq_norm([], [1.0], False), ops.penalty([], [1.0], [0.5]), ops.decay_([], [0.1], [1.0])):
            assert (fake.shape, fake.dtype, fake.device) == ((), torch.float32, torch.device("cpu"))
        assert l2fast.sq_norm([], per_tensor=True).shape == (0,)
        with pytest.raises(RuntimeError, match="l2 has 2 values for 0 tensors"):
            l2fast.penalty([], l2=[1.0, 2.0])

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return x + l2fast.penalty([], l2=0.5)

    assert f(torch.ones(2)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("layout", ["coo", "csr", "csc", "bsr", "bsc"])
def test_every_sparse_layout_is_reported_by_index(layout):
    dense = torch.randn(4, 4)
    sparse = {
        "coo": dense.to_sparse(),
        "csr": dense.to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((2, 2)),
        "bsc": dense.to_sparse_bsc((2, 2)),
    }[layout]
    name = "sparse_coo" if layout == "coo" else f"sparse_{layout}"
    for call in (
        lambda: ops.sq_norm([dense, sparse], [1.0], False),
        lambda: ops.decay_([dense, sparse], [0.1], [0.0]),
        lambda: ops.add_penalty_grad_([dense, sparse], [dense.clone(), dense.clone()], [1.0], [0.0]),
        lambda: reference.sq_norm([dense, sparse], [1.0], False),
    ):
        with pytest.raises(RuntimeError, match=rf"\[1\] has layout torch.{name}; only dense"):
            call()
