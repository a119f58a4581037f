"""Subword tokenization with sentencepiece: trained on the training data, saved beside the model.

One joint model for both languages, or one per language, with the special ids of
``special_tokens`` in every model. The serialized models also travel inside every checkpoint, so
translating needs nothing but the checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from ..trainer.special_tokens import BOS, EOS, PAD, UNK  # noqa: F401 (the ids every model has, for callers)
from ..trainer.subword import train_sentencepiece


class Tokenizer:
    """Source and target subword models (the same object when the vocabulary is joint)."""

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None):
        self.src_model = src_model
        self.tgt_model = tgt_model
        self.src = spm.SentencePieceProcessor(model_proto=src_model)
        self.tgt = self.src if tgt_model is None else spm.SentencePieceProcessor(model_proto=tgt_model)

    @property
    def joint(self) -> bool:
        return self.tgt_model is None

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    @classmethod
    def train(cls, src_lines: list[str], tgt_lines: list[str], vocab_size: int, joint: bool,
              model_type: str = "unigram", character_coverage: float = 1.0) -> "Tokenizer":
        if joint:
            return cls(train_sentencepiece(src_lines + tgt_lines, vocab_size, model_type, character_coverage))
        return cls(train_sentencepiece(src_lines, vocab_size, model_type, character_coverage),
                   train_sentencepiece(tgt_lines, vocab_size, model_type, character_coverage))

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        return self.src.encode(lines, out_type=int)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        return self.tgt.encode(lines, out_type=int)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(ids)

    def state_dict(self) -> dict:
        return {"src_model": self.src_model, "tgt_model": self.tgt_model}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Tokenizer":
        return cls(state["src_model"], state["tgt_model"])

    def save(self, directory: str | Path) -> list[Path]:
        """Writes joint.model, or src.model and tgt.model, into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {"joint.model": self.src_model} if self.joint else {"src.model": self.src_model, "tgt.model": self.tgt_model}
        for name, blob in files.items():
            (directory / name).write_bytes(blob)
        return [directory / name for name in files]

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        directory = Path(directory)
        if (directory / "joint.model").exists():
            return cls((directory / "joint.model").read_bytes())
        return cls((directory / "src.model").read_bytes(), (directory / "tgt.model").read_bytes())
