"""Every l2fast op and both optimizer steps once, on small tensors that reach every path of the CUDA
kernels: several launch tables, ragged tails, misaligned views (no packs), mixed dtypes, zero
coefficients, GradScaler's scalars and a clip coefficient, a step skipped by found_inf. Small and
quick, so that compute-sanitizer's memcheck, initcheck, racecheck and synccheck can run it (bench/gpu.sh,
stage "sanitizer-*"); each result is checked against l2fast.reference. Exits non-zero on a mismatch.

    python bench/gpu_smoke.py [--device cuda]
"""
import argparse

import torch

from l2fast import reference

ops = torch.ops.l2fast
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def close(name, got, want):
    got, want = (t if isinstance(t, (list, tuple)) else [t] for t in (got, want))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), w.double().cpu(), rtol=1e-2, atol=1e-5, msg=lambda m: f"{name}: {m}")


def tensors(device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    sizes = [16384 + 7, 5, 0, 3 * 16384, 97] + [1 + i % 13 for i in range(500)]  # 505 tensors: 2 launch tables
    xs = []
    for i, n in enumerate(sizes):
        dtype = DTYPES[i % len(DTYPES)]
        base = torch.randn(n + 1, device=device, generator=g).to(dtype)
        xs.append(base[1:] if i % 3 == 0 else base[:n])  # every third misaligned
    return xs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args().device
    xs = tensors(device, 0)
    coeffs = [0.0 if i % 7 == 3 else 0.5 for i in range(len(xs))]
    for op in ("sq_norm", "l1_norm"):
        for per_tensor in (False, True):
            close(op, getattr(ops, op)(xs, coeffs, per_tensor), getattr(reference, op)(xs, coeffs, per_tensor))
    close("penalty", ops.penalty(xs, coeffs, [0.01]), reference.penalty(xs, coeffs, [0.01]))
    scale = torch.tensor(2.0, device=device)
    close("penalty_grad", ops.penalty_grad(xs, scale, coeffs, [0.01]), reference.penalty_grad(xs, scale, coeffs, [0.01]))
    grads, want_grads = ([torch.ones_like(x) for x in xs] for _ in range(2))
    close("add_penalty_grad_", ops.add_penalty_grad_(xs, grads, coeffs, [0.01]),
          reference.add_penalty_grad_(xs, want_grads, coeffs, [0.01]))
    close("add_penalty_grad_ grads", grads, want_grads)
    ys, want_ys = ([x.clone() for x in xs] for _ in range(2))
    close("decay_", ops.decay_(ys, [0.1], coeffs), reference.decay_(want_ys, [0.1], coeffs))
    close("decay_ weights", ys, want_ys)

    params = [x.float() for x in tensors(device, 1)[:160]]  # 2 launch tables of the steps
    n = len(params)
    grads = [torch.randn_like(p) for p in params]
    for found_inf in (0.0, 1.0):
        scalars = dict(grad_scale=torch.tensor(64.0, device=device),
                       found_inf=torch.tensor([found_inf], device=device),
                       clip=torch.tensor(0.75, device=device, dtype=torch.float64))
        common = dict(l2=[1e-2] * n, l1=[1e-3] * n, decay=[1e-4] * n, value_l2=[1e-2] * n, maximize=False, **scalars)
        for impl_name, impl in (("native", ops), ("reference", reference)):
            ps, gs = [p.clone() for p in params], [g.clone() for g in grads]
            state = [[torch.zeros_like(p) for p in params] for _ in range(3)]
            steps = [torch.zeros((), device=device) for _ in params]
            adam = impl.adam_step_(ps, gs, *state, steps, [1e-3] * n, [0.9] * n, [0.999] * n, [1e-8] * n, **common)
            sgd = impl.sgd_step_(ps, gs, state[0], [1e-2] * n, [0.9] * n, [0.0] * n, [0], nesterov=True, **common)
            if impl_name == "native":
                got = [adam, sgd] + ps + gs + state[0] + state[2] + steps
            else:
                close(f"steps, found_inf={found_inf}", got, [adam, sgd] + ps + gs + state[0] + state[2] + steps)
    print(f"gpu_smoke: every op and both steps on {device} match the reference")


if __name__ == "__main__":
    main()
