"""Penalized against torch.optim, step by step: the coefficient conventions, the optimizer protocol
(state dicts, LR schedulers, GradScaler, closures, hooks) and the errors."""
import copy
import io
import math

import pytest
import torch
from torch import nn

import l2fast
from l2fast import schedules

STEPS = 60
TOL = 1e-6  # max abs parameter difference after STEPS float32 steps
LAM = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def make_data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 8, generator=g), torch.randn(64, 4, generator=g)


def task_loss(model, data):
    x, y = data
    return (model(x) - y).pow(2).mean()


def train(make_optimizer, steps=STEPS, extra_loss=None, before_step=None, make_scheduler=None):
    """Full-batch training; returns the model. extra_loss(model) is added to the loss; before_step(model,
    optimizer, k) runs between backward and step (a hand-written penalty, a coefficient change); an LR
    scheduler from make_scheduler(optimizer) steps after every optimizer step."""
    model = make_model()
    data = make_data()
    optimizer = make_optimizer(model)
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    for k in range(steps):
        optimizer.zero_grad()
        loss = task_loss(model, data)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        if before_step is not None:
            before_step(model, optimizer, k)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return model


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def assert_same_training(got, want, tol=TOL):
    diff = max_diff(got, want)
    assert diff <= tol, f"max abs parameter difference {diff:.3g} > {tol}"
    # The models must also have moved: equal results from optimizers that did nothing prove nothing.
    assert max_diff(got, make_model()) > 1e-2


@pytest.mark.parametrize(
    "inner, reference",
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=LAM)),
        (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=LAM)),
        (lambda ps: torch.optim.Adam(ps, lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM)),
        (lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True), lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True, weight_decay=LAM)),
        (lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True), lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True, weight_decay=LAM)),
        (lambda ps: torch.optim.RMSprop(ps, lr=1e-3), lambda ps: torch.optim.RMSprop(ps, lr=1e-3, weight_decay=LAM)),
    ],
    ids=["sgd-momentum", "sgd-nesterov", "adam", "adam-foreach", "adam-fused", "rmsprop"],
)
def test_coupled_l2_equals_torch_weight_decay(inner, reference):
    got = train(lambda m: l2fast.Penalized(inner(m.parameters()), l2=LAM))
    want = train(lambda m: reference(m.parameters()))
    assert_same_training(got, want)


@pytest.mark.parametrize("foreach", [False, True])
def test_decoupled_l2_equals_adamw(foreach):
    got = train(lambda m: l2fast.Penalized(torch.optim.Adam(m.parameters(), lr=1e-2, foreach=foreach), l2=LAM, decoupled=True))
    want = train(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, foreach=foreach, weight_decay=LAM))
    assert_same_training(got, want)


def test_maximize_still_decays_like_torch():
    got = train(lambda m: l2fast.Penalized(torch.optim.SGD(m.parameters(), lr=0.01, maximize=True), l2=LAM), steps=20)
    want = train(lambda m: torch.optim.SGD(m.parameters(), lr=0.01, maximize=True, weight_decay=LAM), steps=20)
    assert_same_training(got, want)


def test_l1_equals_hand_written_sign_penalty():
    l1 = 1e-3

    def add_sign_penalty(model, optimizer, k):
        with torch.no_grad():
            for p in model.parameters():
                p.grad.add_(l1 * torch.sign(p) + LAM * p)

    got = train(lambda m: l2fast.Penalized(torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), l2=LAM, l1=l1))
    want = train(lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), before_step=add_sign_penalty)
    assert_same_training(got, want)


def test_equals_naive_penalty_in_the_loss():
    def naive(model):
        return LAM / 2 * sum(p.pow(2).sum() for p in model.parameters())

    got = train(lambda m: l2fast.Penalized(torch.optim.Adam(m.parameters(), lr=1e-2), l2=LAM))
    want = train(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), extra_loss=naive)
    assert_same_training(got, want)


def split(model):
    """Weights of the first two layers / everything else: two groups with different coefficients."""
    first = [p for n, p in model.named_parameters() if n.startswith(("0.", "2."))]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("0.", "2."))]
    return first, rest


class Both:
    """Two torch optimizers stepped as one: the reference for per-group coefficients."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    def zero_grad(self):
        for o in self.optimizers:
            o.zero_grad()

    def step(self):
        for o in self.optimizers:
            o.step()


def test_per_group_coefficients_equal_separate_optimizers():
    def penalized(m):
        first, rest = split(m)
        groups = [{"params": first, "l2": 0.1}, {"params": rest}]  # the second group takes the default
        return l2fast.Penalized(torch.optim.Adam(groups, lr=1e-2), l2=0.01)

    def separate(m):
        first, rest = split(m)
        return Both(torch.optim.Adam(first, lr=1e-2, weight_decay=0.1), torch.optim.Adam(rest, lr=1e-2, weight_decay=0.01))

    assert_same_training(train(penalized), train(separate))


def test_add_param_group_gets_defaults_and_group_values():
    def penalized(m):
        first, rest = split(m)
        optimizer = l2fast.Penalized(torch.optim.SGD(first, lr=0.05, momentum=0.9), l2=0.02)
        optimizer.add_param_group({"params": rest, "l2": 0.3})
        return optimizer

    def separate(m):
        first, rest = split(m)
        return Both(
            torch.optim.SGD(first, lr=0.05, momentum=0.9, weight_decay=0.02),
            torch.optim.SGD(rest, lr=0.05, momentum=0.9, weight_decay=0.3),
        )

    assert_same_training(train(penalized), train(separate))


def test_last_penalty_is_the_pre_step_value_as_a_device_tensor():
    model = make_model()
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=0.2, l1=0.03)
    assert optimizer.last_penalty is None
    for _ in range(3):
        before = [p.detach().double().clone() for p in model.parameters()]
        optimizer.zero_grad()
        task_loss(model, make_data()).backward()
        optimizer.step()
        want = math.fsum(0.1 * (w**2).sum().item() + 0.03 * w.abs().sum().item() for w in before)
        assert isinstance(optimizer.last_penalty, torch.Tensor) and optimizer.last_penalty.shape == ()
        assert optimizer.last_penalty.item() == pytest.approx(want, rel=1e-6)


def test_decoupled_last_penalty_and_params_without_grad():
    model = make_model()
    frozen = model[4].weight  # never gets a grad: neither decayed nor counted
    frozen_before = frozen.detach().clone()
    optimizer = l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=0.5, decoupled=True)
    live = [p for p in model.parameters() if p is not frozen]
    want = 0.25 * sum(p.detach().double().pow(2).sum().item() for p in live)
    for p in live:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert optimizer.last_penalty.item() == pytest.approx(want, rel=1e-6)
    assert torch.equal(frozen, frozen_before)


def test_zero_coefficients_give_a_zero_penalty_and_no_change():
    model = make_model()
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.0), l2=0.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert optimizer.last_penalty.item() == 0.0
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def checkpoint_roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("decoupled", [False, True])
def test_state_dict_round_trip_gives_the_identical_continuation(decoupled):
    def make_optimizer(model):
        inner = torch.optim.Adam(model.parameters(), lr=1e-2)
        schedule = schedules.Sequential([schedules.Warmup(10), schedules.Cosine(30)], milestones=[10])
        return l2fast.Penalized(inner, l2=0.1, decoupled=decoupled, schedule=schedule)

    model = train(make_optimizer, steps=0)
    optimizer = make_optimizer(model)
    data = make_data()

    def run(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            task_loss(model, data).backward()
            optimizer.step()

    run(model, optimizer, 15)
    saved = checkpoint_roundtrip({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    run(model, optimizer, 20)

    resumed = make_model(seed=5)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = make_optimizer(resumed)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    assert resumed_optimizer.clock == schedules.Clock(step=15)
    run(resumed, resumed_optimizer, 20)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))
    assert resumed_optimizer.coefficients() == optimizer.coefficients()


def test_load_state_dict_checks_the_schedule_and_mode():
    model = make_model()
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=0.1, schedule=schedules.Warmup(10))
    state = optimizer.state_dict()
    other = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=0.1, schedule=schedules.Cosine(10))
    with pytest.raises(ValueError, match="Warmup schedule into a Cosine"):
        other.load_state_dict(state)
    decoupled = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=0.1, decoupled=True, schedule=schedules.Warmup(10))
    with pytest.raises(ValueError, match="saved with decoupled=False"):
        decoupled.load_state_dict(state)


def test_loads_a_plain_optimizer_checkpoint():
    model = make_model()
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    task_loss(model, make_data()).backward()
    plain.step()
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), l2=0.2)
    optimizer.load_state_dict(plain.state_dict())
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[0]["l2"] == 0.2
    assert len(optimizer.state) == len(list(model.parameters()))


def test_lr_scheduler_drives_decoupled_decay_like_adamw():
    def one_cycle(optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=STEPS)

    want = train(lambda m: torch.optim.AdamW(m.parameters(), weight_decay=LAM), make_scheduler=one_cycle)
    got = train(lambda m: l2fast.Penalized(torch.optim.Adam(m.parameters()), l2=LAM, decoupled=True, fused=False),
                make_scheduler=one_cycle)
    assert_same_training(got, want)
    # The one-pass step rounds sqrt correctly where torch's CPU sqrt (MKL VML) is off by up to 0.75 ulp;
    # over 60 steps of training feedback at lr 0.05 that drifts as far as torch's own fused AdamW
    # drifts from its for-loop AdamW (2.7e-6 here), far below the effect of a wrong learning rate.
    got = train(lambda m: l2fast.Penalized(torch.optim.Adam(m.parameters()), l2=LAM, decoupled=True),
                make_scheduler=one_cycle)
    assert_same_training(got, want, tol=1e-5)


def test_lr_scheduler_sees_the_wrapper_stepped(recwarn):
    model = make_model()
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=1.0), l2=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    task_loss(model, make_data()).backward()
    optimizer.step()
    scheduler.step()
    assert optimizer.optimizer.param_groups[0]["lr"] == 0.5
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def train_with_scaler(optimizer_factory, inf_steps, unscale_first=False, steps=12):
    model = make_model()
    data = make_data()
    optimizer = optimizer_factory(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    for k in range(steps):
        optimizer.zero_grad()
        scaler.scale(task_loss(model, data)).backward()
        if k in inf_steps:
            model[0].weight.grad[0, 0] = float("inf")
        if unscale_first:
            scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    return model, optimizer


@pytest.mark.parametrize("unscale_first", [False, True])
@pytest.mark.parametrize(
    "inner, decoupled, reference",
    [
        (lambda ps: torch.optim.Adam(ps, lr=1e-2), False, lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM)),
        (lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True), False, lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True, weight_decay=LAM)),
        (lambda ps: torch.optim.Adam(ps, lr=1e-2), True, lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=LAM)),
    ],
    ids=["adam", "adam-fused", "adamw"],
)
def test_grad_scaler_unscales_first_and_skips_overflow_steps(inner, decoupled, reference, unscale_first):
    inf_steps = {3, 7}
    got, optimizer = train_with_scaler(
        lambda m: l2fast.Penalized(inner(m.parameters()), l2=LAM, decoupled=decoupled), inf_steps, unscale_first
    )
    want, _ = train_with_scaler(lambda m: reference(m.parameters()), inf_steps, unscale_first)
    assert_same_training(got, want)
    assert optimizer.clock.step == 12 - len(inf_steps)


def test_grad_scaler_skipped_step_applies_no_penalty_and_keeps_the_schedule():
    model = make_model()
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=1.0, decoupled=True, schedule=schedules.Warmup(4))
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(task_loss(model, make_data())).backward()
    model[0].bias.grad[0] = float("nan")
    scaler.step(optimizer)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert optimizer.clock.step == 0 and optimizer.last_penalty is None


def test_closure_with_lbfgs_minimises_the_penalised_objective():
    data = make_data()

    def run(penalized):
        model = make_model()
        inner = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, line_search_fn="strong_wolfe")
        optimizer = l2fast.Penalized(inner, l2=LAM) if penalized else inner

        def closure():
            optimizer.zero_grad()
            loss = task_loss(model, data)
            if not penalized:
                loss = loss + LAM / 2 * sum(p.pow(2).sum() for p in model.parameters())
            loss.backward()
            return loss

        losses = [optimizer.step(closure).item() for _ in range(2)]
        return model, losses

    got, got_losses = run(penalized=True)
    want, want_losses = run(penalized=False)
    assert got_losses == pytest.approx(want_losses, rel=1e-6)
    assert_same_training(got, want)


@pytest.mark.parametrize("fused", ["auto", False])
def test_closure_returns_what_the_optimizer_minimises(fused):
    """SGD evaluates its closure once: the wrapper does that itself and returns the closure's loss, as
    torch.optim.SGD(weight_decay=...) does. An optimizer stepped on the two-pass path may evaluate the
    closure repeatedly (a line search): it gets the penalised objective, loss plus penalty."""
    model = make_model()
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=0.2, fused=fused)
    penalty = 0.1 * sum(p.detach().pow(2).sum().item() for p in model.parameters())

    def closure():
        optimizer.zero_grad()
        loss = task_loss(model, make_data())
        loss.backward()
        closure.loss = loss.item()
        return loss

    returned = optimizer.step(closure)
    want = closure.loss if optimizer.fused else closure.loss + penalty
    assert returned.item() == pytest.approx(want, rel=1e-6)


def test_decoupled_closure_decays_once_after_the_first_evaluation():
    got = make_model()
    data = make_data()
    optimizer = l2fast.Penalized(torch.optim.Adam(got.parameters(), lr=1e-2), l2=LAM, decoupled=True)
    want = make_model()
    reference = torch.optim.AdamW(want.parameters(), lr=1e-2, weight_decay=LAM)
    for model, opt in ((got, optimizer), (want, reference)):
        for _ in range(10):

            def closure():
                opt.zero_grad()
                loss = task_loss(model, data)
                loss.backward()
                return loss

            opt.step(closure)
    assert_same_training(got, want)


class EvaluatesThrice(torch.optim.Optimizer):
    """A custom optimizer that only evaluates its closure three times, as a line search would."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    def step(self, closure):
        return [closure() for _ in range(3)][0]


def test_decoupled_decay_applies_once_however_often_the_closure_runs():
    model = make_model()
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer = l2fast.Penalized(EvaluatesThrice(model.parameters()), l2=0.5, decoupled=True)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = task_loss(model, make_data())
        loss.backward()
        return loss

    optimizer.step(closure)
    assert len(calls) == 3
    for p, w in zip(model.parameters(), weights):
        torch.testing.assert_close(p, w * (1 - 0.1 * 0.5), rtol=0, atol=1e-7)


def test_step_hooks_run_around_the_penalty():
    model = make_model()
    optimizer = l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=1.0)
    task_loss(model, make_data()).backward()
    raw = model[0].weight.grad.clone()
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(("pre", torch.equal(model[0].weight.grad, raw))))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(("post", opt.clock.step)))
    optimizer.step()
    assert seen == [("pre", True), ("post", 1)]


def test_schedule_multiplies_coefficients_step_by_step():
    def coefficient(k):  # rotation over two groups, switched every 5 steps, under a warm-up
        return [min(k / 10, 1.0) * (1.0 if (k // 5) % 2 == g else 0.0) for g in (0, 1)]

    def penalized(m):
        first, rest = split(m)
        schedule = schedules.Warmup(10) * schedules.Alternating(5, rotate=True)
        return l2fast.Penalized(torch.optim.SGD([{"params": first}, {"params": rest}], lr=0.05, momentum=0.9), l2=LAM, schedule=schedule)

    def reference(m):
        first, rest = split(m)
        return torch.optim.SGD([{"params": first}, {"params": rest}], lr=0.05, momentum=0.9)

    def set_weight_decay(model, optimizer, k):
        for group, c in zip(optimizer.param_groups, coefficient(k)):
            group["weight_decay"] = LAM * c

    assert_same_training(train(penalized), train(reference, before_step=set_weight_decay))


def test_epoch_schedule_follows_end_epoch():
    model = make_model()
    optimizer = l2fast.Penalized(
        torch.optim.SGD(model.parameters(), lr=0.1), l2=0.4, schedule=schedules.Alternating(2, unit="epoch")
    )
    seen = []
    for epoch in range(5):
        for _ in range(3):
            seen.append(optimizer.coefficients()[0][0])
            optimizer.step()  # no grads: nothing to penalise, but the step still counts
        optimizer.end_epoch()
    assert seen == [0.4] * 6 + [0.0] * 6 + [0.4] * 3
    assert optimizer.clock == schedules.Clock(step=15, epoch=5)


def test_param_groups_helper_feeds_penalized():
    def penalized(m):
        return l2fast.Penalized(torch.optim.Adam(l2fast.param_groups(m, l2=LAM), lr=1e-2))

    def reference(m):
        weights = [p for n, p in m.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in m.named_parameters() if n.endswith("bias")]
        return torch.optim.Adam([{"params": weights, "weight_decay": LAM}, {"params": biases}], lr=1e-2)

    assert_same_training(train(penalized), train(reference))


# ---- errors ------------------------------------------------------------------------------------

def sgd(model=None, **kwargs):
    return torch.optim.SGD((model or make_model()).parameters(), lr=0.1, **kwargs)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: l2fast.Penalized(l2fast.Penalized(sgd())), TypeError, "already wrapped"),
        (lambda: l2fast.Penalized(object()), TypeError, "expected a torch.optim.Optimizer"),
        (lambda: l2fast.Penalized(sgd(), l2=-1e-4), ValueError, r"l2 = -0.0001 is invalid"),
        (lambda: l2fast.Penalized(sgd(), l1=float("nan")), ValueError, "l1 = nan is invalid"),
        (lambda: l2fast.Penalized(sgd(), l2="0.1"), TypeError, "l2 must be a float"),
        (lambda: l2fast.Penalized(torch.optim.SGD([{"params": make_model().parameters(), "l2": -0.5}], lr=0.1)), ValueError, r"param_groups\[0\]\['l2'\] = -0.5"),
        (lambda: l2fast.Penalized(torch.optim.SGD([{"params": make_model().parameters(), "L2": 0.5}], lr=0.1)), ValueError, r"param_groups\[0\] has the key 'L2'.*did you mean 'l2'"),
        (lambda: l2fast.Penalized(sgd(weight_decay=1e-4), l2=1e-4), ValueError, "apply the L2 penalty twice"),
        (lambda: l2fast.Penalized(sgd(), l2=0.1, l1=0.1, decoupled=True), ValueError, "decoupled=True applies L2 only"),
        (lambda: l2fast.Penalized(sgd(), schedule=lambda t: float("nan")), ValueError, "multiplier nan for param_groups"),
        (lambda: l2fast.Penalized(sgd(), schedule="cosine"), TypeError, "schedule must be"),
    ],
    ids=["wrap-wrapper", "not-optimizer", "negative", "nan", "string", "negative-group", "unknown-key", "double-l2", "decoupled-l1", "nan-schedule", "bad-schedule"],
)
def test_clear_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_failed_wrap_leaves_the_optimizer_untouched():
    inner = torch.optim.SGD([{"params": make_model().parameters(), "l2": -1.0}], lr=0.1)
    with pytest.raises(ValueError):
        l2fast.Penalized(inner)
    inner.param_groups[0]["l2"] = 1.0
    with pytest.raises(ValueError):
        l2fast.Penalized(inner, schedule=lambda t: -1.0)
    assert "l1" not in inner.param_groups[0]
    assert l2fast.Penalized(inner, l1=0.5).param_groups[0]["l1"] == 0.5


def test_group_keys_follow_one_rule_whenever_they_appear():
    """Keys of other code are left alone, as torch leaves them; a near-miss of a known option is refused
    at construction, in add_param_group, and when a framework adds it to param_groups later (at step),
    unless declared in extra_group_keys."""
    groups = [{"params": make_model().parameters(), "lr_scale": 0.5, "group_name": "decay"}]
    optimizer = l2fast.Penalized(torch.optim.SGD(groups, lr=0.1), l2=0.1)
    optimizer.param_groups[0]["layer_id"] = 3  # added later by other code: left alone too
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    optimizer.param_groups[0]["momentun"] = 0.9
    with pytest.raises(ValueError, match=r"param_groups\[0\] has the key 'momentun'.*did you mean 'momentum'"):
        optimizer.step()
    assert optimizer.clock.step == 1
    groups = [{"params": make_model().parameters(), "momentun": 0.9}]
    with pytest.raises(ValueError, match="did you mean 'momentum'"):
        l2fast.Penalized(torch.optim.SGD(groups, lr=0.1))
    groups = [{"params": make_model().parameters(), "momentun": 0.9}]
    assert l2fast.Penalized(torch.optim.SGD(groups, lr=0.1), extra_group_keys=["momentun"]).param_groups[0]["momentun"] == 0.9


def test_add_param_group_is_checked():
    first, rest = split(make_model())
    optimizer = l2fast.Penalized(torch.optim.SGD(first, lr=0.1), l2=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\] has the key 'weight_decy'.*did you mean 'weight_decay'"):
        optimizer.add_param_group({"params": rest, "weight_decy": 0.1})
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['l1'\] = -1.0"):
        optimizer.add_param_group({"params": rest, "l1": -1.0})
    assert len(optimizer.param_groups) == 1


def test_schedule_that_turns_nan_mid_training_fails_at_that_step():
    model = make_model()
    optimizer = l2fast.Penalized(sgd(model), l2=0.1, schedule=lambda t: [1.0, 0.5, 0.0, float("nan")][t])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    for _ in range(3):
        optimizer.step()
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"multiplier nan for param_groups\[0\] at Clock\(step=3"):
        optimizer.step()
    assert optimizer.clock.step == 3 and all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_group_changed_after_wrapping_is_checked_at_step():
    optimizer = l2fast.Penalized(sgd(), l2=0.1)
    optimizer.param_groups[0]["l2"] = float("inf")
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['l2'\] = inf is invalid"):
        optimizer.step()


def test_wrapper_behaves_as_the_inner_optimizer():
    model = make_model()
    inner = sgd(model, momentum=0.9)
    optimizer = l2fast.Penalized(inner, l2=0.1)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups is inner.param_groups and optimizer.state is inner.state
    task_loss(model, make_data()).backward()
    optimizer.step()
    assert len(optimizer.state) == len(inner.state) == 6
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert "Penalized(l2=0.1" in repr(optimizer) and "SGD" in repr(optimizer)


def test_deepcopy_gives_an_independent_wrapper():
    model = make_model()
    optimizer = l2fast.Penalized(sgd(model, momentum=0.9), l2=0.1, schedule=schedules.Warmup(5))
    task_loss(model, make_data()).backward()
    optimizer.step()
    twin_model, twin = copy.deepcopy((model, optimizer))
    assert twin.clock == optimizer.clock and twin.optimizer is not optimizer.optimizer
    for m, opt in ((model, optimizer), (twin_model, twin)):
        opt.zero_grad()
        task_loss(m, make_data()).backward()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin_model.parameters()))
    assert twin.param_groups[0]["params"][0] is twin_model[0].weight
