"""On a GPU: what the host SIMT harness cannot run at size, or cannot show at all (skipped without a
GPU; bench/gpu.sh runs it in its correctness stage): a tensor past 2^31 elements through every op and
one Adam step, 100,000 tiny tensors, odd-offset half-precision views, a side stream, and a bitwise
repeat of adam_step_."""
import pytest
import torch

from l2fast import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ops = torch.ops.l2fast
BIG = 2**31 + 5
PIECE = 2**27  # the float64 reference is formed piece by piece: a float64 copy of BIG would need 17 GB


def free_gib():
    return torch.cuda.mem_get_info()[0] / 2**30


def pieces(*tensors):
    for start in range(0, tensors[0].numel(), PIECE):
        yield [t.view(-1)[start:start + PIECE] for t in tensors]


def sums64(x):
    """(sum x^2, sum |x|) in float64, piece by piece."""
    sq = ab = 0.0
    for (p,) in pieces(x):
        p = p.double()
        sq += p.square().sum().item()
        ab += p.abs().sum().item()
    return sq, ab


@pytest.mark.skipif(torch.cuda.is_available() and free_gib() < 40, reason="needs 40 GiB of free GPU memory")
def test_past_2_to_the_31_elements_every_op_and_one_adam_step():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(BIG, device="cuda", dtype=torch.bfloat16, generator=g)
    for name, t in [("whole", x), ("one-element offset view", x[1:])]:
        sq, ab = sums64(t)
        rel = lambda got, want: abs(float(got) - want) / abs(want)  # noqa: E731
        assert rel(ops.sq_norm([t], [1.0], False), sq) < 1e-6, name
        assert rel(ops.l1_norm([t], [1.0], False), ab) < 1e-6, name
        assert rel(ops.penalty([t], [0.5], [0.25]), 0.25 * sq + 0.25 * ab) < 1e-6, name
        grad = torch.zeros_like(t)
        assert rel(ops.add_penalty_grad_([t], [grad], [0.5], [0.0]), 0.25 * sq) < 1e-6, name
        (out,) = ops.penalty_grad([t], torch.ones((), device="cuda"), [0.5], [0.0])
        for got, want, w in pieces(grad, out, t):
            want64 = 0.5 * w.double()
            assert torch.equal(got, want64.to(torch.bfloat16)), name
            assert torch.equal(want, want64.to(torch.bfloat16)), name
        del grad, out
        y = t.clone()
        ops.decay_([y], [0.5], [0.0])
        for got, w in pieces(y, t):
            assert torch.equal(got, (w.float() * 0.5).to(torch.bfloat16)), name
        del y
    # One Adam step over the offset view (its last element is BIG - 2 past its start), against the
    # reference step taken piece by piece in the parameter's op math.
    w = x[1:]
    grad = torch.randn(w.numel(), device="cuda", dtype=torch.bfloat16, generator=g)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    before = w.clone()
    step = torch.zeros((), device="cuda")
    ops.adam_step_([w], [grad], [m], [v], [], [step], [1e-3], [0.9], [0.999], [1e-8], [1e-2], [0.0], [0.0], [1e-2],
                   False, None, None, None)
    assert float(step) == 1.0
    for got_w, got_m, got_v, w0, g0 in pieces(w, m, v, before, grad):
        want = [w0.clone(), g0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)]
        reference.adam_step_([want[0]], [want[1]], [want[2]], [want[3]], [], [torch.zeros((), device="cuda")],
                             [1e-3], [0.9], [0.999], [1e-8], [1e-2], [0.0], [0.0], [1e-2], False, None, None, None)
        for got, expected in zip([got_w, got_m, got_v], [want[0], want[2], want[3]]):
            torch.testing.assert_close(got.float(), expected.float(), rtol=2**-7, atol=1e-30)


def test_100k_tiny_tensors():
    g = torch.Generator(device="cuda").manual_seed(1)
    xs = [torch.randn(1 + i % 97, device="cuda", generator=g) for i in range(100_000)]
    want = reference.sq_norm(xs, [1.0], True)
    torch.testing.assert_close(ops.sq_norm(xs, [1.0], True).double(), want.double(), rtol=1e-6, atol=0)
    grads = [torch.zeros_like(x) for x in xs]
    ops.add_penalty_grad_(xs, grads, [0.5], [0.0])
    assert all(torch.equal(gr, 0.5 * x) for gr, x in zip(grads[::997], xs[::997]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [1, 3, 5, 7])
def test_odd_offset_half_views(dtype, offset):
    base = torch.randn(3 * 16384 + 37, device="cuda").to(dtype)
    grad_base = torch.zeros_like(base)
    x, grad = base[offset:], grad_base[offset:]
    want = reference.penalty([x], [0.5], [0.25])
    torch.testing.assert_close(ops.penalty([x], [0.5], [0.25]).double(), want.double(), rtol=1e-6, atol=0)
    ops.add_penalty_grad_([x], [grad], [0.5], [0.0])
    assert torch.equal(grad, (0.5 * x.float()).to(dtype))
    assert torch.equal(grad_base[:offset], torch.zeros_like(grad_base[:offset]))


def adam_case(seed, n=8):
    g = torch.Generator(device="cuda").manual_seed(seed)
    sizes = [3, 16384 * 5 + 11, 1 << 20, 97] * (n // 4)
    params = [torch.randn(k, device="cuda", generator=g) for k in sizes]
    grads = [torch.randn(k, device="cuda", generator=g) for k in sizes]
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)] + [[torch.zeros((), device="cuda") for _ in params]]
    return params, grads, state


def adam(params, grads, state, scale=None):
    n = len(params)
    return ops.adam_step_(params, grads, state[0], state[1], [], state[2], [1e-3] * n, [0.9] * n, [0.999] * n,
                          [1e-8] * n, [1e-2] * n, [1e-3] * n, [0.0] * n, [1e-2] * n, False, scale, None, None)


def test_side_stream_without_syncs():
    """The ops launch on the current stream: work queued on a side stream, no synchronize between."""
    params, grads, state = adam_case(2)
    want = adam_case(2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for p in params:
            p.mul_(2.0)  # queued on the side stream; the step must see it
        value = adam(params, grads, state)
        norm = ops.sq_norm(params, [1.0], False)
    torch.cuda.current_stream().wait_stream(side)
    for p in want[0]:
        p.mul_(2.0)
    want_value = adam(*want)
    torch.cuda.synchronize()
    assert torch.equal(value, want_value)
    assert torch.equal(norm, ops.sq_norm(want[0], [1.0], False))
    assert all(torch.equal(a, b) for a, b in zip(params, want[0]))


def test_adam_step_is_bitwise_repeatable():
    runs = []
    for _ in range(2):
        params, grads, state = adam_case(3)
        values = [adam(params, grads, state, torch.tensor(8.0, device="cuda")) for _ in range(3)]
        runs.append((values, params, state[0], state[1]))
    for a, b in zip(*runs):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
