"""Text for the language model: documents read from UTF-8 files, one token stream per split with an
end-of-document token after every document, training blocks of the stream, and their batch order.

A file holds one document per line, or paragraphs separated by blank lines (``--documents``).
Errors name the file and line (invalid UTF-8), or the file (missing, a directory, no documents).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..trainer.text import DataError, read_lines
from .tokenizer import Tokenizer


@dataclass
class Documents:
    name: str
    texts: list[str]

    @property
    def utf8_bytes(self) -> int:
        """Bytes of the text as bits per byte counts them: each document's UTF-8 bytes plus one for the
        separator that ends it (the newline or blank line), which the end-of-document token stands for."""
        return sum(len(text.encode("utf-8")) + 1 for text in self.texts)


def read_documents(path: str | Path, documents: str) -> Documents:
    """The documents of a UTF-8 file (a byte-order mark is dropped); blank lines only separate."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a text file")
    lines = read_lines(path)
    if documents == "lines":
        texts = [line for line in lines if line.strip()]
    else:
        texts, current = [], []
        for line in lines + [""]:
            if line.strip():
                current.append(line)
            elif current:
                texts.append("\n".join(current))
                current = []
    if not texts:
        what = "empty file" if not lines else "only blank lines"
        raise DataError(f"{path}: {what}, no documents")
    return Documents(str(path), texts)


def token_stream(tokenizer: Tokenizer, docs: Documents) -> torch.Tensor:
    """EOD, then each document's tokens followed by EOD: every document token and every document end
    is predicted from what came before, the first document's too. int32, to halve the memory of a
    large corpus (batches are widened to int64)."""
    ids = [tokenizer.eod]
    for row in tokenizer.encode(docs.texts):
        ids.extend(row)
        ids.append(tokenizer.eod)
    return torch.tensor(ids, dtype=torch.int32)


def block_count(stream: torch.Tensor, context: int) -> int:
    """Training blocks in a stream: block i is tokens [i*context, (i+1)*context] (inputs and next tokens)."""
    return (stream.numel() - 1) // context


def check_trainable(stream: torch.Tensor, context: int, batch_size: int, world_size: int, name: str) -> None:
    blocks = block_count(stream, context)
    if blocks < world_size:
        raise DataError(f"{name}: {stream.numel()} tokens make {blocks} blocks of model.context = {context}, too few "
                        f"for {world_size} process(es); give more text or a smaller --context")


def train_batches(blocks: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """This process's batches of block indices for one epoch: a function of (seed, epoch) only, so a resumed
    run rebuilds them exactly. Blocks are shuffled afresh every epoch; a last partial batch is dropped
    (its blocks come first in another epoch's order). With several processes rank r takes batches
    r, r + world_size, ..., so n processes step through the batches one process accumulating n would."""
    order = list(range(blocks))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    size = min(batch_size, blocks // world_size)
    batches = [order[i:i + size] for i in range(0, len(order) - size + 1, size)]
    per_rank = len(batches) // world_size
    return batches[rank:per_rank * world_size:world_size]


def collate_blocks(stream: torch.Tensor, indices: list[int], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, (len(indices), context) each, as int64."""
    rows = torch.stack([stream[i * context:(i + 1) * context + 1] for i in indices]).long()
    return rows[:, :-1], rows[:, 1:]


def eval_windows(stream: torch.Tensor, context: int) -> list[tuple[int, int]]:
    """(start, length) of consecutive windows that together predict every token of the stream but the first,
    each exactly once: window tokens [start, start + length) predict [start + 1, start + length + 1).
    Each window starts with no earlier context, so the loss is that of a model reading in chunks."""
    predicted = stream.numel() - 1
    return [(start, min(context, predicted - start)) for start in range(0, predicted, context)]
