"""Tokenizers of the language model: UTF-8 bytes, or a sentencepiece model trained on the training text.

Both have an end-of-document id (EOD) that separates documents in the token stream, both round-trip
any text exactly (sentencepiece with identity normalisation, whitespace kept, and byte fallback for
characters it never saw), and both travel inside every checkpoint as a small state dict.
"""
from __future__ import annotations

from ..trainer.special_tokens import EOS
from ..trainer.text import DataError


class ByteTokenizer:
    """Ids 0-255 are the bytes of the UTF-8 text; 256 ends a document."""

    kind = "bytes"
    eod = 256
    vocab_size = 257

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Text of each id list; ids that are not bytes are dropped, a cut multi-byte character becomes U+FFFD."""
        return [bytes(i for i in row if i < 256).decode("utf-8", errors="replace") for row in ids]

    def state_dict(self) -> dict:
        return {"kind": self.kind}


class SentencePieceTokenizer:
    """A sentencepiece model; its EOS id (3) ends a document."""

    kind = "spm"
    eod = EOS

    def __init__(self, model: bytes):
        import sentencepiece as spm  # only this tokenizer needs it

        self.model = model
        self.processor = spm.SentencePieceProcessor(model_proto=model)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @classmethod
    def train(cls, documents: list[str], vocab_size: int, model_type: str) -> "SentencePieceTokenizer":
        from ..trainer.subword import train_sentencepiece

        # Trained on the documents' lines (train_sentencepiece cuts long ones further): "\n" is a piece
        # of its own, so no piece spans a line end and nothing is lost by the split.
        lines = [line for document in documents for line in document.split("\n") if line]
        try:
            model = train_sentencepiece(lines, vocab_size, model_type, 1.0, normalization_rule_name="identity",
                                        remove_extra_whitespaces=False, byte_fallback=True,
                                        user_defined_symbols=["\n"], allow_whitespace_only_pieces=True)
        except RuntimeError as e:  # sentencepiece's own complaint, e.g. a vocabulary too small for the text
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise DataError(f"sentencepiece could not be trained on the training text: {reason}") from None
        return cls(model)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts, out_type=int)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.processor.decode([[i for i in row if i != self.eod] for row in ids])

    def state_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model}


Tokenizer = ByteTokenizer | SentencePieceTokenizer


def from_state_dict(state: dict) -> Tokenizer:
    return ByteTokenizer() if state["kind"] == "bytes" else SentencePieceTokenizer(state["model"])
