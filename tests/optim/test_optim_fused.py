"""The one-pass step (l2fast.Penalized over torch's Adam, AdamW and SGD, fused='auto'): 60 steps of
float32 training against torch's own for-loop implementation with weight_decay, with and without
clipping and with a GradScaler that skips a step; state dicts exchanged with plain torch mid-run; the
path chosen; the errors."""
import copy

import pytest
import torch

import l2fast
from l2fast import reference

STEPS = 60
LAM = 1e-2
SHAPES = [(33, 20), (20,), (70_001,), (0,), (3, 4, 5)]  # 70_001: several chunks and a ragged tail
SKIPPED = {5, 23}


def rel_err(got, want):
    return max(((g.double() - w.double()).abs().max() / w.double().abs().max().clamp(min=1e-30)).item()
               for g, w in zip(got, want) if w.numel())


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]


def grads_of(params, k, scale=1.0):
    g = torch.Generator().manual_seed(1000 + k)
    return [scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype).to(p.device) for p in params]


def train(make, steps=STEPS, clip=None, scaler=False, hand_l1=0.0, params=None, start=0):
    """steps of make(params); clip: torch's clip_grad_norm_ first, unless the optimizer clips itself;
    scaler: a GradScaler on the params' device, with an inf gradient at the SKIPPED steps."""
    params = make_params() if params is None else params
    opt = make(params)
    wraps = isinstance(opt, l2fast.Penalized)
    device = params[0].device
    amp = torch.amp.GradScaler(device.type, init_scale=2.0**8, growth_interval=4) if scaler else None
    for k in range(start, start + steps):
        if amp:
            amp.scale(torch.zeros((), device=device))  # the scaler's own lazy start, as scaling a loss makes it
        grads = grads_of(params, k, amp.get_scale() if amp else 1.0)
        if amp and k in SKIPPED:
            grads[0][0, 0] = float("inf")
        for p, g in zip(params, grads):
            p.grad = g
        if amp and clip and not wraps:
            amp.unscale_(opt)
        if clip and not wraps:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if hand_l1:
            with torch.no_grad():
                for p in params:
                    p.grad += hand_l1 * torch.sign(p)
        if amp:
            amp.step(opt)
            amp.update()
        else:
            opt.step()
    return params, opt


CASES = {
    "adam": (lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM), lambda ps: torch.optim.Adam(ps, lr=1e-2), {}),
    "adamw": (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=LAM),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0),
        {"decoupled": True},
    ),
    "sgd-nesterov": (
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=LAM),
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
        {},
    ),
    "adam-amsgrad-maximize": (
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM, amsgrad=True, maximize=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, maximize=True),
        {},
    ),
    "sgd-dampening-maximize": (
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.8, dampening=0.3, weight_decay=LAM, maximize=True),
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.8, dampening=0.3, maximize=True),
        {},
    ),
    "sgd-plain": (lambda ps: torch.optim.SGD(ps, lr=1e-1, weight_decay=LAM), lambda ps: torch.optim.SGD(ps, lr=1e-1), {}),
}


@pytest.mark.parametrize("scaler", [False, True], ids=["", "grad-scaler"])
@pytest.mark.parametrize("clip", [None, 1.0], ids=["", "clip"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_pass_step_equals_torch_for_loop(case, clip, scaler):
    torch_opt, inner, options = CASES[case]
    want, _ = train(torch_opt, clip=clip, scaler=scaler)
    got, opt = train(lambda ps: l2fast.Penalized(inner(ps), l2=LAM, max_grad_norm=clip, **options), clip=clip,
                     scaler=scaler)
    assert opt.fused
    assert rel_err(got, want) <= 1e-6
    assert opt.clock.step == STEPS - (len(SKIPPED) if scaler else 0)
    if clip:
        assert opt.last_grad_norm is not None and opt.last_grad_norm.dim() == 0


@pytest.mark.parametrize("make", [lambda ps: torch.optim.Adam(ps, lr=1e-2), lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)],
                         ids=["adam", "sgd"])
def test_l1_equals_hand_written_sign_penalty(make):
    want, _ = train(make, hand_l1=1e-3)
    got, opt = train(lambda ps: l2fast.Penalized(make(ps), l1=1e-3))
    assert opt.fused and rel_err(got, want) <= 1e-6


def test_penalty_value_is_that_of_the_weights_the_step_started_from():
    params = make_params()
    opt = l2fast.Penalized(torch.optim.Adam(params, lr=1e-2), l2=LAM, l1=1e-3)
    for p, g in zip(params, grads_of(params, 0)):
        p.grad = g
    before = [p.detach().double().clone() for p in params]
    opt.step()
    want = sum(LAM / 2 * (w**2).sum() + 1e-3 * w.abs().sum() for w in before)
    assert opt.last_penalty.dtype == torch.float32
    assert abs(opt.last_penalty.item() - want.item()) <= 1e-6 * want.item()


def test_the_two_pass_path_gives_the_same_training():
    want, _ = train(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=LAM, max_grad_norm=1.0, fused=False),
                    scaler=True)
    got, _ = train(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=LAM, max_grad_norm=1.0), scaler=True)
    assert rel_err(got, want) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_params_stay_within_their_precision_of_torch_fused_adam(dtype):
    """Error of the one-pass step against a float64 run, bounded by a multiple of torch's own fused
    Adam's error in the same dtype (both keep the state in the parameter dtype)."""
    steps = 20

    def run(make, dt):
        params = make_params(dt)
        return train(make, steps=steps, params=params)[0]

    exact = run(lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM, foreach=False), torch.float64)
    torch_fused = run(lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM, fused=True), dtype)
    ours = run(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2, fused=True), l2=LAM), dtype)
    assert ours[2].dtype == dtype
    assert rel_err(ours, exact) <= 2 * rel_err(torch_fused, exact) + 1e-3


@pytest.mark.parametrize("case", ["adam", "adamw", "sgd-nesterov", "adam-amsgrad-maximize"])
def test_state_dicts_move_both_ways_mid_run(case):
    torch_opt, inner, options = CASES[case]
    wrapped = lambda ps: l2fast.Penalized(inner(ps), l2=LAM, **options)  # noqa: E731
    # 10 steps of torch, then 10 of l2fast from torch's state dict; and the other way round.
    for first, second in ((torch_opt, wrapped), (wrapped, torch_opt)):
        params, opt = train(first, steps=10)
        state = copy.deepcopy(opt.state_dict())
        state.pop("l2fast", None)
        want_params = [p.detach().clone().requires_grad_() for p in params]
        want, _ = train(lambda ps: _loaded(torch_opt(ps), state), steps=10, params=want_params, start=10)
        got, opt2 = train(lambda ps: _loaded(second(ps), state), steps=10, params=params, start=10)
        assert rel_err(got, want) <= 1e-6
        step = next(iter(opt2.state.values())).get("step")
        if step is not None:
            assert step.device.type == "cpu" and step.dtype == torch.float32 and step.item() == 20


def _loaded(opt, state):
    """The per-parameter state of `state` (torch's layout) with opt's own hyperparameters (torch's
    weight_decay on one side, l2fast's l2 on the other)."""
    own = opt.state_dict()
    own["state"] = copy.deepcopy(state["state"])
    opt.load_state_dict(own)
    return opt


def test_state_is_created_as_torch_creates_it():
    for make in (lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True), lambda ps: torch.optim.Adam(ps, fused=True),
                 lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)):
        _, want = train(make, steps=1)
        _, got = train(lambda ps: l2fast.Penalized(make(ps), l2=LAM), steps=1)
        for s_want, s_got in zip(want.state.values(), got.state.values()):
            assert s_want.keys() == s_got.keys()
            for key in s_want:
                assert s_want[key].dtype == s_got[key].dtype and s_want[key].device == s_got[key].device, key


def test_auto_chooses_the_one_pass_path_only_where_it_applies():
    params = make_params()
    assert l2fast.Penalized(torch.optim.Adam(params), l2=LAM).fused
    assert l2fast.Penalized(torch.optim.SGD(params, lr=0.1), l2=LAM).fused
    assert not l2fast.Penalized(torch.optim.Adam(params), l2=LAM, fused=False).fused
    assert not l2fast.Penalized(torch.optim.RMSprop(params), l2=LAM).fused
    assert not l2fast.Penalized(torch.optim.Adam(params, differentiable=True), l2=LAM).fused

    class MyAdam(torch.optim.Adam):
        pass

    assert not l2fast.Penalized(MyAdam(params), l2=LAM).fused
    opt = l2fast.Penalized(torch.optim.Adam(params), l2=LAM)
    assert "fused=True" in repr(opt)


@pytest.mark.parametrize("inner_fused", [False, True])
def test_gradscaler_protocol_is_advertised_as_the_inner_optimizer_advertises_it(inner_fused):
    """Frameworks read _step_supports_amp_scaling (Lightning refuses gradient clipping where it is
    set; GradScaler hands over grad_scale / found_inf): the wrapper says what the inner optimizer says."""
    inner = torch.optim.Adam(make_params(), fused=inner_fused)
    opt = l2fast.Penalized(inner, l2=LAM)
    assert opt.fused and opt._step_supports_amp_scaling == getattr(inner, "_step_supports_amp_scaling", False) == inner_fused


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda ps: torch.optim.RMSprop(ps), "RMSprop, not exactly torch.optim.Adam, AdamW or SGD"),
        (lambda ps: torch.optim.Adam(ps, differentiable=True), r"param_groups\[0\] has differentiable=True"),
    ],
)
def test_fused_true_names_what_it_cannot_do(build, message):
    with pytest.raises(ValueError, match=message):
        l2fast.Penalized(build(make_params()), l2=LAM, fused=True)


def test_fused_true_checks_added_groups_and_bad_arguments():
    opt = l2fast.Penalized(torch.optim.Adam(make_params()[:1]), l2=LAM, fused=True)
    with pytest.raises(ValueError, match=r"param_groups\[1\] params\[0\] has dtype torch.complex64"):
        opt.add_param_group({"params": [torch.zeros(3, dtype=torch.complex64, requires_grad=True)]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="fused must be 'auto', True or False"):
        l2fast.Penalized(torch.optim.Adam(make_params()), fused="yes")
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        l2fast.Penalized(torch.optim.Adam(make_params()), max_grad_norm=0.0)


def test_closure_falls_back_to_the_two_pass_path_for_its_step():
    want, _ = train(lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM), steps=3)
    params = make_params()
    opt = l2fast.Penalized(torch.optim.Adam(params, lr=1e-2), l2=LAM)
    for k in range(3):
        grads = grads_of(params, k)

        def closure():
            for p, g in zip(params, grads):
                p.grad = g.clone()
            return torch.zeros(())

        opt.step(closure)
    assert rel_err(params, want) <= 1e-6


def test_lr_scheduler_and_per_group_options():
    def groups(ps, **extra):
        return [{"params": ps[:2], "lr": 3e-2, **extra}, {"params": ps[2:], "weight_decay": 0.0}]

    def with_scheduler(make):
        def build(ps):
            opt = make(ps)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
            opt.register_step_post_hook(lambda *_: sched.step())
            return opt
        return build

    want, _ = train(with_scheduler(lambda ps: torch.optim.Adam(groups(ps, weight_decay=LAM), lr=1e-2)))
    got, _ = train(with_scheduler(
        lambda ps: l2fast.Penalized(torch.optim.Adam(groups(ps, l2=LAM), lr=1e-2), extra_group_keys=())))
    assert rel_err(got, want) <= 1e-6


def test_native_op_equals_the_reference_op_for_every_dtype():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        runs = []
        for impl in (torch.ops.l2fast, reference):
            params = [p.detach() for p in make_params(dtype)]
            state = [[torch.zeros_like(p) for p in params] for _ in range(3)]
            steps = [torch.tensor(0.0) for _ in params]
            bufs = [torch.zeros_like(p) for p in params]
            values, written_grads = [], []
            for k in range(3):
                grads = grads_of(params, k, 4.0)
                values.append(impl.adam_step_(params, grads, *state, steps, [1e-2], [0.9], [0.99], [1e-8], [LAM], [1e-3],
                                              [1e-3], [LAM], True, torch.tensor(4.0), torch.tensor(0.0), torch.tensor(0.5)))
                written_grads += [g.clone() for g in grads]  # left as grads / 4 * 0.5
                values.append(impl.sgd_step_(params, grads, bufs, [1e-2], [0.9], [0.1], [int(k == 0)], [LAM], [0.0], [0.0],
                                             [LAM], True, False, None, None, None))
            runs.append((params + written_grads, values))
        (p_native, v_native), (p_ref, v_ref) = runs
        tol = {torch.float32: 1e-6, torch.float64: 1e-14}.get(dtype, 1e-2)
        assert rel_err(p_native, p_ref) <= tol, dtype
        assert all(abs(a.item() - b.item()) <= 1e-6 * abs(b.item()) for a, b in zip(v_native, v_ref))


def test_op_argument_errors_are_clear():
    params = [p.detach() for p in make_params()]  # as optimizers pass them: no autograd
    grads = grads_of(params, 0)
    state = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    with pytest.raises(RuntimeError, match=r"exp_avg_sqs\[1\] has dtype torch.float64 but params\[1\] has dtype torch.float32"):
        bad = list(state)
        bad[1] = bad[1].double()
        torch.ops.l2fast.adam_step_(params, grads, state, bad, [], steps, [1e-2], [0.9], [0.99], [1e-8], [0.0], [0.0],
                                    [0.0], [0.0], False, None, None, None)
    with pytest.raises(RuntimeError, match="got 5 params but 4 steps"):
        torch.ops.l2fast.adam_step_(params, grads, state, [s.clone() for s in state], [], steps[:4], [1e-2], [0.9],
                                    [0.99], [1e-8], [0.0], [0.0], [0.0], [0.0], False, None, None, None)
    with pytest.raises(RuntimeError, match="are the same memory"):
        torch.ops.l2fast.sgd_step_(params, grads, params, [1e-2], [0.9], [0.0], [0], [0.0], [0.0], [0.0], [0.0], False,
                                   False, None, None, None)
    with pytest.raises(RuntimeError, match="clip must hold one value"):
        torch.ops.l2fast.sgd_step_(params, grads, [], [1e-2], [0.0], [0.0], [0], [0.0], [0.0], [0.0], [0.0], False,
                                   False, None, None, torch.ones(2))


@pytest.mark.parametrize("case", ["adam", "sgd-nesterov"])
def test_add_param_group_mid_run(case):
    """A group added after 5 steps (with its own lr) steps like torch's from then on."""
    torch_opt, inner, options = CASES[case]
    runs = []
    for make, extra in ((torch_opt, {"weight_decay": LAM}), (lambda ps: l2fast.Penalized(inner(ps), l2=LAM), {})):
        params = make_params()
        head, tail = params[:2], params[2:]
        opt = make(head)
        for k in range(12):
            if k == 5:
                opt.add_param_group({"params": tail, "lr": 3e-2, **extra})
            live = head if k < 5 else params
            for p, g in zip(live, grads_of(live, k)):
                p.grad = g
            opt.step()
        runs.append(params)
    assert isinstance(opt, l2fast.Penalized) and opt.fused
    assert rel_err(runs[1], runs[0]) <= 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", ["adam", "adamw", "sgd-nesterov", "adam-amsgrad-maximize"])
def test_one_pass_step_on_cuda_equals_torch(case):
    """The CUDA kernels through Penalized, with clipping and a skipping GradScaler, against torch's own
    CUDA optimizer (foreach; nvcc contracts multiply-adds, hence a looser bound than on the CPU)."""
    torch_opt, inner, options = CASES[case]
    cuda_params = lambda: [p.detach().cuda().requires_grad_() for p in make_params()]  # noqa: E731
    want, _ = train(torch_opt, steps=20, clip=1.0, scaler=True, params=cuda_params())
    got, opt = train(lambda ps: l2fast.Penalized(inner(ps), l2=LAM, max_grad_norm=1.0, **options), steps=20, clip=1.0,
                     scaler=True, params=cuda_params())
    assert opt.fused
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=LAM),  # torch's own behaviour, for comparison
    lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=LAM),
    lambda ps: l2fast.Penalized(torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0, amsgrad=True), l2=LAM, decoupled=True),
    lambda ps: l2fast.Penalized(torch.optim.SGD(ps, lr=1e-2, momentum=0.9), l2=LAM),
], ids=["torch-adam", "adam", "adamw-amsgrad", "sgd-momentum"])
def test_a_step_between_forward_and_backward_is_caught_like_torchs(make):
    # The one-pass step writes the weights in place: a graph that saved them must refuse to go on
    # with the new values, as it does after torch's own step, rather than give a silently wrong gradient.
    params = make_params()
    loss = sum((p * p).sum() for p in params)  # saves every weight for backward
    loss.backward(retain_graph=True)
    make(params).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_the_step_ops_bump_the_versions_of_what_they_write_only():
    params = [p.detach() for p in make_params()]
    grads = grads_of(params, 0)
    state = [[torch.zeros_like(p) for p in params] for _ in range(3)]
    steps = [torch.tensor(0.0) for _ in params]
    written = params + grads + [t for kind in state for t in kind] + steps  # grads: left unscaled and clipped
    clip = torch.tensor(0.5)
    before = [t._version for t in written + [clip]]
    torch.ops.l2fast.adam_step_(params, grads, *state, steps, [1e-2], [0.9], [0.99], [1e-8], [LAM], [0.0], [0.0], [LAM],
                                False, None, None, clip)
    assert [t._version for t in written] == [v + 1 for v in before[: len(written)]]
    assert clip._version == before[-1]
    assert [s.item() for s in steps] == [1.0] * len(params)
    buffers = [torch.zeros_like(p) for p in params]
    before = [t._version for t in params + buffers + grads + [clip]]
    torch.ops.l2fast.sgd_step_(params, grads, buffers, [1e-2], [0.9], [0.0], [1], [LAM], [0.0], [0.0], [LAM], False,
                               False, None, None, clip)
    assert [t._version for t in params + buffers + grads] == [v + 1 for v in before[: 3 * len(params)]]
    assert clip._version == before[-1]
