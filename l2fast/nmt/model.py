"""Pre-norm Transformer encoder-decoder with fused attention and a key/value cache for decoding.

Sizes run from a tiny CPU model to Transformer-base (d_model 512, 8 heads, 6+6 layers, ff 2048) by
configuration alone. Attention goes through ``F.scaled_dot_product_attention``, which picks the
fastest kernel the device has.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..trainer.dropout import Dropout
from ..trainer.layers import Block, FeedForward, SelfAttention, merge_heads, split_heads
from ..trainer.special_tokens import PAD
from .config import ModelConfig

Cache = list[dict[str, torch.Tensor]]


class CrossAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x, memory, mask, cache: dict | None = None):
        if cache is not None and "k" in cache:  # the source does not change while decoding
            k, v = cache["k"], cache["v"]
        else:
            k, v = (split_heads(t, self.heads) for t in self.kv(memory).chunk(2, dim=-1))
            if cache is not None:
                cache["k"], cache["v"] = k, v
        q = split_heads(self.q(x), self.heads)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(merge_heads(y))


class EncoderLayer(Block):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.attention_dropout)

    def forward(self, x, mask):
        return super().forward(x, mask=mask)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_norm, self.cross_norm, self.ff_norm = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = SelfAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.cross_attn = CrossAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x, memory, src_mask, cache: dict | None = None):
        # Training sees whole right-padded targets, so a causal mask also hides every padded key
        # from every real query; while decoding, the one new position may see the whole cache.
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})
        x = x + self.dropout(self.self_attn(self.self_norm(x), causal=cache is None, cache=self_cache))
        x = x + self.dropout(self.cross_attn(self.cross_norm(x), memory, src_mask, cache=cross_cache))
        return x + self.dropout(self.ff(self.ff_norm(x)))


def sinusoids(length: int, width: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(d_model), plus positions, then dropout."""

    def __init__(self, tokens: nn.Embedding, cfg: ModelConfig):
        super().__init__()
        self.tokens, self.scale = tokens, math.sqrt(cfg.d_model)
        if cfg.positions == "learned":
            self.learned = nn.Embedding(cfg.max_positions, cfg.d_model)
            nn.init.normal_(self.learned.weight, std=cfg.d_model ** -0.5)
        else:
            self.register_buffer("table", sinusoids(cfg.max_positions, cfg.d_model), persistent=False)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        length = ids.size(1)
        if start + length > self.max_positions:
            raise ValueError(f"sequence of {start + length} positions exceeds model.max_positions = {self.max_positions}")
        positions = self.learned.weight if hasattr(self, "learned") else self.table
        return self.dropout(self.tokens(ids) * self.scale + positions[start:start + length])

    @property
    def max_positions(self) -> int:
        return (self.learned.weight if hasattr(self, "learned") else self.table).size(0)


def _token_embedding(vocab: int, d_model: int) -> nn.Embedding:
    table = nn.Embedding(vocab, d_model, padding_idx=PAD)
    nn.init.normal_(table.weight, std=d_model ** -0.5)
    with torch.no_grad():
        table.weight[PAD].zero_()
    return table


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        if cfg.tie == "all" and src_vocab != tgt_vocab:
            raise ValueError("model.tie = 'all' needs one joint vocabulary")
        self.cfg = cfg
        tgt_tokens = _token_embedding(tgt_vocab, cfg.d_model)
        src_tokens = tgt_tokens if cfg.tie == "all" else _token_embedding(src_vocab, cfg.d_model)
        self.src_embed, self.tgt_embed = Embedding(src_tokens, cfg), Embedding(tgt_tokens, cfg)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.output = nn.Linear(cfg.d_model, tgt_vocab, bias=False)
        if cfg.tie == "none":
            nn.init.normal_(self.output.weight, std=cfg.d_model ** -0.5)
        else:
            self.output.weight = tgt_tokens.weight
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name and "output" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (B, S, d) and the key mask (B, 1, 1, S) that hides source padding."""
        mask = (src != PAD)[:, None, None, :]
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(self, tgt_in, memory, src_mask, cache: Cache | None = None, start: int = 0) -> torch.Tensor:
        """Decoder states (B, T, d); with a cache, tgt_in holds only the positions from start on."""
        x = self.tgt_embed(tgt_in, start)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, src_mask, None if cache is None else cache[i])
        return self.decoder_norm(x)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Decoder states for teacher forcing; ``self.output`` turns (selected) states into logits."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def new_cache(self) -> Cache:
        return [{} for _ in self.decoder]

    @staticmethod
    def reorder_cache(cache: Cache, index: torch.Tensor) -> None:
        """Keeps the cache rows of the given hypotheses (beam search reshuffles them every step)."""
        for layer in cache:
            for part in layer.values():
                for key in part:
                    part[key] = part[key].index_select(0, index)

