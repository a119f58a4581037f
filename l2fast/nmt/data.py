"""Parallel text: reading and checking files, filtering, token-count batches with length bucketing.

Two layouts are read: line-aligned files ``PREFIX.SRC`` / ``PREFIX.TGT`` (any language pair, UTF-8) and
one ``.tsv`` file with ``source<TAB>target`` per line. Bad data stops with an error naming the file
and line; pairs that are skipped (an empty side, too long) are counted and reported, never dropped
silently.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..trainer.special_tokens import BOS, EOS, PAD
from ..trainer.text import DataError, read_lines


@dataclass
class ParallelText:
    name: str
    src: list[str]
    tgt: list[str]
    line_numbers: list[int]  # 1-based line of each pair in its file(s)


def read_parallel(spec: str, src_suffix: str, tgt_suffix: str) -> ParallelText:
    """Reads a corpus given as a .tsv file or as a prefix of two line-aligned files."""
    if spec.endswith(".tsv"):
        src, tgt = [], []
        for number, line in enumerate(read_lines(spec), start=1):
            columns = line.split("\t")
            if len(columns) != 2:
                raise DataError(f"{spec}:{number}: expected 2 tab-separated columns (source, target), found {len(columns)}")
            src.append(columns[0])
            tgt.append(columns[1])
        name = spec
    else:
        src_path, tgt_path = f"{spec}.{src_suffix}", f"{spec}.{tgt_suffix}"
        src, tgt = read_lines(src_path), read_lines(tgt_path)
        if len(src) != len(tgt):
            shorter = src_path if len(src) < len(tgt) else tgt_path
            raise DataError(
                f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: the files must be line-aligned "
                f"({shorter} ends at line {min(len(src), len(tgt))})"
            )
        name = f"{src_path} / {tgt_path}"
    if not src:
        raise DataError(f"{name}: empty corpus (no sentence pairs)")
    return ParallelText(name, src, tgt, list(range(1, len(src) + 1)))


def drop_empty(text: ParallelText, log=print) -> ParallelText:
    """Removes pairs with an empty side, reporting how many and where."""
    empty = {i for i, (s, t) in enumerate(zip(text.src, text.tgt)) if not (s.strip() and t.strip())}
    if empty:
        log(f"{text.name}: skipped {len(empty)} pairs with an empty side (first at line {text.line_numbers[min(empty)]})")
    keep = [i for i in range(len(text.src)) if i not in empty]
    if not keep:
        raise DataError(f"{text.name}: every pair has an empty side")
    return ParallelText(text.name, [text.src[i] for i in keep], [text.tgt[i] for i in keep], [text.line_numbers[i] for i in keep])


@dataclass
class TokenizedPairs:
    src: list[list[int]]
    tgt: list[list[int]]


def filter_long(pairs: TokenizedPairs, max_len: int, name: str, log=print) -> TokenizedPairs:
    """Keeps pairs with at most max_len subword tokens on each side; reports how many were removed."""
    keep = [i for i, (s, t) in enumerate(zip(pairs.src, pairs.tgt)) if len(s) <= max_len and len(t) <= max_len]
    removed = len(pairs.src) - len(keep)
    if removed:
        log(f"{name}: filtered {removed} of {len(pairs.src)} pairs longer than {max_len} subword tokens")
    if not keep:
        raise DataError(f"{name}: no pair is within max_len = {max_len} tokens")
    return TokenizedPairs([pairs.src[i] for i in keep], [pairs.tgt[i] for i in keep])


def fit_positions(pairs: TokenizedPairs, limit: int, text: ParallelText, log=print) -> TokenizedPairs:
    """Cuts token lists to limit tokens on each side (the model's positions less EOS or BOS), so that
    a long validation or test line cannot stop training; the references stay whole for scoring."""
    long = [i for i, (s, t) in enumerate(zip(pairs.src, pairs.tgt)) if len(s) > limit or len(t) > limit]
    if long:
        log(f"{text.name}: {len(long)} of {len(pairs.src)} pairs longer than {limit} subword tokens (first at line "
            f"{text.line_numbers[long[0]]}) are cut to {limit} tokens for the validation loss and decoding")
    return TokenizedPairs([s[:limit] for s in pairs.src], [t[:limit] for t in pairs.tgt])


def _pack(order: list[int], src_lens: list[int], tgt_lens: list[int], max_tokens: int) -> list[list[int]]:
    """Greedy batches over an ordered index list, so that batch size x longest (padded) length stays
    within max_tokens, counting source and target."""
    batches, batch, longest_src, longest_tgt = [], [], 0, 0
    for i in order:
        s, t = max(longest_src, src_lens[i]), max(longest_tgt, tgt_lens[i])
        if batch and (len(batch) + 1) * (s + t) > max_tokens:
            batches.append(batch)
            batch, s, t = [], src_lens[i], tgt_lens[i]
        batch.append(i)
        longest_src, longest_tgt = s, t
    if batch:
        batches.append(batch)
    return batches


def train_batches(pairs: TokenizedPairs, max_tokens: int, seed: int, epoch: int,
                  rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """This process's batches for one epoch: a function of (seed, epoch) only, so resuming can rebuild
    them exactly. Pairs of similar length share a batch (little padding); ties are broken by a fresh
    shuffle each epoch, and the batch order is shuffled too. With several processes every rank gets
    the same number of batches, interleaved (rank r takes batches r, r + world_size, ...) so that n
    processes step through the same batches as one process accumulating n."""
    rng = random.Random(seed * 1_000_003 + epoch)
    src_lens = [len(s) + 1 for s in pairs.src]  # + EOS
    tgt_lens = [len(t) + 1 for t in pairs.tgt]  # + BOS / EOS
    order = list(range(len(src_lens)))
    rng.shuffle(order)
    order.sort(key=lambda i: (tgt_lens[i], src_lens[i]))
    batches = _pack(order, src_lens, tgt_lens, max_tokens)
    rng.shuffle(batches)
    per_rank = len(batches) // world_size
    if per_rank == 0:
        raise DataError(f"{len(batches)} batches cannot be shared by {world_size} processes; lower train.max_tokens")
    return batches[rank:per_rank * world_size:world_size]


def eval_batches(pairs: TokenizedPairs, indices: list[int], max_tokens: int) -> list[list[int]]:
    """Batches of the given pairs for teacher-forced scoring: sorted by length, at most max_tokens
    padded tokens (source + target) each."""
    src_lens = [len(s) + 1 for s in pairs.src]
    tgt_lens = [len(t) + 1 for t in pairs.tgt]
    order = sorted(indices, key=lambda i: (tgt_lens[i], src_lens[i]))
    return _pack(order, src_lens, tgt_lens, max_tokens)


def decode_batches(src: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Batches of source indices sorted by length (for decoding; callers restore the input order)."""
    lens = [len(s) + 1 for s in src]
    order = sorted(range(len(src)), key=lambda i: lens[i])
    return _pack(order, lens, [0] * len(src), max_tokens)


def pad(seqs: list[list[int]], prefix: list[int] = (), suffix: list[int] = ()) -> torch.Tensor:
    """A (batch, longest) LongTensor of prefix + seq + suffix, right-padded with PAD."""
    rows = [list(prefix) + s + list(suffix) for s in seqs]
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@dataclass
class Batch:
    src: torch.Tensor      # (B, S): tokens + EOS
    tgt_in: torch.Tensor   # (B, T): BOS + tokens
    tgt_out: torch.Tensor  # (B, T): tokens + EOS
    tgt_tokens: int        # non-pad target positions
    src_tokens: int

    def to(self, device) -> "Batch":
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.tgt_tokens, self.src_tokens)


def collate(pairs: TokenizedPairs, indices: list[int]) -> Batch:
    src = [pairs.src[i] for i in indices]
    tgt = [pairs.tgt[i] for i in indices]
    return Batch(
        src=pad(src, suffix=[EOS]),
        tgt_in=pad(tgt, prefix=[BOS]),
        tgt_out=pad(tgt, suffix=[EOS]),
        tgt_tokens=sum(len(t) + 1 for t in tgt),
        src_tokens=sum(len(s) + 1 for s in src),
    )
