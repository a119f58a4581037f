"""Cutting long lines for sentencepiece's trainer, which skips every input over 4192 bytes."""
import pytest
import sentencepiece as spm

from l2fast.lm.demo_text import generate as demo_text
from l2fast.trainer.subword import train_sentencepiece, training_pieces


@pytest.mark.parametrize("line, want", [
    ("", [""]),
    ("abc", ["abc"]),
    ("ab cd ef", ["ab", " cd", " ef"]),       # cut before the last space of each 4-character window
    ("abcdefghij", ["abcd", "efgh", "ij"]),   # no space: cut between characters
    ("  ab", ["  ab"]),
    ("ab  cdefgh", ["ab ", " cde", "fgh"]),
])
def test_training_pieces_cut_before_spaces(line, want):
    assert training_pieces(line, limit=4) == want
    assert "".join(training_pieces(line, limit=4)) == line


def test_training_pieces_stay_under_sentencepiece_byte_limit():
    line = ("ж" * 3000 + " ") * 3 + "\U0001F600" * 2000  # 2- and 4-byte characters, long words
    pieces = training_pieces(line)
    assert "".join(pieces) == line and max(len(p.encode()) for p in pieces) <= 4192


def test_a_corpus_of_long_lines_trains():
    lines = [" ".join(demo_text(150, seed)) for seed in range(4)]  # without the cut: no input at all
    assert all(len(line.encode()) > 4192 for line in lines)
    processor = spm.SentencePieceProcessor(model_proto=train_sentencepiece(lines, 400))
    assert processor.decode(processor.encode(lines)) == lines
    assert sum(map(len, processor.encode(lines))) < sum(map(len, lines)) / 2  # real subwords
