"""Transformer layers both trainers build from: multi-head self-attention through
``F.scaled_dot_product_attention`` (with a key/value cache for decoding and optional rotary
positions), the feed-forward layer, and the pre-norm block (self-attention then feed-forward, each
a residual branch behind a layer norm)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import Dropout


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE): each pair of channels (i, i + head_dim/2) of queries and keys is
    rotated by the angle position / 10000^(2i/head_dim), so attention scores depend on the distance
    between positions only. Tables for max_positions positions are built once (not saved)."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head width, got {head_dim}")
        inverse = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inverse[None, :]
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    @property
    def max_positions(self) -> int:
        return self.cos.size(0)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (batch, heads, length, head_dim) at positions (length,), or (batch, length) for rows that
        start at different positions (a left-padded batch)."""
        cos, sin = (t[positions].to(x.dtype) for t in (self.cos, self.sin))
        if positions.dim() == 2:  # one row of angles per sequence, shared by its heads
            cos, sin = cos[:, None], sin[:, None]
        first, second = x.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float, rotary: Rotary | None = None):
        super().__init__()
        self.heads, self.dropout, self.rotary = heads, dropout, rotary
        self.qkv = nn.Linear(d_model, 3 * d_model)  # one matmul for all three projections
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None, causal=False, cache: dict | None = None, positions: torch.Tensor | None = None):
        """positions: of x's tokens, which rotary attention needs (the model that owns the table knows them)."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.rotary is not None:
            if positions is None:
                raise ValueError("rotary attention needs the positions of its tokens")
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        if cache is not None:  # incremental decoding: x is the newest position only
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(merge_heads(y))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float):
        super().__init__()
        self.inner, self.outer, self.dropout = nn.Linear(d_model, ff_dim), nn.Linear(ff_dim, d_model), Dropout(dropout)

    def forward(self, x):
        return self.outer(self.dropout(F.relu(self.inner(x))))


class Block(nn.Module):
    """Pre-norm self-attention block: the translation encoder's layer and the language model's layer."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float, attention_dropout: float,
                 rotary: Rotary | None = None):
        super().__init__()
        self.attn_norm, self.ff_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, attention_dropout, rotary)
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.dropout = Dropout(dropout)

    def forward(self, x, mask=None, causal=False, cache: dict | None = None, positions: torch.Tensor | None = None):
        x = x + self.dropout(self.attn(self.attn_norm(x), mask=mask, causal=causal, cache=cache, positions=positions))
        return x + self.dropout(self.ff(self.ff_norm(x)))
