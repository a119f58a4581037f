"""Computes an L2 penalty and its gradient over a real model's parameters (a Transformer
encoder-decoder of Transformer-base size) the naive way and with l2fast, and prints both timings."""
import statistics
import time

import torch

import l2fast

LAM = 1e-4


def median_ms(fn, reps=7):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    torch.manual_seed(0)
    model = torch.nn.Transformer(d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    count = sum(p.numel() for p in params)
    print(f"model: torch.nn.Transformer, {len(params)} tensors, {count / 1e6:.1f}M parameters; backend {l2fast.backend()}")

    def naive():
        (LAM / 2 * sum(p.pow(2).sum() for p in params)).backward()

    def fused():
        return l2fast.add_penalty_grad_(params, l2=LAM)

    exact = LAM / 2 * sum(p.detach().double().pow(2).sum().item() for p in params)
    naive_value = (LAM / 2 * sum(p.detach().pow(2).sum() for p in params)).item()
    fused_value = fused().item()
    print(f"penalty value: float64 {exact:.10g} | naive float32 {naive_value:.10g} | l2fast {fused_value:.10g}")
    naive_ms, fused_ms = median_ms(naive), median_ms(fused)
    print(f"penalty + gradient: naive autograd {naive_ms:.1f} ms | l2fast fused {fused_ms:.1f} ms "
          f"| {naive_ms / fused_ms:.1f}x faster")


if __name__ == "__main__":
    main()
