"""On a GPU: every l2fast op captured into a CUDA graph and replayed with new tensor values.

The ops pass their metadata as kernel arguments, so a replay must read the captured tensors however
host memory (pinned or not) has been reused since. Exits non-zero on the first wrong value.
Run by bench/gpu.sh; `python bench/cuda_graph_check.py` alone works too.
"""
import torch

import l2fast
from l2fast import reference

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


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
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

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph asks
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        norms, l1, penalty, value, backward = step()

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
    print("CUDA graph capture/replay: all ops read the captured tensors (3 replays, 1,004 tensors)")


if __name__ == "__main__":
    main()
