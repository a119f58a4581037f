"""Training sentencepiece models with the special ids of ``special_tokens`` (PAD 0, UNK 1, BOS 2, EOS 3)."""
from __future__ import annotations

import io

import sentencepiece as spm

from .special_tokens import BOS, EOS, PAD, UNK

# sentencepiece skips (without a word) every training input longer than 4192 bytes; pieces of at most
# this many characters stay under it whatever their UTF-8 length.
TRAINING_PIECE_CHARS = 1000


def training_pieces(line: str, limit: int = TRAINING_PIECE_CHARS) -> list[str]:
    """line cut into pieces of at most `limit` characters for sentencepiece's trainer: each cut just
    before a space where the window has one (a subword never spans a space, so no piece of the
    vocabulary is lost), else between two characters."""
    pieces, start = [], 0
    while len(line) - start > limit:
        cut = line.rfind(" ", start + 1, start + limit + 1)
        cut = cut if cut > start else start + limit
        pieces.append(line[start:cut])
        start = cut
    return pieces + [line[start:]]


def train_sentencepiece(lines: list[str], vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 1.0, **options) -> bytes:
    """A sentencepiece model trained on lines (long ones in training_pieces), as serialized bytes.

    hard_vocab_limit=False lets a small corpus get a smaller vocabulary instead of an error; digits
    are split so numbers are spelled digit by digit and generalise to unseen values. ``options``: more
    sentencepiece trainer options.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(piece for line in lines for piece in training_pieces(line)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        split_digits=True,
        hard_vocab_limit=False,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=2,
        minloglevel=2,
        **options,
    )
    return model.getvalue()
