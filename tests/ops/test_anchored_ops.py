"""The anchored penalties (L2-SP, EWC) of every op against independent float64 references: the
hand-written loss sum(l2/2 w^2 + l1 |w| + sp/2 F (w - w0)^2) differentiated by torch.autograd, the
decoupled update worked by hand, and torch.optim's Adam, AdamW and SGD run on that loss; then every
refusal of the anchored arguments, word for word. Each test runs on the reference ops and on the
native ones (skipped while the native library predates anchors)."""
import re

import pytest
import torch

import l2fast
from l2fast import _ops, reference
from conftest import native_without_anchors

# Tensor 2 is not pulled (l2_sp 0): its anchor and fisher are all NaN and must not be read. Tensor 3
# is empty; tensor 4 has the pull alone.
SIZES = [7, 1000, 33, 0, 5]
L2 = [0.1, 0.0, 0.05, 0.2, 0.0]
L1 = [0.0, 0.01, 0.02, 0.0, 0.0]
SP = [0.5, 1.5, 0.0, 0.3, 2.0]
UNPULLED = 2
N = len(SIZES)
REL = 1e-7  # float32 results against float64, relative to the norm of the float64 result


@pytest.fixture(params=["reference", "native"])
def ops(request):
    """The implementation under test: l2fast.reference or torch.ops.l2fast."""
    if request.param == "reference":
        return reference
    reason = native_without_anchors()
    if reason is not None:
        pytest.skip(reason)
    return torch.ops.l2fast


def problem(dtype=torch.float32, anchor_dtype=None, ewc=True, seed=0):
    """(params, anchors, fisher): anchors near the weights, importances in [0, 2) (fisher None
    without ewc); the unpulled tensor's anchor and fisher all NaN."""
    g = torch.Generator().manual_seed(seed)
    anchor_dtype = anchor_dtype or dtype
    params = [torch.randn(n, generator=g, dtype=torch.float64).to(dtype) for n in SIZES]
    anchors = [(w.double() + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).to(anchor_dtype)
               for w, n in zip(params, SIZES)]
    fisher = [(2 * torch.rand(n, generator=g, dtype=torch.float64)).to(anchor_dtype) for n in SIZES]
    anchors[UNPULLED] = torch.full_like(anchors[UNPULLED], float("nan"))
    fisher[UNPULLED] = torch.full_like(fisher[UNPULLED], float("nan"))
    return params, anchors, fisher if ewc else None


def anchored_loss(ws, anchors, fisher, l2=L2, l1=L1, sp=SP):
    """The hand-written penalty of float64 tensors ws. A tensor with sp = 0 has no pull term: its
    anchor is not read."""
    loss = torch.zeros((), dtype=torch.float64)
    for i, w in enumerate(ws):
        loss = loss + l2[i] / 2 * (w**2).sum() + l1[i] * w.abs().sum()
        if sp[i] != 0.0:
            importance = 1.0 if fisher is None else fisher[i].double()
            loss = loss + sp[i] / 2 * (importance * (w - anchors[i].double()) ** 2).sum()
    return loss


def oracle(params, anchors, fisher, **coeffs):
    """(value, gradients) of anchored_loss at params, in float64 by torch.autograd."""
    ws = [w.detach().double().requires_grad_() for w in params]
    loss = anchored_loss(ws, anchors, fisher, **coeffs)
    return loss.detach(), torch.autograd.grad(loss, ws)


def flat(tensors) -> torch.Tensor:
    if isinstance(tensors, torch.Tensor):
        return tensors.detach().double().flatten()
    return torch.cat([t.detach().double().flatten() for t in tensors])


def assert_near(got, want, rel=REL):
    """got (a tensor or a list of them) is finite and within rel of want, relative to want's norm."""
    got, want = flat(got), flat(want)
    assert torch.isfinite(got).all()
    error = float((got - want).norm() / want.norm())
    assert error <= rel, f"relative error {error:.3g} > {rel:g}"


# --- penalty, penalty_grad, add_penalty_grad_, decay_ against the float64 oracle ---

KINDS = pytest.mark.parametrize("anchor_dtype, ewc", [(torch.float32, False), (torch.float32, True),
                                                      (torch.bfloat16, False), (torch.bfloat16, True)],
                                ids=["l2-sp", "ewc", "l2-sp-bf16", "ewc-bf16"])


@KINDS
def test_penalty_value_and_its_gradient_through_autograd(ops, anchor_dtype, ewc):
    params, anchors, fisher = problem(anchor_dtype=anchor_dtype, ewc=ewc)
    value, grads = oracle(params, anchors, fisher)
    leaves = [w.clone().requires_grad_() for w in params]
    got = ops.penalty(leaves, L2, L1, anchors, fisher, SP)
    assert got.dtype == torch.float32
    assert_near(got, value)
    got.backward()
    assert_near([w.grad for w in leaves], grads)
    assert all(a.grad is None for a in anchors)


@KINDS
@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_penalty_grad_is_the_scaled_gradient(ops, anchor_dtype, ewc, scale):
    params, anchors, fisher = problem(anchor_dtype=anchor_dtype, ewc=ewc)
    _, grads = oracle(params, anchors, fisher)
    got = ops.penalty_grad(params, torch.tensor(scale), L2, L1, anchors, fisher, SP)
    assert [g.dtype for g in got] == [torch.float32] * N
    assert_near(got, [scale * g for g in grads])


@KINDS
def test_add_penalty_grad_adds_the_gradient_and_returns_the_value(ops, anchor_dtype, ewc):
    params, anchors, fisher = problem(anchor_dtype=anchor_dtype, ewc=ewc)
    value, grads = oracle(params, anchors, fisher)
    raw = [torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64).float() for n in SIZES]
    written = [g.clone() for g in raw]
    assert_near(ops.add_penalty_grad_(params, written, L2, L1, anchors, fisher, SP), value)
    assert_near(written, [r.double() + g for r, g in zip(raw, grads)])


@KINDS
def test_decay_pulls_decoupled_from_the_weights_before_the_update(ops, anchor_dtype, ewc):
    params, anchors, fisher = problem(anchor_dtype=anchor_dtype, ewc=ewc)
    factors = [0.01, 0.02, 0.03, 0.1, 0.0]  # the last tensor is pulled and not decayed
    sp_factors = [0.1 * s for s in SP]
    want_value, _ = oracle(params, anchors, fisher, l1=[0.0] * N)
    want = []
    for i, w in enumerate(p.double() for p in params):
        importance = 1.0 if fisher is None else fisher[i].double()
        pull = sp_factors[i] * importance * (w - anchors[i].double()) if sp_factors[i] else 0.0
        want.append(w * (1 - factors[i]) - pull)
    decayed = [w.clone() for w in params]
    assert_near(ops.decay_(decayed, factors, L2, anchors, fisher, sp_factors, SP), want_value)
    assert_near(decayed, want)


def test_float64_weights_take_bfloat16_anchors_and_compute_in_float64(ops):
    params, anchors, fisher = problem(dtype=torch.float64, anchor_dtype=torch.bfloat16)
    value, grads = oracle(params, anchors, fisher)
    got_value = ops.penalty(params, L2, L1, anchors, fisher, SP)
    assert got_value.dtype == torch.float64
    assert_near(got_value, value, rel=1e-14)
    assert_near(ops.penalty_grad(params, torch.tensor(1.0, dtype=torch.float64), L2, L1, anchors, fisher, SP), grads,
                rel=1e-14)


def test_anchors_with_zero_l2_sp_leave_the_results_of_the_call_without_them_bit_for_bit(ops):
    params, anchors, fisher = problem()
    grads = [torch.ones(n) for n in SIZES]
    want_grads = [g.clone() for g in grads]
    got = ops.add_penalty_grad_(params, grads, L2, L1, anchors, fisher, [0.0])
    assert torch.equal(got, ops.add_penalty_grad_(params, want_grads, L2, L1))
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))
    assert torch.equal(ops.penalty(params, L2, L1, [], [], [0.0]), ops.penalty(params, L2, L1))


# --- the optimizer steps against torch.optim on the hand-written loss ---

LR, BETAS, EPS, MOMENTUM, WD = 1e-2, (0.9, 0.99), 1e-8, 0.9, 0.1
STEPS = 60
STEP_REL = {torch.float64: 1e-12, torch.float32: 1e-6}  # after STEPS steps, relative to the weights' norm


def task_loss(ws):
    """A quadratic task with its own minimum, so the task gradient and the pull compete."""
    g = torch.Generator().manual_seed(7)
    loss = 0.0
    for w in ws:
        target = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype)
        curvature = (0.5 + torch.rand(w.shape, generator=g, dtype=torch.float64)).to(w.dtype)
        loss = loss + (curvature * (w - target) ** 2).sum() / 2
    return loss


def task_grads(ws):
    leaves = [w.detach().clone().requires_grad_() for w in ws]
    return list(torch.autograd.grad(task_loss(leaves), leaves))


def step_coefficients(decoupled):
    """(l2, l1, decoupled decay fraction, value_l2) of the op: coupled, L2 and L1 join the loss;
    decoupled, a decay as AdamW's weight decay."""
    if not decoupled:
        return L2, L1, [0.0], L2
    return [0.0], [0.0] * N, [LR * WD], [WD] * N


def by_hand(kind, w, i, anchors, fisher):
    """The decoupled terms torch's optimizer does not take, from the weights before the step: the pull
    lr * sp * F * (w - w0), and for SGD (which has no decoupled decay) the decay lr * wd * w."""
    w = w.detach().double()
    term = LR * WD * w if kind == "sgd" else torch.zeros_like(w)
    if SP[i] != 0.0:
        term = term + LR * SP[i] * (1.0 if fisher is None else fisher[i].double()) * (w - anchors[i].double())
    return term


def torch_run(kind, decoupled, params, anchors, fisher):
    """STEPS steps of Adam / AdamW / SGD on the task plus the hand-written penalty (coupled), or on the
    task with the decoupled terms of by_hand taken from the weights after torch's step (before it,
    AdamW's 1 - lr * weight_decay would scale them). Returns the weights and, per step, the penalty
    value of the weights the step started from."""
    ws = [w.clone().requires_grad_() for w in params]
    if kind == "sgd":
        optimizer = torch.optim.SGD(ws, lr=LR, momentum=MOMENTUM, foreach=False)
    elif decoupled:
        optimizer = torch.optim.AdamW(ws, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, foreach=False)
    else:
        optimizer = torch.optim.Adam(ws, lr=LR, betas=BETAS, eps=EPS, foreach=False)
    l2, l1, _, value_l2 = step_coefficients(decoupled)
    values = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        in_loss = anchored_loss(ws, anchors, fisher, l2=l2 * N if len(l2) == 1 else l2, l1=l1,
                                sp=[0.0] * N if decoupled else SP)
        (task_loss(ws) + in_loss).backward()
        with torch.no_grad():
            values.append(anchored_loss([w.double() for w in ws], anchors, fisher, l2=value_l2, l1=l1))
            terms = [by_hand(kind, w, i, anchors, fisher) for i, w in enumerate(ws)] if decoupled else []
        optimizer.step()
        with torch.no_grad():
            for w, term in zip(ws, terms):
                w.sub_(term.to(w.dtype))
    return [w.detach() for w in ws], values


def l2fast_run(ops, kind, decoupled, params, anchors, fisher):
    """The same steps by one adam_step_ / sgd_step_ call each, on the task's gradient alone."""
    ws = [w.clone() for w in params]
    l2, l1, decay, value_l2 = step_coefficients(decoupled)
    states = [[torch.zeros_like(w) for w in ws] for _ in range(2)]
    counters = [torch.zeros(()) for _ in ws]
    values = []
    for k in range(STEPS):
        grads = task_grads(ws)
        if kind == "adam":
            value = ops.adam_step_(ws, grads, *states, [], counters, [LR], [BETAS[0]], [BETAS[1]], [EPS], l2, l1, decay,
                                   value_l2, False, None, None, None, anchors, fisher, SP, decoupled)
        else:
            value = ops.sgd_step_(ws, grads, states[0], [LR], [MOMENTUM], [0.0], [int(k == 0)], l2, l1, decay,
                                  value_l2, False, False, None, None, None, anchors, fisher, SP, decoupled)
        values.append(value)
    return ws, values


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
@pytest.mark.parametrize("dtype, anchor_dtype, ewc", [(torch.float64, torch.float64, False),
                                                      (torch.float64, torch.bfloat16, True),
                                                      (torch.float32, torch.float32, True)],
                         ids=["float64-l2-sp", "float64-ewc-bf16", "float32-ewc"])
def test_steps_match_torch_optim_on_the_anchored_loss(ops, kind, decoupled, dtype, anchor_dtype, ewc):
    params, anchors, fisher = problem(dtype=dtype, anchor_dtype=anchor_dtype, ewc=ewc)
    want, want_values = torch_run(kind, decoupled, params, anchors, fisher)
    got, got_values = l2fast_run(ops, kind, decoupled, params, anchors, fisher)
    assert_near(got, want, rel=STEP_REL[dtype])
    assert_near(torch.stack(got_values), torch.stack(want_values), rel=STEP_REL[dtype])
    assert not any(torch.equal(w, p) for w, p in zip(got, params) if w.numel())  # every tensor moved


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_skipped_step_writes_nothing_and_returns_the_value(ops, kind):
    params, anchors, fisher = problem()
    ws = [w.clone() for w in params]
    value, _ = oracle(params, anchors, fisher)
    grads, states, counters = task_grads(ws), [torch.zeros_like(w) for w in ws], [torch.zeros(()) for _ in ws]
    found_inf = torch.ones(())
    if kind == "adam":
        got = ops.adam_step_(ws, grads, states, [s.clone() for s in states], [], counters, [LR], [0.9], [0.99], [EPS],
                             L2, L1, [0.0], L2, False, None, found_inf, None, anchors, fisher, SP, True)
    else:
        got = ops.sgd_step_(ws, grads, states, [LR], [MOMENTUM], [0.0], [1], L2, L1, [0.0], L2, False, False, None,
                            found_inf, None, anchors, fisher, SP, False)
    assert_near(got, value)
    assert all(torch.equal(w, p) for w, p in zip(ws, params))
    assert all(not s.any() for s in states + counters)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
def test_non_finite_weights_come_out_as_the_references(kind, decoupled):
    """Infinite and NaN weights of an anchored tensor: the weights after the step and the value are the
    reference's, NaN for NaN. (Their moments may be NaN on the CPU where the reference's are not: its
    anchored loop multiplies a zero coefficient by the weight rather than branching, docs/anchored.md.)"""
    reason = native_without_anchors()
    if reason is not None:
        pytest.skip(reason)
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0] * 10)

    def run(impl):
        ws = [special.clone(), torch.linspace(-2, 2, 40)]
        grads = [torch.full((40,), 0.5), torch.linspace(1, -1, 40)]
        anchors = [torch.zeros(40), torch.ones(40)]
        fisher = [torch.tensor([0.0, 1.0, 0.5, 2.0] * 10), torch.full((40,), 0.25)]
        states = [[torch.zeros(40) for _ in ws] for _ in range(2)]
        l2, l1, decay, value_l2 = [0.0, 0.1], [0.0, 0.01], [0.0], [0.0, 0.1]
        if kind == "adam":
            value = impl.adam_step_(ws, grads, *states, [], [torch.zeros(()) for _ in ws], [LR], [0.9], [0.99], [EPS],
                                    l2, l1, decay, value_l2, False, None, None, None, anchors, fisher, [0.5],
                                    decoupled)
        else:
            value = impl.sgd_step_(ws, grads, states[0], [LR], [MOMENTUM], [0.0], [1], l2, l1, decay, value_l2, False,
                                   False, None, None, None, anchors, fisher, [0.5], decoupled)
        return [*ws, value]

    for got, want in zip(run(torch.ops.l2fast), run(reference)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# --- the functional API ---

@pytest.fixture
def functional(ops, monkeypatch):
    """l2fast's functions running on the implementation under test."""
    monkeypatch.setattr(_ops, "impl", ops)
    return l2fast


def test_functional_keywords(functional):
    params, anchors, fisher = problem()
    value, grads = oracle(params, anchors, fisher)
    leaves = [w.clone().requires_grad_() for w in params]
    got = functional.penalty(leaves, L2, L1, anchors=anchors, fisher=fisher, l2_sp=SP)
    got.backward()
    assert_near(got, value)
    assert_near([w.grad for w in leaves], grads)
    for w in leaves:
        w.grad.zero_()
    assert_near(functional.add_penalty_grad_(leaves, l2=L2, l1=L1, anchors=anchors, fisher=fisher, l2_sp=SP), value)
    assert_near([w.grad for w in leaves], grads)
    pull_only, _ = oracle(params, anchors, None, l2=[0.0] * N, l1=[0.0] * N, sp=[0.0, 0.0, 0.0, 0.0, 0.5])
    assert_near(functional.decay_(leaves, 0.0, anchors=anchors, sp_factors=[0.0, 0.0, 0.0, 0.0, 0.1],
                                  l2_sp=[0.0, 0.0, 0.0, 0.0, 0.5]), pull_only)
    want = params[4].double() - 0.1 * (params[4].double() - anchors[4].double())
    assert_near(leaves[4], want)


def test_functional_calls_without_anchors_are_the_old_op_calls(monkeypatch):
    """Nothing anchored: the op gets its arguments from before anchors, and no more."""
    calls = []

    class Recording:
        def __getattr__(self, name):
            def call(*args):
                calls.append((name, len(args)))
                return getattr(reference, name)(*args)
            return call

    monkeypatch.setattr(_ops, "impl", Recording())
    params, anchors, _ = problem()
    l2fast.penalty(params, l2=0.1, anchors=None, l2_sp=0.0)
    l2fast.add_penalty_grad_(params, [torch.zeros_like(w) for w in params], l2=0.1, anchors=[])
    l2fast.decay_(params, 0.1)
    l2fast.penalty(params, l2=0.1, anchors=anchors, l2_sp=[1.0, 1.0, 0.0, 1.0, 1.0])
    l2fast.decay_([w.clone() for w in params], 0.1, anchors=anchors, sp_factors=0.0)
    assert calls == [("penalty", 3), ("add_penalty_grad_", 4), ("decay_", 3), ("penalty", 6), ("decay_", 7)]


# --- refusals: every check of the anchored arguments, in the order the ops run them ---

FISHER_NEEDS_ANCHORS = "l2fast: fisher needs anchors (the importance of each weight's pull toward its anchor)"
NOT_SPARSE = "l2fast: {}[{}] has layout torch.sparse_coo; only dense (strided) tensors are supported, not sparse ones"
ON_ANOTHER_DEVICE = "l2fast: {}[0] is on meta but params[0] is on cpu"
ANCHOR_DTYPE = ("l2fast: anchors[{}] has dtype torch.{} but params[{}] has dtype torch.float32; "
                "an anchor is stored in its parameter's dtype or in bfloat16")
OTHER_STRIDES = ("l2fast: {}[1] has strides [1, 2] but params[1] has strides [3, 1]; "
                 "they must share one memory layout")
NO_ANCHORS = "l2fast: {} is nonzero but no anchors were given; pass anchors (the weights to pull toward)"
ANCHOR_IS_PARAM = ("l2fast: anchors[{0}] shares memory with params[{0}]; the pull toward it would always be zero "
                   "(anchor a copy: p.detach().clone())")
OVERLAP = "l2fast: {} overlaps {} in memory; the op would read values while it overwrites them"


def refusals():
    """{case: (op, args, message)} over the params [w, v] (float32: 6 and 2x3 elements)."""
    w, v = torch.randn(6), torch.randn(2, 3)
    ps, anchors, fisher = [w, v], [torch.randn(6), torch.randn(2, 3)], [torch.rand(6), torch.rand(2, 3)]
    grads = [torch.randn(6), torch.randn(2, 3)]
    base = torch.randn(9)
    shared = [base[:6], v]  # params[0] is base[:6]

    def penalty(anchors=anchors, fisher=None, l2_sp=(0.5,), params=ps):
        return "penalty", (params, [0.1], [0.0], anchors, fisher, list(l2_sp))

    def replaced(tensors, i, t):
        return [t if k == i else x for k, x in enumerate(tensors)]

    states = [[torch.zeros(6), torch.zeros(2, 3)] for _ in range(3)]
    adam = (ps, grads, states[0], states[1], [], [torch.zeros(()), torch.zeros(())], [LR], [0.9], [0.99], [EPS],
            [0.0], [0.0], [0.0], [0.0], False, None, None, None)
    sgd = (ps, grads, states[2], [LR], [0.9], [0.0], [0], [0.0], [0.0], [0.0], [0.0], False, False, None, None, None)
    return {
        "fisher-without-anchors": (*penalty(anchors=None, fisher=fisher), FISHER_NEEDS_ANCHORS),
        "fisher-with-empty-anchors": ("add_penalty_grad_", (ps, grads, [0.0], [0.0], [], fisher, [0.0]),
                                      FISHER_NEEDS_ANCHORS),
        "anchors-integer": (*penalty(anchors=replaced(anchors, 1, torch.zeros(2, 3, dtype=torch.int64))),
                            "l2fast: anchors[1] has dtype torch.int64; supported dtypes are float32, float64, float16 "
                            "and bfloat16"),
        "anchors-not-dense": (*penalty(anchors=replaced(anchors, 0, torch.randn(12)[::2])),
                              "l2fast: anchors[0] with shape [6] and strides [2] is not dense in memory; "
                              "pass .contiguous() tensors"),
        "anchors-sparse": (*penalty(anchors=replaced(anchors, 0, torch.randn(6).to_sparse())),
                           NOT_SPARSE.format("anchors", 0)),
        "anchors-on-two-devices": (*penalty(anchors=replaced(anchors, 1, anchors[1].to("meta"))),
                                   "l2fast: anchors[1] is on meta but anchors[0] is on cpu; all tensors must be on "
                                   "one device"),
        "anchors-count": (*penalty(anchors=anchors[:1]), "l2fast: got 2 params but 1 anchors"),
        "anchors-device": (*penalty(anchors=[a.to("meta") for a in anchors]), ON_ANOTHER_DEVICE.format("anchors")),
        "anchors-float16": (*penalty(anchors=replaced(anchors, 1, torch.randn(2, 3, dtype=torch.float16))),
                            ANCHOR_DTYPE.format(1, "float16", 1)),
        "anchors-float64": (*penalty(anchors=replaced(anchors, 0, torch.randn(6, dtype=torch.float64))),
                            ANCHOR_DTYPE.format(0, "float64", 0)),
        "anchors-shape": (*penalty(anchors=replaced(anchors, 1, torch.randn(3, 2))),
                          "l2fast: anchors[1] has shape [3, 2] but params[1] has shape [2, 3]"),
        "anchors-strides": (*penalty(anchors=replaced(anchors, 1, torch.randn(3, 2).t())),
                            OTHER_STRIDES.format("anchors")),
        "fisher-sparse": (*penalty(fisher=replaced(fisher, 1, torch.rand(2, 3).to_sparse())),
                          NOT_SPARSE.format("fisher", 1)),
        "fisher-count": (*penalty(fisher=fisher[1:]), "l2fast: got 2 params but 1 fisher"),
        "fisher-device": (*penalty(fisher=[f.to("meta") for f in fisher]), ON_ANOTHER_DEVICE.format("fisher")),
        "fisher-dtype": (*penalty(anchors=replaced(anchors, 0, torch.randn(6, dtype=torch.bfloat16)), fisher=fisher),
                         "l2fast: fisher[0] has dtype torch.float32 but anchors[0] has dtype torch.bfloat16; "
                         "fisher is stored in its anchor's dtype"),
        "fisher-shape": (*penalty(fisher=replaced(fisher, 0, torch.rand(2, 3))),
                         "l2fast: fisher[0] has shape [2, 3] but params[0] has shape [6]"),
        "fisher-strides": (*penalty(fisher=replaced(fisher, 1, torch.rand(3, 2).t())), OTHER_STRIDES.format("fisher")),
        "l2-sp-negative": (*penalty(l2_sp=(0.5, -0.5)),
                           "l2fast: l2_sp[1] = -0.5 is invalid; coefficients must be finite and >= 0"),
        "l2-sp-count": (*penalty(l2_sp=(0.5, 0.5, 0.5)),
                        "l2fast: l2_sp has 3 values for 2 tensors; give one value, or one per tensor"),
        "sp-factors-before-l2-sp": ("decay_", (ps, [0.1], [0.0], anchors, None, [float("nan")], [-1.0]),
                                    "l2fast: sp_factors[0] = nan is invalid; coefficients must be finite and >= 0"),
        "l2-sp-without-anchors": (*penalty(anchors=None), NO_ANCHORS.format("l2_sp")),
        "l2-sp-with-empty-anchors": ("penalty_grad", (ps, torch.ones(()), [0.0], [0.0], [], None, [0.0, 0.5]),
                                     NO_ANCHORS.format("l2_sp")),
        "sp-factors-without-anchors": ("decay_", (ps, [0.1], [0.0], None, None, [0.01], [0.0]),
                                       NO_ANCHORS.format("sp_factors")),
        "step-l2-sp-without-anchors": ("adam_step_", (*adam, None, None, [0.5], False), NO_ANCHORS.format("l2_sp")),
        "anchor-is-its-param": (*penalty(anchors=replaced(anchors, 1, v), l2_sp=(0.0,)), ANCHOR_IS_PARAM.format(1)),
        "anchor-overlaps-its-param": (*penalty(params=shared, anchors=[base[3:], anchors[1]]), ANCHOR_IS_PARAM.format(0)),
        "fisher-is-its-param": (*penalty(fisher=replaced(fisher, 0, w)),
                                "l2fast: fisher[0] shares memory with params[0]; pass a tensor of its own"),
        "anchor-is-a-grad": ("add_penalty_grad_", (ps, grads, [0.0], [0.0], replaced(anchors, 0, grads[0]), None, [0.5]),
                             OVERLAP.format("grads[0]", "anchors[0]")),
        "anchor-is-another-param": ("decay_", (shared, [0.1], [0.0], [base[:6].clone(), base[3:9].view(2, 3)], None,
                                               [0.1], [0.0]),
                                    OVERLAP.format("params[0]", "anchors[1]")),
        "fisher-in-a-state": ("adam_step_", (*adam, anchors, replaced(fisher, 0, states[1][1].view(6)), [0.5], False),
                              OVERLAP.format("exp_avg_sqs[1]", "fisher[0]")),
        "anchor-in-a-buffer": ("sgd_step_", (*sgd, replaced(anchors, 0, states[2][1].view(6)), None, [0.5], True),
                               OVERLAP.format("momentum_buffers[1]", "anchors[0]")),
    }


@pytest.mark.parametrize("case", list(refusals()))
def test_refusals(ops, case):
    name, args, message = refusals()[case]
    with pytest.raises(RuntimeError, match=re.escape(message)):
        getattr(ops, name)(*args)


@pytest.mark.parametrize("name", ["penalty", "penalty_grad"])
def test_an_anchor_that_requires_grad_is_refused_under_autograd(ops, name):
    params, anchors, fisher = problem()
    anchors[1] = anchors[1].clone().requires_grad_()
    head = (params,) if name == "penalty" else (params, torch.ones(()))
    with pytest.raises(RuntimeError, match=re.escape(
            "l2fast: anchors require grad, but the penalty has no gradient with respect to them; "
            "pass constants (tensor.detach())")):
        getattr(ops, name)([w.clone().requires_grad_() for w in head[0]], *head[1:], L2, L1, anchors, fisher, SP)
    with torch.no_grad():
        getattr(ops, name)(*head, L2, L1, anchors, fisher, SP)


@pytest.mark.skipif(native_without_anchors() is not None, reason="needs the native library with anchors")
@pytest.mark.parametrize("anchor_dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_anchored_op(anchor_dtype):
    """torch.library.opcheck of every op that takes anchors: schema, fake (meta) kernel, autograd
    registration and faithful dispatch with anchors and fisher given."""
    ops = torch.ops.l2fast
    params, anchors, fisher = problem(anchor_dtype=anchor_dtype)
    grads = [torch.randn_like(p) for p in params]
    states = [[torch.zeros_like(p) for p in params] for _ in range(3)]
    steps = [torch.tensor(0.0) for _ in params]
    scale = torch.tensor(2.0)
    pulled = dict(anchors=anchors, fisher=fisher, l2_sp=SP)
    cases = [
        (ops.penalty.default, ([p.clone().requires_grad_() for p in params], L2, L1), pulled),
        (ops.penalty_grad.default, (params, scale, L2, L1), pulled),
        (ops.add_penalty_grad_.default, (params, grads, L2, L1), pulled),
        (ops.decay_.default, (params, [0.01], L2), dict(anchors=anchors, fisher=fisher, sp_factors=[0.02], l2_sp=SP)),
        (ops.adam_step_.default, (params, grads, *states, steps, [1e-2], [0.9], [0.99], [1e-8], L2, L1, [0.0], L2,
                                  False, scale, torch.zeros(()), None), dict(pulled, decoupled_sp=False)),
        (ops.sgd_step_.default, (params, grads, states[0], [1e-2], [0.9], [0.1], [1], L2, L1, [0.0], L2, True, False,
                                 None, None, scale), dict(pulled, decoupled_sp=True)),
    ]
    for op, args, kwargs in cases:
        torch.library.opcheck(op, args, kwargs)
