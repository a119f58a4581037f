"""Language-model data: documents from files, errors with file and line, tokenizer round trips, the
token stream, training blocks and batches, evaluation windows, and bits per byte."""
import math

import pytest
import torch

from l2fast.lm.config import ModelConfig
from l2fast.lm.data import (Documents, block_count, collate_blocks, eval_windows, read_documents, token_stream,
                            train_batches)
from l2fast.lm.demo_text import generate as demo_text
from l2fast.lm.evaluate import Score, score_stream, stream_nll
from l2fast.lm.model import DecoderLM
from l2fast.lm.tokenizer import ByteTokenizer, SentencePieceTokenizer, from_state_dict
from l2fast.trainer.text import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["plain ascii", "Zoë & Łukasz — naïve café", "tabs\tand  double  spaces ", "日本語のテキスト",
         " leading space", "emoji 🙂 and \\ backslash", "line one\nline two"]


def test_lines_and_paragraphs(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufefffirst doc\n\nsecond doc\nstill second\n\n\n third\n".encode())
    assert read_documents(path, "lines").texts == ["first doc", "second doc", "still second", " third"]
    assert read_documents(path, "paragraphs").texts == ["first doc", "second doc\nstill second", " third"]


def test_crlf_line_ends_are_dropped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"one\r\ntwo\r\n")
    assert read_documents(path, "lines").texts == ["one", "two"]


@pytest.mark.parametrize("content, message", [
    (b"good\nbad \xff byte\n", r"t.txt:2: invalid UTF-8 at byte 4 of the line"),
    (b"", r"t.txt: empty file, no documents"),
    (b"\n  \n\n", r"t.txt: only blank lines, no documents"),
])
def test_bad_files_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "t.txt").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_documents(tmp_path / "t.txt", "lines")


def test_a_directory_or_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="is a directory, not a text file"):
        read_documents(tmp_path, "lines")
    with pytest.raises(DataError, match="nothing.txt: file not found"):
        read_documents(tmp_path / "nothing.txt", "lines")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(TEXTS)
    assert all(0 <= i < 256 for row in ids for i in row)
    assert tok.decode(ids) == TEXTS
    assert tok.decode([[104, 105, tok.eod]]) == ["hi"]
    assert from_state_dict(tok.state_dict()).encode(TEXTS) == ids


def test_sentencepiece_round_trip_even_of_unseen_characters():
    tok = SentencePieceTokenizer.train(demo_text(300, 1) + TEXTS[:3], 400, "unigram")
    texts = TEXTS + ["a character it never saw: ☃ ∮", "  two leading, two trailing  "]
    ids = tok.encode(texts)
    assert tok.decode(ids) == texts
    assert all(tok.eod not in row for row in ids)
    assert sum(map(len, tok.encode(demo_text(20, 2)))) < sum(len(t.encode()) for t in demo_text(20, 2)) / 2  # real subwords
    again = from_state_dict(tok.state_dict())
    assert again.encode(texts) == ids and again.vocab_size == tok.vocab_size


@pytest.mark.parametrize("line_break", ["\n", " "])  # " ": one paragraph per line, or no line breaks
def test_sentencepiece_learns_from_documents_longer_than_its_input_limit(line_break):
    # sentencepiece skips inputs over 4192 bytes: whole pages would leave it almost nothing to learn from.
    documents = [line_break.join(demo_text(150, seed)) for seed in range(4)]
    assert all(len(d.encode()) > 4192 for d in documents)
    tok = SentencePieceTokenizer.train(documents, 400, "unigram")
    assert tok.vocab_size == 400
    assert tok.decode(tok.encode(documents)) == documents
    assert sum(map(len, tok.encode(documents))) < sum(len(d.encode()) for d in documents) / 2


def test_sentencepiece_failure_is_a_data_error():
    with pytest.raises(DataError, match="sentencepiece could not be trained"):
        SentencePieceTokenizer.train(["x" * 10] * 3 + ["".join(chr(0x4E00 + i) for i in range(400))], 300, "bpe")


def test_stream_has_an_end_of_document_token_around_every_document():
    tok = ByteTokenizer()
    stream = token_stream(tok, Documents("t", ["ab", "c"]))
    assert stream.tolist() == [256, 97, 98, 256, 99, 256]


def test_blocks_overlap_by_one_and_cover_the_stream():
    stream = torch.arange(23, dtype=torch.int32)
    assert block_count(stream, 5) == 4
    inputs, targets = collate_blocks(stream, [0, 3], 5)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [15, 16, 17, 18, 19]]
    assert targets.tolist() == [[1, 2, 3, 4, 5], [16, 17, 18, 19, 20]]
    assert inputs.dtype == torch.int64


def test_batches_are_a_function_of_seed_and_epoch():
    a, b = train_batches(40, 8, 1, 0), train_batches(40, 8, 1, 0)
    assert a == b and len(a) == 5 and sorted(sum(a, [])) == list(range(40))
    assert train_batches(40, 8, 1, 1) != a and train_batches(40, 8, 2, 0) != a
    ranks = [train_batches(40, 8, 1, 0, rank, 2) for rank in (0, 1)]
    assert [batch for pair in zip(*ranks) for batch in pair] == a[:4]  # rank r takes batches r, r + 2, ...
    small = train_batches(3, 8, 1, 0)  # fewer blocks than a batch: one batch of all of them
    assert len(small) == 1 and sorted(small[0]) == [0, 1, 2]


def test_eval_windows_predict_every_token_once():
    stream = torch.arange(24)
    windows = eval_windows(stream, 5)
    predicted = [t for start, length in windows for t in range(start + 1, start + length + 1)]
    assert predicted == list(range(1, 24))
    assert windows[-1] == (20, 3)


def uniform_model(context: int, vocab: int) -> DecoderLM:
    """All weights zero: every logit is 0, so every token costs ln(vocab) nats."""
    model = DecoderLM(ModelConfig(d_model=16, heads=2, layers=1, ff_dim=16, context=context, positions="learned"), vocab)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_bits_per_byte_by_hand():
    docs = Documents("t", ["héllo", "world"])  # 6 + 5 bytes, + 1 per document end = 13
    tok = ByteTokenizer()
    stream = token_stream(tok, docs)  # EOD h é(2 bytes) l l o EOD w o r l d EOD: 14 tokens, 13 predicted
    score = score_stream(uniform_model(4, tok.vocab_size), stream, docs.utf8_bytes, torch.device("cpu"))
    assert (score.tokens, score.utf8_bytes) == (13, 13)
    assert score.nats == pytest.approx(13 * math.log(257), rel=1e-7)  # float32 terms, float64 sum
    assert score.bits_per_byte == pytest.approx(math.log2(257), rel=1e-7)
    assert score.perplexity == pytest.approx(257, rel=1e-6)


def test_bits_per_byte_does_not_count_tokens():
    """With fewer, longer tokens the same per-token loss is fewer bits per byte: 10 tokens at ln(500)
    nats each over 40 bytes is 10 * log2(500) / 40 bits per byte."""
    score = Score(nats=10 * math.log(500), tokens=10, utf8_bytes=40)
    assert score.bits_per_byte == pytest.approx(10 * math.log2(500) / 40, rel=1e-12)
    assert score.loss == pytest.approx(math.log(500), rel=1e-12)


def test_windowed_nll_equals_the_sum_of_per_window_cross_entropy():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(d_model=16, heads=2, layers=1, ff_dim=16, context=6), 30).double().eval()
    stream = torch.randint(0, 30, (20,))
    nats, tokens = stream_nll(model, stream, torch.device("cpu"), batch_windows=2)
    expected = 0.0
    for start, length in eval_windows(stream, 6):
        with torch.no_grad():
            logp = torch.log_softmax(model(stream[None, start:start + length])[0].double(), dim=-1)
        expected -= sum(float(logp[i, stream[start + 1 + i]]) for i in range(length))
    assert tokens == 19 and float(nats) == pytest.approx(expected, rel=1e-6)


def test_demo_text_is_deterministic():
    assert demo_text(50, 1) == demo_text(50, 1) and demo_text(50, 1) != demo_text(50, 2)
    text = " ".join(demo_text(200, 1))
    assert "plus" in text and " an " in text and "The end." in text
