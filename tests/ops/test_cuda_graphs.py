"""On a GPU: every l2fast op and both optimizer steps captured into a CUDA graph and replayed with new
tensor values (skipped without a GPU; bench/gpu.sh runs it as its own stage).

The ops pass their metadata as kernel arguments, so a replay must read the captured tensors however
host memory (pinned or not) has been reused since. The steps read GradScaler's scale, found_inf and
the clip coefficient from device tensors, so a replay must follow their new values: found_inf = 1
writes nothing. (Penalized.step itself refuses capture: lr and its schedule are host values.)
"""
import pytest
import torch

import l2fast
from l2fast import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ops = torch.ops.l2fast


def churn_host_memory():
    """Allocate, fill and free host memory, pinned and pageable, as a training step around a replay would."""
    for _ in range(4):
        pinned = [torch.full((1 << 16,), 7.0).pin_memory() for _ in range(8)]
        on_gpu = [p.to("cuda", non_blocking=True) for p in pinned]
        del pinned, on_gpu
    torch.cuda.synchronize()


def check(name, got, want, rtol):
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), rtol=rtol, atol=1e-6, msg=lambda m: f"{name}: {m}")


def captured(step):
    """step() captured into a graph (after a warm-up on a side stream, as torch.cuda.graph asks), and its outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


def test_ops_replay_the_captured_tensors():
    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = [1000, 16387, 3, 1 << 20] + [1 + i % 97 for i in range(1000)]  # 1,004 tensors: 3 launch tables
    xs = [torch.randn(n, device="cuda", generator=g) for n in sizes]
    params = [torch.randn(n, device="cuda", generator=g, dtype=torch.bfloat16) for n in (4099, 77, 1 << 18)]
    grads = [torch.zeros_like(p) for p in params]
    scale = torch.tensor(1.5, device="cuda")

    def step():
        return (
            ops.sq_norm(xs, [1.0], True),
            ops.l1_norm(xs, [0.5], False),
            ops.penalty(xs, [0.1], [0.01]),
            ops.add_penalty_grad_(params, grads, [0.5], [0.1]),
            ops.penalty_grad(params, scale, [0.2], [0.03]),
        )

    graph, (norms, l1, penalty, value, backward) = captured(step)
    for trial in range(3):
        for t in xs + params:
            t.normal_(generator=g)
        for t in grads:
            t.zero_()
        scale.fill_(0.5 + trial)
        churn_host_memory()
        graph.replay()
        torch.cuda.synchronize()
        check("sq_norm", norms, reference.sq_norm(xs, [1.0], True), 1e-6)
        check("l1_norm", l1, reference.l1_norm(xs, [0.5], False), 1e-6)
        check("penalty", penalty, reference.penalty(xs, [0.1], [0.01]), 1e-6)
        want_grads = [torch.zeros_like(p) for p in params]
        check("add_penalty_grad_", value, reference.add_penalty_grad_(params, want_grads, [0.5], [0.1]), 1e-6)
        for got, want in zip(grads, want_grads):
            check("add_penalty_grad_ grads", got, want, 1e-2)
        for got, want in zip(backward, reference.penalty_grad(params, scale, [0.2], [0.03])):
            check("penalty_grad", got, want, 1e-2)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_steps_replay_new_grad_scale_found_inf_and_clip(kind):
    g = torch.Generator(device="cuda").manual_seed(1)
    sizes = [4099, 77, 1 << 18, 16384]
    params = [torch.randn(n, device="cuda", generator=g) for n in sizes]
    grads = [torch.randn(n, device="cuda", generator=g) for n in sizes]
    states = [[torch.zeros_like(p) for p in params] for _ in range(2 if kind == "adam" else 1)]
    steps = [torch.zeros((), device="cuda") for _ in params]
    scale, found_inf, clip = (torch.tensor(v, device="cuda") for v in (64.0, [0.0], 0.75))
    n = len(params)
    common = dict(l2=[1e-2] * n, l1=[1e-3] * n, decay=[0.0] * n, value_l2=[1e-2] * n, maximize=False)

    def step(impl=ops, ps=params, gs=grads, ss=states, ks=steps):
        if kind == "adam":
            return impl.adam_step_(ps, gs, ss[0], ss[1], [], ks, [1e-3] * n, [0.9] * n, [0.999] * n, [1e-8] * n,
                                   grad_scale=scale, found_inf=found_inf, clip=clip, **common)
        return impl.sgd_step_(ps, gs, ss[0], [1e-2] * n, [0.9] * n, [0.0] * n, [0], nesterov=True,
                              grad_scale=scale, found_inf=found_inf, clip=clip, **common)

    graph, value = captured(step)
    for trial, (s, inf, c) in enumerate([(32.0, 0.0, 0.5), (128.0, 1.0, 1.0), (16.0, 0.0, 0.25)]):
        for t in grads:
            t.normal_(generator=g)
        scale.fill_(s)
        found_inf.fill_(inf)
        clip.fill_(c)
        want = [[t.clone() for t in ts] for ts in ([params, grads] + states + [steps])]
        want_value = step(reference, want[0], want[1], want[2:-1], want[-1])
        churn_host_memory()
        graph.replay()
        torch.cuda.synchronize()
        check(f"{kind} value, replay {trial}", value, want_value, 1e-6)
        for name, got_list, want_list in zip(["params", "grads", "state", "state 2", "steps"],
                                             [params, grads] + states + [steps], want):
            for got, expected in zip(got_list, want_list):
                check(f"{kind} {name}, replay {trial}", got, expected, 1e-5)


def test_compiled_reduce_overhead_penalty():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).cuda()
    model_params = list(model.parameters())
    compiled = torch.compile(lambda: l2fast.penalty(model_params, l2=0.1, l1=0.01), mode="reduce-overhead")
    for _ in range(4):
        with torch.no_grad():
            for p in model_params:
                p.normal_()
        got = compiled().clone()
        churn_host_memory()
        check("torch.compile(reduce-overhead) penalty", got, reference.penalty(model_params, [0.1], [0.01]), 1e-6)
