"""Pre-norm decoder-only Transformer: token embedding (tied to the output layer), learned or rotary
positions, causal self-attention blocks, a final layer norm; a key/value cache for generation.

Sizes run from a tiny CPU model to GPT-2 small (d_model 768, 12 heads, 12 layers, ff 3072, context
1024) by configuration alone. Weights start as in GPT-2: normal(0, 0.02), the residual output
projections scaled by 1/sqrt(2 * layers) so the residual stream's variance does not grow with depth.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..trainer.dropout import Dropout
from ..trainer.layers import Block, Rotary
from .config import ModelConfig

Cache = list[dict[str, torch.Tensor]]


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        rotary = Rotary(cfg.d_model // cfg.heads, cfg.context) if cfg.positions == "rotary" else None
        self.positions = nn.Embedding(cfg.context, cfg.d_model) if rotary is None else None
        self.dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.attention_dropout, rotary)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.output = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.output.weight = self.embed.weight
        residual_std = 0.02 / math.sqrt(2 * cfg.layers)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                nn.init.normal_(p, std=residual_std if name.endswith(("attn.out.weight", "ff.outer.weight")) else 0.02)

    @property
    def context(self) -> int:
        return self.cfg.context

    def forward(self, ids: torch.Tensor, cache: Cache | None = None, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for ids (B, T). With a cache, ids continue the cached positions: a whole
        prompt into an empty cache, then one token at a time. pad (B,): how many of each row's first
        positions (cached ones included) are left padding, which no real token attends to and which
        do not count as positions, so each row gives the logits it would give alone."""
        start = cache[0]["k"].size(2) if cache is not None and "k" in cache[0] else 0
        length = ids.size(1)
        if start + length > self.context:
            raise ValueError(f"sequence of {start + length} tokens exceeds model.context = {self.context}")
        if start and length > 1:
            raise ValueError("a cache that already holds positions takes one new token at a time")
        index = torch.arange(start, start + length, device=ids.device)
        positions, mask = index, None
        if pad is not None:
            positions = (index[None, :] - pad[:, None]).clamp(min=0)
            mask = padded_attention_mask(index, start + length, pad)
        x = self.embed(ids)
        if self.positions is not None:
            x = x + self.positions(positions)
        x = self.dropout(x)
        # Causal within the new tokens; one new token attends to every cached position.
        causal = length > 1 and mask is None
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, causal=causal, cache=None if cache is None else cache[i], positions=positions)
        return self.output(self.norm(x))

    def new_cache(self) -> Cache:
        return [{} for _ in self.blocks]


def padded_attention_mask(index: torch.Tensor, keys: int, pad: torch.Tensor) -> torch.Tensor:
    """Which of the first `keys` positions (B, 1, T, keys) each query at positions `index` (T,) may
    attend to in rows left-padded by pad (B,): the real ones up to itself. A padding query attends to
    itself alone, so that its row of scores is never empty (its output is never used)."""
    key = torch.arange(keys, device=index.device)
    causal = key[None, :] <= index[:, None]  # (T, keys)
    real = key[None, :] >= pad[:, None]  # (B, keys)
    itself = key[None, :] == index[:, None]
    return ((causal[None] & real[:, None, :]) | itself[None])[:, None]
