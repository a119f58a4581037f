"""Penalized's anchored penalty (L2-SP, EWC) against independent references: torch's own optimizers on
the hand-written loss ``task + l2_sp/2 * sum(F * (w - w0)**2)`` (coupled), or with the pull applied by
hand before torch's step (decoupled); its value against float64 by hand; state dicts; the refusals."""
import copy
import inspect
import io
import os
import re

import pytest
import torch
from torch import nn

import l2fast
from conftest import run_on_gloo

STEPS = 60
TOL = 1e-6  # max abs parameter difference after STEPS float32 steps
SP = 0.3
LAM = 0.05
LR = {"adam": 1e-2, "sgd": 0.05, "rmsprop": 1e-3}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


_g = torch.Generator().manual_seed(1)
X, Y = torch.randn(32, 6, generator=_g), torch.randn(32, 3, generator=_g)


def task_loss(model):
    return (model(X) - Y).pow(2).mean()


def like(model, seed, low, high):
    """{name: tensor} shaped like the model's parameters, uniform in [low, high)."""
    g = torch.Generator().manual_seed(seed)
    return {n: low + (high - low) * torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}


def pretrained(model):
    """Anchors away from the initial weights, so the pull acts from the first step."""
    return {n: p.detach() + w for (n, p), w in zip(model.named_parameters(), like(model, 2, -0.5, 0.5).values())}


def importances(model):
    return like(model, 3, 0.2, 2.0)


def inner(kind, params, **options):
    build = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}[kind]
    if kind == "sgd":
        options.setdefault("momentum", 0.9)
    return build(params, lr=LR[kind], **options)


def pull_value(model, w0, fisher, sp=SP, names=None):
    """sp/2 * sum F (w - w0)^2 over the named parameters (all by default), differentiable in w."""
    total = 0.0
    for n, p in model.named_parameters():
        if names is None or n in names:
            f = 1.0 if fisher is None else fisher[n]
            total = total + sp / 2 * (f * (p - w0[n]) ** 2).sum()
    return total


def train(model, optimizer, steps=STEPS, extra_loss=None, before_step=None):
    for k in range(steps):
        optimizer.zero_grad()
        loss = task_loss(model)
        if extra_loss is not None:
            loss = loss + extra_loss(model, k)
        loss.backward()
        if before_step is not None:
            before_step(model, k)
        optimizer.step()
    return model


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def assert_same_training(got, want, without_pull, tol=TOL):
    diff = max_diff(got, want)
    assert diff <= tol, f"max abs parameter difference {diff:.3g} > {tol}"
    # The pull must matter: equal results of runs it did not change prove nothing.
    assert max_diff(got, without_pull) > 1e-3


@pytest.fixture(scope="module")
def unpulled():
    """The runs without any pull, per (inner kind, maximize)."""
    cache = {}

    def get(kind, maximize=False):
        if (kind, maximize) not in cache:
            model = make_model()
            sign = -1.0 if maximize else 1.0
            cache[kind, maximize] = train(model, inner(kind, model.parameters(), maximize=maximize),
                                          extra_loss=lambda m, k: (sign - 1.0) * task_loss(m))
        return cache[kind, maximize]

    return get


# ---- training against torch ----------------------------------------------------------------------

@pytest.mark.parametrize("with_fisher", [False, True])
@pytest.mark.parametrize("kind, maximize, fused", [("adam", False, True), ("adam", False, False), ("sgd", False, True),
                                                   ("sgd", False, False), ("adam", True, True), ("adam", True, False),
                                                   ("rmsprop", False, False)])
def test_coupled_pull_equals_torch_on_the_hand_written_loss(kind, maximize, fused, with_fisher, unpulled):
    """Beside l2, which torch's Adam and SGD would otherwise take as their own weight_decay (the
    two-pass path must not: it cannot carry the pull); RMSprop steps on the two-pass path's copies of
    the gradients. Maximize still pulls toward the anchors."""
    sign = -1.0 if maximize else 1.0
    model = make_model()
    w0, fisher = pretrained(model), importances(model) if with_fisher else None
    got = train(model, l2fast.Penalized(inner(kind, model.named_parameters(), maximize=maximize), l2=LAM, l2_sp=SP,
                                        anchor=w0, fisher=fisher, fused=fused),
                extra_loss=lambda m, k: (sign - 1.0) * task_loss(m))

    def hand_written(m, k):  # maximize: torch ascends -task - penalty
        l2 = LAM / 2 * sum(p.pow(2).sum() for p in m.parameters())
        return (sign - 1.0) * task_loss(m) + sign * (l2 + pull_value(m, w0, fisher))

    reference = make_model()
    want = train(reference, inner(kind, reference.parameters(), maximize=maximize), extra_loss=hand_written)
    assert_same_training(got, want, unpulled(kind, maximize))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("with_fisher", [False, True])
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_decoupled_pull_equals_the_hand_applied_pull_before_torchs_step(kind, with_fisher, fused, unpulled):
    """w = w * (1 - lr*l2) - lr*l2_sp * F * (w - w0), both from the old weights, then the plain update:
    for Adam, that is AdamW's order."""
    model = make_model()
    w0, fisher = pretrained(model), importances(model) if with_fisher else None
    penalized = l2fast.Penalized(inner(kind, model.named_parameters()), l2=LAM, l2_sp=SP, decoupled=True,
                                 anchor=w0, fisher=fisher, fused=fused)
    got = train(model, penalized)

    def pull_by_hand(m, k):
        lr = LR[kind]
        with torch.no_grad():
            for n, p in m.named_parameters():
                pull = (p - w0[n]) if fisher is None else fisher[n] * (p - w0[n])
                p.mul_(1.0 - lr * LAM).add_(pull, alpha=-lr * SP)

    reference = make_model()
    torch_step = torch.optim.AdamW(reference.parameters(), lr=LR[kind], weight_decay=0.0) if kind == "adam" \
        else inner(kind, reference.parameters())
    want = train(reference, torch_step, before_step=pull_by_hand)
    assert_same_training(got, want, unpulled(kind))


@pytest.mark.parametrize("fused", [True, False])
def test_bfloat16_anchors_pull_toward_the_rounded_weights(fused, unpulled):
    model = make_model()
    w0, fisher = pretrained(model), importances(model)
    optimizer = l2fast.Penalized(inner("adam", model.named_parameters()), l2_sp=SP, anchor=w0, fisher=fisher,
                                 anchor_dtype=torch.bfloat16, fused=fused)
    saved = optimizer.state_dict()["state"]
    assert {saved[i][key].dtype for i in range(4) for key in ("l2fast_anchor", "l2fast_fisher")} == {torch.bfloat16}
    got = train(model, optimizer)
    rounded = {n: t.bfloat16().float() for n, t in w0.items()}
    rounded_fisher = {n: t.bfloat16().float() for n, t in fisher.items()}
    reference = make_model()
    want = train(reference, inner("adam", reference.parameters()),
                 extra_loss=lambda m, k: pull_value(m, rounded, rounded_fisher))
    assert_same_training(got, want, unpulled("adam"))


def test_ewc_with_the_fisher_of_l2fast_diagonal_fisher(unpulled):
    """EWC as it is used: the current weights as anchors, l2fast.diagonal_fisher's {name: F} as importances."""
    model = make_model()
    batches = [(X[i:i + 8], Y[i:i + 8]) for i in range(0, 32, 8)]
    fisher = l2fast.diagonal_fisher(model, batches, lambda m, b: (m(b[0]) - b[1]).pow(2).mean())
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    shift = like(model, 4, 0.0, 1.0)  # a second task: the targets change

    def second_task(m, k):
        return -task_loss(m) + sum((p - shift[n]).pow(2).mean() for n, p in m.named_parameters())

    got = train(model, l2fast.Penalized(inner("adam", model.named_parameters()), l2_sp=50.0, anchor="current",
                                        fisher=fisher), extra_loss=second_task)
    reference = make_model()
    want = train(reference, inner("adam", reference.parameters()),
                 extra_loss=lambda m, k: second_task(m, k) + pull_value(m, w0, fisher, sp=50.0))
    free = make_model()
    assert_same_training(got, want, train(free, inner("adam", free.parameters()), extra_loss=second_task))


class Spy:
    """The ops l2fast calls, recording (op, tensors, anchored tensors) of every call (the arguments
    bound by the reference ops' signatures, which are the native schemas')."""

    def __init__(self, impl):
        self.impl, self.calls = impl, []

    def __getattr__(self, name):
        op = getattr(self.impl, name)

        def recorded(*args, **kwargs):
            bound = inspect.signature(getattr(l2fast.reference, name)).bind(*args, **kwargs).arguments
            self.calls.append((name, len(args[0]), len(bound.get("anchors") or [])))
            return op(*args, **kwargs)

        return recorded


@pytest.mark.parametrize("fused", [True, False])
def test_mixed_groups_pull_the_anchored_parameters_only(fused, monkeypatch):
    """A pretrained body with anchors by name and a new head without (its own group, 'l2_sp': 0.0, an L2
    penalty instead); the body's weight in a group whose own "l2_sp" wins over the argument, its bias
    in one that takes the argument: torch's Adam with the head's weight_decay and the body's pull in
    the loss. The head costs no anchored call."""
    model = make_model()
    (weight, bias, *head), params = [n for n, _ in model.named_parameters()], dict(model.named_parameters())
    w0 = {n: t for n, t in pretrained(model).items() if n in (weight, bias)}
    groups = [{"params": [params[weight]], "param_names": [weight], "l2_sp": 2 * SP},
              {"params": [params[bias]], "param_names": [bias]},
              {"params": [params[n] for n in head], "param_names": head, "l2_sp": 0.0, "l2": LAM}]
    optimizer = l2fast.Penalized(torch.optim.Adam(groups, lr=LR["adam"]), l2_sp=SP, anchor=w0, fused=fused)
    spy = Spy(l2fast._ops.impl)
    monkeypatch.setattr(l2fast._ops, "impl", spy)
    got = train(model, optimizer)
    # Per step, one anchored call of the body's two tensors (its groups' coefficients per tensor) and
    # one plain call of the head's.
    assert {(n, anchored) for _, n, anchored in spy.calls} == {(2, 2), (2, 0)}
    assert [("l2fast_anchor" in s) for s in optimizer.state_dict()["state"].values()] == [True, True, False, False]

    reference = make_model()
    rparams = dict(reference.named_parameters())
    want = train(reference, torch.optim.Adam([{"params": [rparams[weight], rparams[bias]]},
                                              {"params": [rparams[n] for n in head], "weight_decay": LAM}],
                                             lr=LR["adam"]),
                 extra_loss=lambda m, k: pull_value(m, w0, None, sp=2 * SP, names={weight})
                 + pull_value(m, w0, None, names={bias}))
    assert max_diff(got, want) <= TOL


def test_parameters_keyed_anchors_leave_the_others_unpulled():
    model = make_model()
    w0 = pretrained(model)
    first = model[0].weight
    got = train(model, l2fast.Penalized(inner("sgd", model.parameters()), l2_sp=SP, anchor={first: w0["0.weight"]}))
    reference = make_model()
    want = train(reference, inner("sgd", reference.parameters()),
                 extra_loss=lambda m, k: pull_value(m, w0, None, names={"0.weight"}))
    assert max_diff(got, want) <= TOL


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_schedule_multiplies_l2_sp(fused, decoupled):
    def multiplier(t):
        return 1.0 / (1.0 + 0.1 * t)

    model = make_model()
    w0 = pretrained(model)
    optimizer = l2fast.Penalized(inner("sgd", model.named_parameters()), l2_sp=SP, anchor=w0, decoupled=decoupled,
                                 schedule=multiplier, fused=fused)
    got = train(model, optimizer, steps=20)
    reference = make_model()
    if decoupled:
        def pull_by_hand(m, k):
            with torch.no_grad():
                for n, p in m.named_parameters():
                    p.sub_(p - w0[n], alpha=LR["sgd"] * SP * multiplier(k))

        want = train(reference, inner("sgd", reference.parameters()), steps=20, before_step=pull_by_hand)
    else:
        want = train(reference, inner("sgd", reference.parameters()), steps=20,
                     extra_loss=lambda m, k: pull_value(m, w0, None, sp=SP * multiplier(k)))
    assert max_diff(got, want) <= TOL


def test_closure_of_a_two_pass_optimizer_sees_the_pull():
    model = make_model()
    w0 = pretrained(model)
    optimizer = l2fast.Penalized(torch.optim.LBFGS(model.named_parameters(), lr=0.5, max_iter=5), l2_sp=SP, anchor=w0)
    reference = make_model()
    lbfgs = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=5)
    for _ in range(3):
        def closure():
            optimizer.zero_grad()
            loss = task_loss(model)
            loss.backward()
            return loss

        def reference_closure():
            lbfgs.zero_grad()
            loss = task_loss(reference) + pull_value(reference, w0, None)
            loss.backward()
            return loss

        got_loss, want_loss = optimizer.step(closure), lbfgs.step(reference_closure)
        assert got_loss.item() == pytest.approx(want_loss.item(), rel=1e-5)
    assert max_diff(model, reference) <= 1e-5


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_last_penalty_includes_the_pull(fused, decoupled):
    """The value of the weights each step started from, against float64 by hand (bfloat16 anchors and
    importances, and a head without anchors but with l2)."""
    model = make_model()
    w0, fisher = pretrained(model), importances(model)
    del w0["2.bias"], fisher["2.bias"]
    params = dict(model.named_parameters())
    anchor = {params[n]: t for n, t in w0.items()}
    fisher_by_param = {params[n]: t for n, t in fisher.items()}
    optimizer = l2fast.Penalized(inner("adam", model.parameters()), l2=LAM, l2_sp=SP, anchor=anchor,
                                 fisher=fisher_by_param, anchor_dtype=torch.bfloat16, decoupled=decoupled, fused=fused)

    def by_hand():
        total = 0.0
        for n, p in model.named_parameters():
            w = p.detach().double()
            total += LAM / 2 * w.pow(2).sum().item()
            if n in w0:
                a, f = w0[n].bfloat16().double(), fisher[n].bfloat16().double()
                total += SP / 2 * (f * (w - a) ** 2).sum().item()
        return total

    for _ in range(5):
        optimizer.zero_grad()
        task_loss(model).backward()
        want = by_hand()
        optimizer.step()
        assert optimizer.last_penalty.item() == pytest.approx(want, rel=1e-6)


# ---- state dicts ---------------------------------------------------------------------------------

def checkpoint_roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_state_dict_round_trip_resumes_bit_for_bit(fused, decoupled):
    """Saved after 5 steps, loaded into a Penalized built without anchors, continued: the weights of an
    uninterrupted run, bit for bit. bfloat16 anchors stay bfloat16; the head has none."""
    def build(model, anchor, fisher):
        return l2fast.Penalized(inner("adam", model.named_parameters()), l2=LAM, l2_sp=SP, anchor=anchor,
                                fisher=fisher, anchor_dtype=torch.bfloat16, decoupled=decoupled, fused=fused)

    model = make_model()
    body = list(model[0].parameters())  # keyed by parameter: the head, left out, is not pulled
    w0 = dict(zip(body, list(pretrained(model).values())[:2]))
    optimizer = build(model, w0, dict(zip(body, list(importances(model).values())[:2])))
    train(model, optimizer, steps=5)
    saved = checkpoint_roundtrip({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    assert {i for i, s in saved["optimizer"]["state"].items() if "l2fast_anchor" in s} == {0, 1}
    train(model, optimizer, steps=10)

    resumed = make_model(seed=5)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = build(resumed, None, None)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    assert all(k in ("step", "exp_avg", "exp_avg_sq") for s in resumed_optimizer.state.values() for k in s)
    state = resumed_optimizer.state_dict()["state"]
    assert {state[i][key].dtype for i in (0, 1) for key in ("l2fast_anchor", "l2fast_fisher")} == {torch.bfloat16}
    train(resumed, resumed_optimizer, steps=10)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


def test_state_dict_before_the_first_step_and_without_anchors():
    """Anchors are saved before the inner optimizer has any state; a state dict without anchors (a plain
    torch optimizer's, or an unanchored Penalized's) keeps the current ones."""
    model = make_model()
    optimizer = l2fast.Penalized(inner("sgd", model.parameters()), l2_sp=SP, anchor="current")
    saved = optimizer.state_dict()
    assert [sorted(s) for s in saved["state"].values()] == [["l2fast_anchor"]] * 4
    assert not optimizer.state  # the inner optimizer's live state is not written into
    train(model, optimizer, steps=2)
    anchors = [s["l2fast_anchor"].clone() for s in optimizer.state_dict()["state"].values()]
    optimizer.load_state_dict(inner("sgd", model.parameters()).state_dict())
    optimizer.load_state_dict(l2fast.Penalized(inner("sgd", model.parameters())).state_dict())
    assert all(torch.equal(a, s["l2fast_anchor"]) for a, s in zip(anchors, optimizer.state_dict()["state"].values()))
    optimizer.load_state_dict(saved)  # back to the anchors of the start, and the inner state of then
    assert not optimizer.state
    assert all(torch.equal(p, s["l2fast_anchor"]) for p, s in zip(make_model().parameters(),
                                                                   optimizer.state_dict()["state"].values()))


def test_load_state_dict_refusals_change_nothing():
    model = make_model()
    optimizer = l2fast.Penalized(inner("adam", model.parameters()), l2_sp=SP,
                                 anchor={p: p.detach() + 1.0 for p in model.parameters()})
    train(model, optimizer, steps=3)
    before = copy.deepcopy(optimizer.state_dict())
    wrong_size = copy.deepcopy(before)
    wrong_size["state"][1]["l2fast_anchor"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"the saved anchor of state\[1\] has shape \[3\] but the parameter has shape \[16\]"):
        optimizer.load_state_dict(wrong_size)
    wrong_dtype = copy.deepcopy(before)
    wrong_dtype["state"][0]["l2fast_anchor"] = wrong_dtype["state"][0]["l2fast_anchor"].half()
    with pytest.raises(ValueError, match=r"state\[0\] would be stored as torch.float16, but the parameter is torch.float32"):
        optimizer.load_state_dict(wrong_dtype)
    negative = copy.deepcopy(before)
    negative["state"][2]["l2fast_fisher"] = -torch.ones(3, 16)
    with pytest.raises(ValueError, match=r"the saved fisher of state\[2\] has values in \[-1.0, -1.0\]"):
        optimizer.load_state_dict(negative)
    stray = copy.deepcopy(before)
    stray["state"][3] = {**stray["state"][3], "l2fast_fisher": torch.ones(3)}
    del stray["state"][3]["l2fast_anchor"]
    with pytest.raises(ValueError, match=r"state\[3\] has 'l2fast_fisher' without 'l2fast_anchor'"):
        optimizer.load_state_dict(stray)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, saved in before["state"].items():
        assert all(torch.equal(saved[k], after["state"][i][k]) for k in saved)


def test_torch_state_dict_refuses_the_pull():
    model = make_model()
    optimizer = l2fast.Penalized(inner("adam", model.parameters()), l2=LAM, l2_sp=SP, anchor="current")
    with pytest.raises(ValueError, match=r"param_groups\[0\] has l2_sp=0.3; torch's optimizers have no pull toward"):
        optimizer.torch_state_dict()
    optimizer.param_groups[0]["l2_sp"] = 0.0
    saved = optimizer.torch_state_dict()
    assert saved["param_groups"][0]["weight_decay"] == LAM and "l2_sp" not in saved["param_groups"][0]
    assert all("l2fast_anchor" not in s for s in saved["state"].values())


def test_deepcopy_keeps_the_anchors_with_the_copied_parameters():
    model = make_model()
    optimizer = l2fast.Penalized(inner("adam", model.parameters()), l2_sp=SP,
                                 anchor={p: p.detach() + 1.0 for p in model.parameters()})
    twin_model, twin = copy.deepcopy((model, optimizer))
    train(model, optimizer, steps=3)
    train(twin_model, twin, steps=3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin_model.parameters()))


# ---- refusals ------------------------------------------------------------------------------------

def named(model=None, **options):
    return inner("sgd", (model or make_model()).named_parameters(), **options)


def plain(model=None):
    return inner("sgd", (model or make_model()).parameters())


def shapes_of(model, fill=1.0, **changes):
    return {**{n: torch.full(p.shape, fill) for n, p in model.named_parameters()}, **changes}


M = make_model()


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: l2fast.Penalized(plain(), l2_sp=-1.0), ValueError, "l2_sp = -1.0 is invalid"),
        (lambda: l2fast.Penalized(torch.optim.SGD([{"params": make_model().parameters(), "l2_sp": float("nan")}], lr=0.1)),
         ValueError, r"param_groups\[0\]\['l2_sp'\] = nan is invalid"),
        (lambda: l2fast.Penalized(torch.optim.SGD([{"params": make_model().parameters(), "l2sp": 0.1}], lr=0.1)),
         ValueError, r"has the key 'l2sp'.*did you mean 'l2_sp'"),
        (lambda: l2fast.Penalized(plain(), fisher={}), ValueError, "fisher needs anchor="),
        (lambda: l2fast.Penalized(plain(), anchor="latest"), ValueError, "anchor='latest' is not a form"),
        (lambda: l2fast.Penalized(plain(), anchor=list(M.parameters())), TypeError, "anchor must be None, 'current'"),
        (lambda: l2fast.Penalized(plain(), anchor="current", fisher="current"), ValueError, "fisher='current' is not a form"),
        (lambda: l2fast.Penalized(plain(), anchor="current", anchor_dtype="bfloat16"), TypeError, "anchor_dtype must be a torch.dtype"),
        (lambda: l2fast.Penalized(plain(M), anchor={next(M.parameters()): torch.ones(16, 6), "x": torch.ones(1)}),
         TypeError, "all be parameters or all be names"),
        (lambda: l2fast.Penalized(plain(), anchor={torch.ones(2): torch.ones(2)}), ValueError,
         r"anchor has 1 key\(s\) that are not parameters of this optimizer \(the first has shape \[2\]\)"),
        (lambda: l2fast.Penalized(plain(M), anchor=shapes_of(M)), ValueError,
         r"anchor is keyed by name, but param_groups\[0\] has no 'param_names'"),
        (lambda: l2fast.Penalized(named(M), anchor=shapes_of(M, **{"module.0.weight": torch.ones(16, 6)})), ValueError,
         r"anchor has entries \['module.0.weight'\] that match no parameter of this optimizer"),
        (lambda: l2fast.Penalized(named(M), l2_sp=0.1, anchor={"0.weight": torch.ones(16, 6)}), ValueError,
         r"param_groups\[0\] has l2_sp=0.1, but anchor has no entry for \['0.bias', '2.weight', '2.bias'\]"),
        (lambda: l2fast.Penalized(named(M), anchor=shapes_of(M, **{"2.weight": torch.ones(4, 16)})), ValueError,
         r"the anchor of param_groups\[0\]\['params'\]\[2\] \('2.weight'\) has shape \[4, 16\] but the parameter has shape \[3, 16\]"),
        (lambda: l2fast.Penalized(named(M), anchor=shapes_of(M, **{"0.bias": torch.ones(16, dtype=torch.long)})), TypeError,
         r"\('0.bias'\) has dtype torch.int64; anchors and fisher are floating-point"),
        (lambda: l2fast.Penalized(named(M), anchor="current", anchor_dtype=torch.float16), ValueError,
         r"would be stored as torch.float16, but the parameter is torch.float32; an anchor is stored in its parameter's dtype or in bfloat16"),
        (lambda: l2fast.Penalized(named(M), anchor=M), ValueError,
         r"the anchor of param_groups\[0\]\['params'\]\[0\] \('0.weight'\) is the parameter itself.*anchor='current'"),
        (lambda: l2fast.Penalized(named(M), anchor=M.state_dict()), ValueError, "is the parameter itself"),
        (lambda: l2fast.Penalized(named(M), anchor={"0.weight": torch.ones(16, 6)}, fisher={"0.bias": torch.ones(16)}),
         ValueError, r"fisher has an entry for param_groups\[0\]\['params'\]\[1\] \('0.bias'\), which has no anchor"),
        (lambda: l2fast.Penalized(named(M), l2_sp=0.1, anchor="current", fisher={"0.weight": torch.ones(16, 6)}), ValueError,
         r"param_groups\[0\] has l2_sp=0.1, but fisher has no entry for \['0.bias', '2.weight', '2.bias'\]"),
        (lambda: l2fast.Penalized(named(M), anchor="current", fisher=shapes_of(M, **{"2.bias": torch.tensor([1.0, -0.5, 1.0])})),
         ValueError, r"the fisher of param_groups\[0\]\['params'\]\[3\] \('2.bias'\) has values in \[-0.5, 1.0\]; importances must be finite and >= 0"),
        (lambda: l2fast.Penalized(named(M), anchor="current", fisher=shapes_of(M, float("nan"))), ValueError,
         r"has values in \[nan, nan\]"),
        (lambda: l2fast.Penalized(named(M), anchor="current", fisher=shapes_of(M, float("inf"))), ValueError,
         r"has values in \[inf, inf\]"),
    ],
    ids=["negative", "nan-group", "misspelt-key", "fisher-without-anchor", "unknown-form", "list", "fisher-current",
         "dtype-string", "mixed-keys", "stray-tensor", "names-without-param-names", "unmatched-name", "missing-name",
         "shape", "integer", "float16", "the-model-itself", "its-state-dict", "fisher-unanchored", "fisher-missing",
         "fisher-negative", "fisher-nan", "fisher-inf"],
)
def test_clear_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_l2_sp_without_anchors_is_refused_at_the_step():
    """Not at construction: a Penalized built without anchors may take them from a state dict."""
    model = make_model()
    optimizer = l2fast.Penalized(plain(model), l2_sp=SP)
    task_loss(model).backward()
    with pytest.raises(ValueError, match=r"param_groups\[0\] has l2_sp=0.3, but no parameter has an anchor"):
        optimizer.step()
    optimizer.param_groups[0]["l2_sp"] = 0.0
    optimizer.step()


def test_an_anchor_given_is_copied():
    model = make_model()
    w0 = {n: t.clone() for n, t in pretrained(model).items()}
    optimizer = l2fast.Penalized(named(model), l2_sp=SP, anchor=w0)
    w0["0.weight"].zero_()
    assert optimizer.state_dict()["state"][0]["l2fast_anchor"].abs().sum() > 0


# ---- FSDP2 -----------------------------------------------------------------------------------------

def fsdp_anchored_run(rank, out_dir):
    """FSDP2 (DTensor shards, two processes, each on half the batch), anchors and F given as whole
    tensors: six steps uninterrupted; and three, a save through torch.distributed.checkpoint, a fresh
    model and optimizer with placeholder anchors (the template the checkpoint loads into), three more."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    def build(placeholders=False):
        model = make_model()
        w0, fisher = pretrained(model), importances(model)
        if placeholders:
            w0, fisher = "current", {n: torch.ones_like(t) for n, t in fisher.items()}
        for module in (model[0], model[2], model):
            fully_shard(module)
        return model, l2fast.Penalized(inner("adam", model.named_parameters()), l2_sp=SP, anchor=w0, fisher=fisher)

    rows = slice(rank * 16, (rank + 1) * 16)

    def steps(model, optimizer, count):
        for _ in range(count):
            optimizer.zero_grad()
            (model(X[rows]) - Y[rows]).pow(2).mean().backward()
            optimizer.step()

    model, optimizer = build()
    anchor = optimizer.state_dict()["state"][0]["l2fast_anchor"]
    steps(model, optimizer, 6)
    uninterrupted = [p.full_tensor().detach().clone() for p in model.parameters()]
    model, optimizer = build()
    steps(model, optimizer, 3)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=os.path.join(out_dir, "dcp"))
    model, optimizer = build(placeholders=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=os.path.join(out_dir, "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    steps(model, optimizer, 3)
    return {"uninterrupted": uninterrupted, "resumed": [p.full_tensor().detach().clone() for p in model.parameters()],
            "anchor": (type(anchor).__name__, str(anchor.placements), tuple(anchor.to_local().shape)),
            "fused": optimizer.fused, "penalty": optimizer.last_penalty.item()}


@pytest.mark.slow
def test_fsdp2_shards_are_pulled_toward_their_shard_of_the_anchors(tmp_path):
    results = run_on_gloo(fsdp_anchored_run, 2, tmp_path, tmp_path)
    model = make_model()
    w0, fisher = pretrained(model), importances(model)
    want = train(model, inner("adam", model.parameters()), steps=6, extra_loss=lambda m, k: pull_value(m, w0, fisher))
    for rank, result in enumerate(results):
        assert result["anchor"] == ("DTensor", "(Shard(dim=0),)", (8, 6)) and result["fused"]
        assert max((p - q).abs().max().item() for p, q in zip(result["uninterrupted"], want.parameters())) <= TOL
        assert all(torch.equal(p, q) for p, q in zip(result["resumed"], result["uninterrupted"]))
    assert results[0]["penalty"] == results[1]["penalty"]


def test_an_anchor_given_in_bfloat16_stays_bfloat16():
    """Without anchor_dtype an anchor keeps bfloat16 (it was made small on purpose), its F follows it, and
    any other dtype is stored in the parameter's."""
    model = make_model()
    params = list(model.parameters())
    optimizer = l2fast.Penalized(torch.optim.Adam(params, lr=LR["adam"]), l2_sp=SP,
                                 anchor={p: p.detach().to(torch.bfloat16) if i == 0 else p.detach().double()
                                         for i, p in enumerate(params)},
                                 fisher={p: torch.ones_like(p) for p in params})
    saved = optimizer.state_dict()["state"]
    assert [saved[i]["l2fast_anchor"].dtype for i in range(len(params))] == [torch.bfloat16] + [torch.float32] * 3
    assert saved[0]["l2fast_fisher"].dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_anchor_is_refused_given_or_loaded(bad):
    """A NaN or infinite anchor would make the weights NaN at the first step: refused at construction and
    on load, with nothing changed."""
    model = make_model()
    params = list(model.parameters())
    poisoned = {p: p.detach().clone() for p in params}
    poisoned[params[2]][0] = bad
    with pytest.raises(ValueError, match=re.escape("param_groups[0]['params'][2] has NaN or infinite values")):
        l2fast.Penalized(torch.optim.Adam(params, lr=LR["adam"]), l2_sp=SP, anchor=poisoned)
    optimizer = l2fast.Penalized(torch.optim.Adam(params, lr=LR["adam"]), l2_sp=SP, anchor="current")
    state = optimizer.state_dict()
    kept = state["state"][2]["l2fast_anchor"].clone()
    state["state"][2]["l2fast_anchor"] = torch.full_like(kept, bad)
    with pytest.raises(ValueError, match=re.escape("the saved anchor of state[2] has NaN or infinite values")):
        optimizer.load_state_dict(state)
    assert torch.equal(optimizer.state_dict()["state"][2]["l2fast_anchor"], kept)
