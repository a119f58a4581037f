"""Subword tokenizer: training, round trip, separate vocabularies, persistence."""
import pytest

pytest.importorskip("sentencepiece")

from l2fast.nmt.demo_corpus import generate  # noqa: E402
from l2fast.nmt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer  # noqa: E402

PAIRS = generate(400)
SRC, TGT = [s for s, _ in PAIRS], [t for _, t in PAIRS]


@pytest.fixture(scope="module")
def joint():
    return Tokenizer.train(SRC, TGT, vocab_size=300, joint=True)


def test_round_trip_and_special_ids(joint):
    assert joint.joint and joint.src_vocab_size == joint.tgt_vocab_size <= 300
    assert [joint.src.id_to_piece(i) for i in (PAD, UNK, BOS, EOS)] == ["<pad>", "<unk>", "<s>", "</s>"]
    ids = joint.encode_tgt(TGT[:50])
    assert joint.decode_tgt(ids) == TGT[:50]
    assert all(PAD not in row and BOS not in row and EOS not in row for row in ids)
    # Non-ASCII text of the target language survives (character_coverage 1.0).
    assert "ŝ" in "".join(joint.decode_tgt(joint.encode_tgt([t for t in TGT if "ŝ" in t][:5])))


def test_digits_are_split(joint):
    pieces = joint.src.encode("I see 1234 dogs.", out_type=str)
    assert [p.strip("▁") for p in pieces if p.strip("▁").isdigit()] == ["1", "2", "3", "4"]


def test_separate_vocabularies_and_persistence(tmp_path):
    tok = Tokenizer.train(SRC, TGT, vocab_size=200, joint=False)
    assert not tok.joint
    assert tok.decode_tgt(tok.encode_tgt(TGT[:20])) == TGT[:20]
    assert tok.src.decode(tok.encode_src(SRC[:20])) == SRC[:20]
    files = tok.save(tmp_path)
    assert sorted(f.name for f in files) == ["src.model", "tgt.model"]
    loaded = Tokenizer.load(tmp_path)
    assert loaded.encode_src(SRC[:20]) == tok.encode_src(SRC[:20])
    restored = Tokenizer.from_state_dict(tok.state_dict())
    assert restored.encode_tgt(TGT[:20]) == tok.encode_tgt(TGT[:20])
