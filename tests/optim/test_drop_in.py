"""Penalized where a torch user's own code touches the optimizer: torch.compile, hooks, closures,
gradients after the step, half precision, memory layouts, meta tensors, parameters listed twice,
option messages and state dicts exchanged with torch. Each runs torch's own optimizer (with the same
weight_decay) beside the wrapper and compares."""
import copy
import warnings

import pytest
import torch

import l2fast
from l2fast import schedules
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

LAM = 1e-2


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batch(k):
    g = torch.Generator().manual_seed(100 + k)
    return torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)


def loss_of(model, k):
    x, y = batch(k)
    return (model(x) - y).pow(2).mean()


def same(a, b, rel=1e-6):
    for x, y in zip(a, b):
        scale = y.detach().double().abs().max().clamp(min=1e-30)
        assert ((x.detach().double() - y.detach().double()).abs().max() / scale).item() <= rel


def penalized(model, fused="auto", **options):
    return l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=LAM, fused=fused, **options)


# 1. torch.compile ---------------------------------------------------------------------------------

def run_compiled(compiled: bool, form: str, fused, steps=6):
    model = make_model()
    opt = penalized(model, fused, schedule=schedules.Warmup(4), max_grad_norm=0.05)

    def train_step(k):
        opt.zero_grad()
        loss = loss_of(model, k)
        loss.backward()
        opt.step()
        return loss

    step = opt.step
    if compiled and form == "step":
        step = torch.compile(opt.step, backend="aot_eager")
    if compiled and form == "train-step":
        train_step = torch.compile(train_step, backend="aot_eager")
    for k in range(steps):
        if form == "step":
            opt.zero_grad()
            loss_of(model, k).backward()
            step()
        else:
            train_step(k)
    return model, opt


@pytest.mark.parametrize("fused", ["auto", False])
@pytest.mark.parametrize("form", ["step", "train-step"])
def test_compiled_training_equals_eager_training(form, fused):
    torch._dynamo.reset()
    eager_model, eager = run_compiled(False, form, fused)
    model, opt = run_compiled(True, form, fused)
    assert opt.clock == eager.clock and opt.clock.step == 6
    same(model.parameters(), eager_model.parameters())
    same([opt.last_penalty, opt.last_grad_norm], [eager.last_penalty, eager.last_grad_norm])


def test_compiled_training_step_with_inductor_equals_eager():
    torch._dynamo.reset()
    eager_model, eager = run_compiled(False, "train-step", "auto", steps=3)
    model = make_model()
    opt = penalized(model, schedule=schedules.Warmup(4), max_grad_norm=0.05)

    @torch.compile
    def train_step(k):
        opt.zero_grad()
        loss_of(model, k).backward()
        opt.step()

    for k in range(3):
        train_step(k)
    assert opt.clock == eager.clock
    same(model.parameters(), eager_model.parameters(), rel=1e-5)  # inductor's own forward/backward rounding
    same([opt.last_penalty], [eager.last_penalty], rel=1e-5)


def test_fullgraph_over_the_step_is_refused_as_for_torchs_own_optimizers():
    torch._dynamo.reset()
    for make in (lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=LAM), penalized):
        model = make_model()
        opt = make(model)
        loss_of(model, 0).backward()
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(torch._dynamo.exc.Unsupported):
            torch.compile(lambda: opt.step(), fullgraph=True)()
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert opt.clock.step == 0


# 2. Hooks ------------------------------------------------------------------------------------------

def count_hooks(build, steps=3, closure=False):
    """Steps build(model), counting every step hook torch offers: the inner optimizer's own, the
    wrapper's own and the global ones. Returns {hook: calls} and the warnings seen."""
    model = make_model()
    opt = build(model)
    inner = getattr(opt, "optimizer", opt)
    calls = {}

    def hook(name):
        def record(*args):
            calls[name] = calls.get(name, 0) + 1
        return record

    handles = [inner.register_step_pre_hook(hook("inner pre")), inner.register_step_post_hook(hook("inner post")),
               register_optimizer_step_pre_hook(hook("global pre")), register_optimizer_step_post_hook(hook("global post"))]
    if opt is not inner:
        handles += [opt.register_step_pre_hook(hook("wrapper pre")), opt.register_step_post_hook(hook("wrapper post"))]
    scheduler = torch.optim.lr_scheduler.StepLR(inner, step_size=1, gamma=0.9)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for k in range(steps):
                def evaluate():
                    opt.zero_grad()
                    loss = loss_of(model, k)
                    loss.backward()
                    return loss
                if closure:
                    opt.step(evaluate)
                else:
                    evaluate()
                    opt.step()
                scheduler.step()
    finally:
        for handle in handles:
            handle.remove()
    return calls, [str(w.message) for w in seen], model


@pytest.mark.parametrize("closure", [False, True], ids=["", "closure"])
@pytest.mark.parametrize("fused", ["auto", False])
def test_every_hook_fires_once_per_step_as_with_torch(fused, closure):
    want, want_warnings, want_model = count_hooks(
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=LAM), closure=closure)
    got, got_warnings, got_model = count_hooks(lambda m: penalized(m, fused), closure=closure)
    assert want == {"inner pre": 3, "inner post": 3, "global pre": 3, "global post": 3}
    assert got == {**want, "wrapper pre": 3, "wrapper post": 3}
    assert not [w for w in got_warnings if "lr_scheduler" in w] and not want_warnings
    same(got_model.parameters(), want_model.parameters())


def test_a_pre_hook_can_replace_the_closure_as_in_torch():
    model = make_model()
    opt = penalized(model)
    evaluated = []

    def closure():
        evaluated.append("replacement")
        opt.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss

    opt.optimizer.register_step_pre_hook(lambda o, args, kwargs: ((o,), {"closure": closure}))
    loss_of(model, 0).backward()
    assert opt.step() is not None and evaluated == ["replacement"]


def test_state_dict_hooks_of_the_wrapper_fire_as_torchs():
    def record(opt):
        seen = []
        opt.register_state_dict_pre_hook(lambda o: seen.append("pre"))
        opt.register_state_dict_post_hook(lambda o, sd: seen.append("post") or {**sd, "tag": 1})
        opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append(("load pre", sd["tag"])))
        opt.register_load_state_dict_post_hook(lambda o: seen.append("load post"))
        state = opt.state_dict()
        assert state["tag"] == 1
        state.pop(l2fast.optim.STATE_KEY, None)
        opt.load_state_dict(state)
        return seen

    want = record(torch.optim.Adam(make_model().parameters(), weight_decay=LAM))
    assert want == ["pre", "post", ("load pre", 1), "load post"]
    assert record(penalized(make_model())) == want


# 3. Gradients after the step ------------------------------------------------------------------------

def grads_after(build, wraps: bool, clip, scaler, steps=3):
    model = make_model()
    opt = build(model)
    amp = torch.amp.GradScaler("cpu", init_scale=2.0**6) if scaler else None
    for k in range(steps):
        opt.zero_grad()
        loss = loss_of(model, k)
        (amp.scale(loss) if amp else loss).backward()
        if amp and clip and not wraps:
            amp.unscale_(opt)
        if clip and not wraps:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if amp:
            amp.step(opt)
            amp.update()
        else:
            opt.step()
    return [p.grad for p in model.parameters()], model


@pytest.mark.parametrize("scaler", [False, True], ids=["", "grad-scaler"])
@pytest.mark.parametrize("clip", [None, 0.05], ids=["", "clip"])
@pytest.mark.parametrize("fused", ["auto", False])
def test_grads_after_step_are_those_torch_leaves(fused, clip, scaler):
    """torch's unscale_ / clip_grad_norm_ / Adam(weight_decay).step leave the unscaled, clipped gradient,
    without the weight decay term; so do both paths of the wrapper."""
    want, want_model = grads_after(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=LAM), False,
                                   clip, scaler)
    got, got_model = grads_after(lambda m: penalized(m, fused, max_grad_norm=clip), True, clip, scaler)
    same(got, want)
    same(got_model.parameters(), want_model.parameters())


@pytest.mark.parametrize("inner, options", [("RMSprop", {}), ("Adam", {"maximize": True}), ("SGD", {"momentum": 0.9})])
def test_two_pass_step_equals_torch_and_leaves_the_callers_gradient(inner, options):
    """The two-pass path: torch's Adam and SGD take the penalty as their own weight_decay for the step
    (bit for bit torch's); other optimizers get it in stand-in copies of the gradients."""
    cls = getattr(torch.optim, inner)
    want, want_model = grads_after(lambda m: cls(m.parameters(), lr=1e-2, weight_decay=LAM, **options), False,
                                   None, False)
    got, got_model = grads_after(lambda m: l2fast.Penalized(cls(m.parameters(), lr=1e-2, **options), l2=LAM,
                                                            fused=False), True, None, False)
    tolerance = 1e-6 if inner == "RMSprop" else 0.0  # our fused multiply-add against torch's separate add
    same(got, want, rel=tolerance)
    same(got_model.parameters(), want_model.parameters(), rel=tolerance)


def test_l1_on_the_two_pass_path_leaves_the_callers_gradient():
    model = make_model()
    opt = l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=LAM, l1=1e-3, fused=False)
    loss_of(model, 0).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), raw))
    assert opt.param_groups[0]["weight_decay"] == 0


# 4. Half precision ----------------------------------------------------------------------------------

def same_bits(got, want):
    """Bit for bit, NaN included (torch's for-loop Adam in float16 rounds eps=1e-8 to 0 and divides 0 by 0)."""
    return all(torch.equal(g.view(torch.int16), w.view(torch.int16)) if g.element_size() == 2 else torch.equal(g, w)
               for g, w in zip(got, want))


def half_training(build, dtype, steps=30):
    model = make_model().to(dtype)
    opt = build(model)
    for k in range(steps):
        opt.zero_grad()
        x, y = batch(k)
        (model(x.to(dtype)) - y.to(dtype)).float().pow(2).mean().backward()
        opt.step()
    return list(model.parameters()) + [s for st in opt.state.values() for s in st.values() if s.dim()]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_half_precision_one_pass_step_is_torchs_fused_adam_bit_for_bit(dtype, decoupled):
    torch_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    want = half_training(lambda m: torch_class(m.parameters(), lr=1e-2, weight_decay=LAM, fused=True), dtype)
    got = half_training(lambda m: l2fast.Penalized(torch.optim.Adam(m.parameters(), lr=1e-2), l2=LAM,
                                                   decoupled=decoupled), dtype)
    assert same_bits(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_two_pass_decoupled_step_is_the_inner_optimizers_bit_for_bit(dtype):
    want = half_training(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=LAM), dtype)
    got = half_training(lambda m: l2fast.Penalized(torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0),
                                                   l2=LAM, decoupled=True, fused=False), dtype)
    assert same_bits(got, want)


# 5. Memory layouts ----------------------------------------------------------------------------------

def conv_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2))


def conv_steps(model, opt, start, steps=3):
    for k in range(start, start + steps):
        g = torch.Generator().manual_seed(k)
        x = torch.randn(5, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def layout_run(build, switch):
    """Three steps, the model moved to channels_last (state stays contiguous), three more."""
    model = conv_model()
    opt = build(model)
    conv_steps(model, opt, 0)
    if switch:
        model.to(memory_format=torch.channels_last)
    conv_steps(model, opt, 3)
    return model


@pytest.mark.parametrize("build", [lambda m: penalized(m), lambda m: penalized(m, fused=False)], ids=["auto", "two-pass"])
def test_state_in_another_layout_than_its_parameter_steps_as_in_torch(build):
    want = layout_run(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=LAM), switch=True)
    got = layout_run(build, switch=True)
    assert got[0].weight.is_contiguous(memory_format=torch.channels_last)
    same(got.parameters(), want.parameters())


def test_fused_true_names_the_tensor_whose_state_layout_differs():
    model = conv_model()
    opt = penalized(model, fused=True)
    conv_steps(model, opt, 0, steps=1)
    model.to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] has strides \(27, 1, 9, 3\) but its state 'exp_avg' \(27, 9, 3, 1\).*fused='auto'"):
        conv_steps(model, opt, 1, steps=1)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("fused", ["auto", False])
def test_a_gradient_in_another_layout_than_its_parameter_steps_as_in_torch(fused):
    def run(build):
        model = make_model()
        opt = build(model)
        for k in range(3):
            opt.zero_grad()
            loss_of(model, k).backward()
            weight = model[0].weight
            weight.grad = weight.grad.t().contiguous().t()  # same values, transposed strides
            opt.step()
        return model

    want = run(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=LAM))
    got = run(lambda m: penalized(m, fused))
    same(got.parameters(), want.parameters())


# 6. Meta tensors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", ["auto", True, False])
def test_meta_parameters_step_as_in_torch(fused):
    model = torch.nn.Linear(4, 3, device="meta")
    opt = penalized(model, fused)
    model(torch.randn(2, 4, device="meta")).sum().backward()
    opt.step()
    assert opt.fused == (fused is not False) and "Penalized(" in repr(opt)
    assert opt.last_penalty.device.type == "meta" and opt.clock.step == 1
    assert {k: v.shape for k, v in opt.state[model.weight].items()} == {"step": (), "exp_avg": (3, 4), "exp_avg_sq": (3, 4)}


# 7. Closures ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("inner", ["adam", "adamw", "sgd"])
def test_a_closure_takes_the_one_pass_step(inner, monkeypatch):
    torch_options = {"adam": (torch.optim.Adam, {}, False), "adamw": (torch.optim.AdamW, {}, True),
                     "sgd": (torch.optim.SGD, {"momentum": 0.9}, False)}
    cls, options, decoupled = torch_options[inner]
    one_pass_calls = []
    run = l2fast.fused_step.run
    monkeypatch.setattr(l2fast.fused_step, "run", lambda *a: one_pass_calls.append(1) or run(*a))

    def train(opt, model):
        losses = []
        for k in range(4):
            evaluations = []

            def closure():
                evaluations.append(1)
                opt.zero_grad()
                loss = loss_of(model, k)
                loss.backward()
                return loss

            losses.append(opt.step(closure).item())
            assert len(evaluations) == 1
        return losses

    want_model, got_model = make_model(), make_model()
    want = train(cls(want_model.parameters(), lr=1e-2, weight_decay=LAM, **options), want_model)
    got = train(l2fast.Penalized(cls(got_model.parameters(), lr=1e-2, weight_decay=0.0, **options), l2=LAM,
                               decoupled=decoupled), got_model)
    assert len(one_pass_calls) == 4
    assert got == pytest.approx(want, rel=1e-6)
    same(got_model.parameters(), want_model.parameters())


# 8. A parameter listed twice ------------------------------------------------------------------------

def test_a_parameter_listed_twice_is_refused_naming_both_places():
    model = make_model()
    w = model[0].weight
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[\d\] is the same tensor as param_groups\[0\]\['params'\]\[\d\]"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own warning about the duplicate
            l2fast.Penalized(torch.optim.Adam([w, model[0].bias, w]), l2=LAM)
    base = torch.zeros(10)
    views = [torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:])]
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] shares memory with param_groups\[0\]\['params'\]\[0\]"):
        l2fast.Penalized(torch.optim.SGD([{"params": [views[0]]}, {"params": [views[1]]}], lr=0.1), l2=LAM)
    opt = l2fast.Penalized(torch.optim.SGD([views[0]], lr=0.1), l2=LAM)
    with pytest.raises(ValueError, match="shares memory"):
        opt.add_param_group({"params": [views[1]]})
    assert len(opt.param_groups) == 1


# 9. Messages that name the group and the option -----------------------------------------------------

def test_a_negative_lr_steps_as_in_torch_or_is_named_under_fused_true():
    def run(build):
        model = make_model()
        opt = build(model)
        opt.param_groups[0]["lr"] = -1e-2  # torch checks lr when the group is built, not later
        loss_of(model, 0).backward()
        opt.step()
        return model

    want = run(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=LAM))
    same(run(lambda m: penalized(m)).parameters(), want.parameters())
    with pytest.raises(ValueError, match=r"param_groups\[0\] has \['lr'\] = -0.01"):
        run(lambda m: penalized(m, fused=True))


# 10. State dicts exchanged with torch's own optimizers -----------------------------------------------

def steps_of(model, opt, start, steps=3):
    for k in range(start, start + steps):
        opt.zero_grad()
        loss_of(model, k).backward()
        opt.step()


@pytest.mark.parametrize("decoupled", [False, True])
def test_state_dicts_convert_both_ways_with_the_penalty(decoupled):
    torch_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    reference = make_model()
    ref_opt = torch_class(reference.parameters(), lr=1e-2, weight_decay=LAM)
    steps_of(reference, ref_opt, 0, steps=6)

    # l2fast -> torch: three steps wrapped, three with torch's optimizer given the converted state.
    model = make_model()
    opt = l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), l2=LAM, decoupled=decoupled)
    steps_of(model, opt, 0)
    plain = torch_class(model.parameters(), lr=1e-2, weight_decay=0.0)
    plain.load_state_dict(opt.torch_state_dict())
    assert plain.param_groups[0]["weight_decay"] == LAM
    steps_of(model, plain, 3)
    same(model.parameters(), reference.parameters())

    # torch -> l2fast: three steps of torch's optimizer, three wrapped after loading its state.
    model = make_model()
    plain = torch_class(model.parameters(), lr=1e-2, weight_decay=LAM)
    steps_of(model, plain, 0)
    opt = l2fast.Penalized(torch.optim.Adam(model.parameters(), lr=1e-2), decoupled=decoupled)
    opt.load_torch_state_dict(plain.state_dict())
    assert opt.param_groups[0]["l2"] == LAM and opt.param_groups[0]["weight_decay"] == 0.0
    steps_of(model, opt, 3)
    same(model.parameters(), reference.parameters())


def test_state_dict_conversions_refuse_what_torch_cannot_hold():
    model = make_model()
    with pytest.raises(ValueError, match=r"param_groups\[0\] has l1=0.001; torch's optimizers have no L1"):
        l2fast.Penalized(torch.optim.Adam(model.parameters()), l1=1e-3).torch_state_dict()
    with pytest.raises(ValueError, match="SGD has no decoupled weight_decay"):
        l2fast.Penalized(torch.optim.SGD(model.parameters(), lr=0.1), l2=LAM, decoupled=True).torch_state_dict()
    adamw = torch.optim.AdamW(model.parameters(), weight_decay=LAM)
    opt = penalized(model)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"param_groups\[0\] has a decoupled \(AdamW\) weight_decay=0.01, but this "
                                         r"optimizer has decoupled=False"):
        opt.load_torch_state_dict(adamw.state_dict())
    assert opt.state_dict()["param_groups"] == before["param_groups"]
