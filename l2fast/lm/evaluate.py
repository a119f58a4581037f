"""Scoring text: summed negative log-likelihood (float64) of every token of a stream, and from it the
loss per token, the perplexity and the bits per byte.

Bits per byte = total nats / ln 2 / the UTF-8 bytes of the text (``Documents.utf8_bytes``): it does
not depend on how the text was cut into tokens, so models with different tokenizers compare.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import eval_windows
from .model import DecoderLM


@dataclass(frozen=True)
class Score:
    nats: float  # summed NLL
    tokens: int  # predicted tokens
    utf8_bytes: int

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.utf8_bytes

    def line(self) -> str:
        return f"loss {self.loss:.4f}  ppl {self.perplexity:.3f}  bits/byte {self.bits_per_byte:.4f}"

    def as_dict(self, prefix: str) -> dict:
        return {f"{prefix}_loss": self.loss, f"{prefix}_ppl": self.perplexity, f"{prefix}_bpb": self.bits_per_byte,
                f"{prefix}_tokens": self.tokens, f"{prefix}_bytes": self.utf8_bytes}


@torch.no_grad()
def stream_nll(model: DecoderLM, stream: torch.Tensor, device: torch.device, batch_windows: int = 16,
               autocast: Callable = nullcontext, windows: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, int]:
    """Summed NLL (a float64 device tensor) of every token of stream but the first, and their count; or of
    the given windows only (as eval_windows makes them)."""
    was_training = model.training
    model.eval()
    windows = eval_windows(stream, model.context) if windows is None else windows
    total = torch.zeros((), dtype=torch.float64, device=device)
    by_length: dict[int, list[int]] = {}
    for start, length in windows:
        by_length.setdefault(length, []).append(start)
    for length, starts in by_length.items():
        for first in range(0, len(starts), batch_windows):
            rows = torch.stack([stream[s:s + length + 1] for s in starts[first:first + batch_windows]]).long().to(device)
            with autocast():
                logits = model(rows[:, :-1])
            nll = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="none")
            total += nll.double().sum()  # summed in float64: a long text has millions of terms
    model.train(was_training)
    return total, sum(length for _, length in windows)


def score_stream(model: DecoderLM, stream: torch.Tensor, utf8_bytes: int, device: torch.device,
                 autocast: Callable = nullcontext) -> Score:
    nats, tokens = stream_nll(model, stream, device, autocast=autocast)
    return Score(float(nats), tokens, utf8_bytes)
