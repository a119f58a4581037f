"""Corpus reading, bad-data errors, filtering, batching, and the demo corpus generator."""
import pytest

pytest.importorskip("sentencepiece")

from l2fast.nmt.data import (  # noqa: E402
    DataError, TokenizedPairs, collate, decode_batches, drop_empty, filter_long, read_parallel, train_batches,
)
from l2fast.nmt.demo_corpus import generate, number_words, write_demo_corpus  # noqa: E402
from l2fast.trainer.special_tokens import BOS, EOS, PAD  # noqa: E402


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_reads_line_aligned_files_and_tsv(tmp_path):
    write(tmp_path / "c.de", "Hallo Welt\nGuten Tag\n")
    write(tmp_path / "c.en", "Hello world\r\nGood day\n")
    text = read_parallel(str(tmp_path / "c"), "de", "en")
    assert (text.src, text.tgt) == (["Hallo Welt", "Guten Tag"], ["Hello world", "Good day"])
    write(tmp_path / "c.tsv", "Hallo Welt\tHello world\nGuten Tag\tGood day")
    tsv = read_parallel(str(tmp_path / "c.tsv"), "de", "en")
    assert (tsv.src, tsv.tgt) == (text.src, text.tgt)


def test_a_byte_order_mark_on_line_one_is_stripped_and_only_newline_ends_a_line(tmp_path):
    write(tmp_path / "c.tsv", "\ufeffHallo\tHello\nein\x0czwei\u2028drei\tone two three\n\ufeffmitten\tmiddle\n")
    text = read_parallel(str(tmp_path / "c.tsv"), "de", "en")
    assert text.src == ["Hallo", "ein\x0czwei\u2028drei", "\ufeffmitten"]  # a mark inside the file is text


def test_a_directory_as_corpus_is_a_data_error(tmp_path):
    (tmp_path / "c.tsv").mkdir()
    with pytest.raises(DataError, match=r"c\.tsv: cannot be read: Is a directory"):
        read_parallel(str(tmp_path / "c.tsv"), "src", "tgt")


def test_unequal_line_counts_name_both_files(tmp_path):
    write(tmp_path / "c.src", "a\nb\nc\n")
    write(tmp_path / "c.tgt", "x\ny\n")
    with pytest.raises(DataError, match=r"c\.src has 3 lines but .*c\.tgt has 2"):
        read_parallel(str(tmp_path / "c"), "src", "tgt")


def test_invalid_utf8_names_file_and_line(tmp_path):
    write(tmp_path / "c.src", b"fine\nstill fine\nbroken \xff here\n", "wb")
    write(tmp_path / "c.tgt", "a\nb\nc\n")
    with pytest.raises(DataError, match=r"c\.src:3: invalid UTF-8"):
        read_parallel(str(tmp_path / "c"), "src", "tgt")


def test_empty_corpus_and_missing_file(tmp_path):
    write(tmp_path / "c.src", "")
    write(tmp_path / "c.tgt", "")
    with pytest.raises(DataError, match="empty corpus"):
        read_parallel(str(tmp_path / "c"), "src", "tgt")
    with pytest.raises(DataError, match=r"nothing\.src: file not found"):
        read_parallel(str(tmp_path / "nothing"), "src", "tgt")


def test_tsv_with_wrong_column_count_names_line(tmp_path):
    write(tmp_path / "c.tsv", "a\tb\nno tab here\n")
    with pytest.raises(DataError, match=r"c\.tsv:2: expected 2 tab-separated columns .* found 1"):
        read_parallel(str(tmp_path / "c.tsv"), "src", "tgt")


def test_empty_sides_and_long_pairs_are_counted(tmp_path):
    write(tmp_path / "c.src", "a\n\nc\nd\n")
    write(tmp_path / "c.tgt", "x\ny\n  \nw\n")
    messages = []
    text = drop_empty(read_parallel(str(tmp_path / "c"), "src", "tgt"), messages.append)
    assert text.src == ["a", "d"] and text.line_numbers == [1, 4]
    assert messages == [f"{text.name}: skipped 2 pairs with an empty side (first at line 2)"]

    pairs = TokenizedPairs([[5] * 3, [5] * 9, [5] * 2], [[6] * 3, [6] * 2, [6] * 11])
    messages.clear()
    kept = filter_long(pairs, 8, "corpus", messages.append)
    assert kept.src == [[5] * 3] and messages == ["corpus: filtered 2 of 3 pairs longer than 8 subword tokens"]


def test_train_batches_respect_budget_cover_everything_and_are_reproducible():
    lengths = [(i * 7) % 23 + 1 for i in range(300)]
    pairs = TokenizedPairs([[7] * n for n in lengths], [[8] * ((n * 3) % 17 + 1) for n in lengths])
    batches = train_batches(pairs, max_tokens=200, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        longest = max(len(pairs.src[i]) + 1 for i in b) + max(len(pairs.tgt[i]) + 1 for i in b)
        assert len(b) == 1 or len(b) * longest <= 200
    assert batches == train_batches(pairs, max_tokens=200, seed=3, epoch=0)
    assert batches != train_batches(pairs, max_tokens=200, seed=3, epoch=1)
    # Two processes interleave the single-process batches and get equally many.
    shards = [train_batches(pairs, 200, 3, 0, rank, 2) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(batches) // 2
    assert shards[0] == batches[0:len(batches) // 2 * 2:2] and shards[1] == batches[1:len(batches) // 2 * 2:2]


def test_decode_batches_cover_everything():
    src = [[5] * n for n in (9, 1, 4, 30, 2)]
    batches = decode_batches(src, max_tokens=32)
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_collate_shapes_and_special_tokens():
    pairs = TokenizedPairs([[10, 11], [12]], [[20], [21, 22, 23]])
    batch = collate(pairs, [0, 1])
    assert batch.src.tolist() == [[10, 11, EOS], [12, EOS, PAD]]
    assert batch.tgt_in.tolist() == [[BOS, 20, PAD, PAD], [BOS, 21, 22, 23]]
    assert batch.tgt_out.tolist() == [[20, EOS, PAD, PAD], [21, 22, 23, EOS]]
    assert (batch.src_tokens, batch.tgt_tokens) == (5, 6)


def test_number_words():
    assert number_words(37) == "tirako sipa"
    assert number_words(10) == "deko"
    assert number_words(14) == "deko kora"
    assert number_words(2) == "dua"


def test_demo_corpus_is_deterministic_distinct_and_split(tmp_path):
    pairs = generate(3000)
    assert pairs == generate(3000)
    assert len({s for s, _ in pairs}) == 3000
    sizes = {"train": 200, "valid": 20, "test": 30}
    write_demo_corpus(tmp_path, sizes)
    splits = {name: read_parallel(str(tmp_path / name), "src", "tgt") for name in sizes}
    assert {k: len(v.src) for k, v in splits.items()} == sizes
    assert not set(splits["train"].src) & set(splits["test"].src)
    # A few hand-checked properties of the translation rules.
    first = dict(generate(5000))
    assert any(" 37 " in s and "tirako sipa" in first[s] for s in first)
    assert all(t.endswith(".") and not t.endswith(" .") for t in first.values())
