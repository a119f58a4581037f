"""Batched greedy and beam search over the decoder's key/value cache, and file-sized translation.

Both searches share the same constraints (never PAD or BOS; EOS forced at the length limit), so beam
search with one beam makes exactly the greedy choices.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .data import decode_batches, pad
from .model import Transformer
from ..trainer.special_tokens import BOS, EOS, PAD


def _length_limits(src: torch.Tensor, a: float, b: int, max_positions: int) -> torch.Tensor:
    """Most tokens (EOS excluded) each hypothesis may have: a * source length + b, within the model."""
    src_len = (src != PAD).sum(dim=1)
    return (src_len.float() * a + b).long().clamp(max=max_positions - 2)


def _constrain(logits: torch.Tensor, step: int, limits: torch.Tensor) -> torch.Tensor:
    logits[:, PAD] = float("-inf")
    logits[:, BOS] = float("-inf")
    at_limit = limits <= step
    if at_limit.any():
        eos = logits[:, EOS].clone()
        logits[at_limit] = float("-inf")
        logits[at_limit, EOS] = eos[at_limit]
    return logits


def _strip(rows: torch.Tensor) -> list[list[int]]:
    """Token lists without BOS, cut before the first EOS."""
    out = []
    for row in rows.tolist():
        row = row[1:]
        out.append(row[:row.index(EOS)] if EOS in row else [t for t in row if t != PAD])
    return out


@torch.no_grad()
def greedy(model: Transformer, src: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
    memory, mask = model.encode(src)
    limits = _length_limits(src, max_len_a, max_len_b, model.tgt_embed.max_positions)
    cache = model.new_cache()
    tokens = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
    finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for step in range(int(limits.max()) + 1):
        logits = model.output(model.decode(tokens[:, -1:], memory, mask, cache, start=step)[:, 0]).float()
        choice = _constrain(logits, step, limits).argmax(dim=-1)
        choice = choice.masked_fill(finished, PAD)
        tokens = torch.cat([tokens, choice[:, None]], dim=1)
        finished |= choice == EOS
        if finished.all():
            break
    return _strip(tokens)


@torch.no_grad()
def beam_search(model: Transformer, src: torch.Tensor, beam: int, length_penalty: float = 1.0,
                max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
    """Best hypothesis per sentence by log-probability / length**length_penalty.

    Finished hypotheses stay in the beam (extended only by PAD, at no cost) and compete with live ones
    by normalised score every step, so the length penalty acts during search, not only at the end.
    """
    batch, device = src.size(0), src.device
    memory, mask = model.encode(src)
    memory, mask = memory.repeat_interleave(beam, 0), mask.repeat_interleave(beam, 0)
    limits = _length_limits(src, max_len_a, max_len_b, model.tgt_embed.max_positions).repeat_interleave(beam)
    cache = model.new_cache()
    rows = batch * beam
    tokens = torch.full((rows, 1), BOS, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    scores = scores.view(-1)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, device=device)
    row_base = torch.arange(batch, device=device)[:, None] * beam
    for step in range(int(limits.max()) + 1):
        logits = model.output(model.decode(tokens[:, -1:], memory, mask, cache, start=step)[:, 0])
        logp = _constrain(F.log_softmax(logits.float(), dim=-1), step, limits)
        logp[finished] = float("-inf")
        logp[finished, PAD] = 0.0
        vocab = logp.size(1)
        candidates = scores[:, None] + logp
        new_lengths = lengths + (~finished).float()
        ranked = candidates / new_lengths.clamp(min=1.0)[:, None] ** length_penalty
        _, best = ranked.view(batch, beam * vocab).topk(beam, dim=1)
        source_row = (row_base + best // vocab).view(-1)
        choice = (best % vocab).view(-1)
        scores = candidates.view(batch, beam * vocab).gather(1, best).view(-1)
        tokens = torch.cat([tokens[source_row], choice[:, None]], dim=1)
        finished = finished[source_row] | (choice == EOS)
        lengths = new_lengths[source_row]
        model.reorder_cache(cache, source_row)
        if finished.all():
            break
    final = (scores / lengths.clamp(min=1.0) ** length_penalty).view(batch, beam)
    winner = (row_base[:, 0] + final.argmax(dim=1))
    return _strip(tokens[winner])


def translate_ids(model: Transformer, src_ids: list[list[int]], beam: int, length_penalty: float,
                  max_len_a: float, max_len_b: int, max_tokens: int, device, autocast=None,
                  progress=None) -> list[list[int]]:
    """Output token ids for every source, in input order, decoded in length-sorted batches."""
    was_training = model.training
    model.eval()
    limit = model.src_embed.max_positions - 1
    out: list[list[int] | None] = [None] * len(src_ids)
    try:
        for indices in decode_batches(src_ids, max_tokens):
            src = pad([src_ids[i][:limit] for i in indices], suffix=[EOS]).to(device)
            with autocast() if autocast else contextlib.nullcontext():
                if beam == 1:
                    hyps = greedy(model, src, max_len_a, max_len_b)
                else:
                    hyps = beam_search(model, src, beam, length_penalty, max_len_a, max_len_b)
            for i, hyp in zip(indices, hyps):
                out[i] = hyp
            if progress is not None:
                progress.update(len(indices))
    finally:
        model.train(was_training)
    return out
