"""Dropout whose mask is cheap to draw on a CPU.

For a Bernoulli mask on the CPU, torch draws one Mersenne-Twister number per element. Here one
64-bit draw yields the random bytes of 8 elements, and an element is kept when its byte is at
least ``round(256 p)``: forward and backward over 4096 x 1024 float32 values took 26.3 ms instead
of ``F.dropout``'s 42.9 ms on a 2-core AVX2 machine (``bench/bench_dropout.py``). The rate is
thus ``p`` rounded to a multiple of 1/256, and kept values are scaled by the inverse of the exact
keep probability, so the output's expectation equals the input. Masks come from torch's default
generator: seeding and saving its state reproduce them. Off the CPU this is plain ``F.dropout``,
which is a fused kernel there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def random_bytes(shape: torch.Size) -> torch.Tensor:
    """Uniform uint8 values of the given shape, 8 per draw of torch's default CPU generator."""
    count = shape.numel()
    words = torch.empty((count + 7) // 8, dtype=torch.int64).random_(torch.iinfo(torch.int64).min, None)
    return words.view(torch.uint8)[:count].view(shape)


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = min(round(p * 256), 255)  # bytes below it are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if self.threshold == 0:  # p below 1/512 rounds to no dropout
            return x
        keep = random_bytes(x.shape) >= self.threshold
        return torch.where(keep, x * (256.0 / (256 - self.threshold)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"
