"""Text generation: greedy decoding or sampling (temperature, top-k, top-p), seeded, for batches of
prompts, with a key/value cache (or, for checking it, full recomputation at every step).

Prompts of equal length share a batch, so no row needs padding and each row's positions are its own.
Every prompt starts after an end-of-document token, as every training document does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import DecoderLM


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # keep the most likely tokens whose probabilities sum to at least p (1 = all)

    def __post_init__(self):
        if not (self.temperature >= 0 and self.temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def next_tokens(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of logits (B, vocab)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits.double() / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.size(-1):
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
        above = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = above >= sampling.top_p  # the most likely token is always kept (above = 0)
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def generate_batch(model: DecoderLM, prompt: torch.Tensor, max_new: int, eod: int, sampling: Sampling,
                   generator: torch.Generator, use_cache: bool = True, pad: torch.Tensor | None = None) -> list[list[int]]:
    """New tokens for each row of prompt (B, P), stopping at EOD (not included) or after max_new tokens.
    pad (B,): how many of each row's first tokens are left padding (DecoderLM.forward)."""
    model.eval()
    cache = model.new_cache() if use_cache else None
    sequence, finished = prompt, torch.zeros(prompt.size(0), dtype=torch.bool, device=prompt.device)
    logits = model(prompt, cache, pad)[:, -1]
    out = []
    for step in range(max_new):
        token = next_tokens(logits, sampling, generator)
        token = token.masked_fill(finished, eod)
        out.append(token)
        finished |= token == eod
        if bool(finished.all()) or step == max_new - 1:
            break
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        logits = (model(token[:, None], cache, pad) if use_cache else model(sequence, None, pad))[:, -1]
    rows = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(prompt.size(0))]
    return [row[:row.index(eod)] if eod in row else row for row in rows]


def generate(model: DecoderLM, prompts: list[list[int]], max_new: int, eod: int, sampling: Sampling, seed: int,
             device: torch.device, use_cache: bool = True, batch_size: int = 64) -> list[list[int]]:
    """New token ids for each prompt (in input order); each prompt gets EOD in front. Generation stops
    where the model's context is full, so max_new is cut for a long prompt, and a prompt longer than
    the context keeps its last tokens.

    Prompts are batched in order of length, the shorter ones of a batch padded on the left; each row
    gives what it would give alone (greedy; a sampled row draws from the same distribution). A prompt
    too long to take max_new tokens is batched only with prompts of its own length, so that no row
    loses room to a longer neighbour."""
    generator = torch.Generator().manual_seed(seed)
    rows = [[eod] + p for p in prompts]
    rows = [r[-(model.context - 1):] for r in rows]  # room for at least one new token
    out: list[list[int] | None] = [None] * len(rows)
    batches: dict[int, list[int]] = {}  # prompts that fit max_new under key 0, longer ones by their length
    for i in sorted(range(len(rows)), key=lambda i: len(rows[i])):
        batches.setdefault(len(rows[i]) if len(rows[i]) + max_new > model.context else 0, []).append(i)
    for indices in batches.values():
        for first in range(0, len(indices), batch_size):
            chunk = indices[first:first + batch_size]
            length = max(len(rows[i]) for i in chunk)
            pads = [length - len(rows[i]) for i in chunk]
            prompt = torch.tensor([[eod] * n + rows[i] for n, i in zip(pads, chunk)], dtype=torch.long, device=device)
            pad = torch.tensor(pads, device=device) if any(pads) else None
            new = generate_batch(model, prompt, min(max_new, model.context - length), eod, sampling, generator, use_cache, pad)
            for i, tokens in zip(chunk, new):
                out[i] = tokens
    return out
