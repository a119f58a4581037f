"""Training sentencepiece models with the special ids of ``special_tokens`` (PAD 0, UNK 1, BOS 2, EOS 3)."""
from __future__ import annotations

import io

import sentencepiece as spm

from .special_tokens import BOS, EOS, PAD, UNK


def train_sentencepiece(lines: list[str], vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 1.0, **options) -> bytes:
    """A sentencepiece model trained on lines, as serialized bytes.

    hard_vocab_limit=False lets a small corpus get a smaller vocabulary instead of an error; digits
    are split so numbers are spelled digit by digit and generalise to unseen values. ``options``: more
    sentencepiece trainer options.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
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
