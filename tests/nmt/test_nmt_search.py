"""Model and decoding: cached decoding equals full decoding, beam 1 equals greedy, beam search finds
the best hypothesis of a hand-built model."""
import itertools
import math

import pytest
import torch

pytest.importorskip("sentencepiece")

from l2fast.nmt.config import ModelConfig  # noqa: E402
from l2fast.nmt.loss import label_smoothed_loss  # noqa: E402
from l2fast.nmt.model import Transformer  # noqa: E402
from l2fast.nmt.search import beam_search, greedy  # noqa: E402
from l2fast.trainer.special_tokens import BOS, EOS, PAD  # noqa: E402


def tiny_model(**overrides):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"d_model": 32, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff_dim": 64,
                         "dropout": 0.0, "max_positions": 64, **overrides})
    return Transformer(cfg, 40, 40).eval()


def random_source(rows=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (rows, 9), generator=g)
    for i, length in enumerate([9, 3, 6, 1, 8][:rows]):  # ragged, right-padded, EOS-terminated
        src[i, length - 1] = EOS
        src[i, length:] = PAD
    return src


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_cached_greedy_matches_full_teacher_forced_decoding(positions):
    model = tiny_model(positions=positions)
    src = random_source()
    hyps = greedy(model, src, max_len_a=1.0, max_len_b=4)
    with torch.no_grad():
        for i, hyp in enumerate(hyps):
            prefix = torch.tensor([[BOS] + hyp])
            logits = model.output(model(src[i:i + 1], prefix))[0].float()
            logits[:, PAD] = logits[:, BOS] = float("-inf")
            expected = logits.argmax(-1).tolist()
            assert hyp == expected[:len(hyp)]  # every chosen token is the full model's argmax


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_one_equals_greedy(length_penalty):
    model = tiny_model()
    src = random_source()
    assert beam_search(model, src, beam=1, length_penalty=length_penalty) == greedy(model, src)


def test_batched_beam_search_equals_one_sentence_at_a_time():
    model = tiny_model()
    src = random_source()
    batched = beam_search(model, src, beam=3)
    for i in range(src.size(0)):
        row = src[i:i + 1, :int((src[i] != PAD).sum())]
        assert beam_search(model, row, beam=3) == [batched[i]]


class Bigram(torch.nn.Module):
    """A hand-built 'translation model' whose next-token distribution depends only on the last token."""

    def __init__(self, table: dict[int, dict[int, float]], vocab: int = 6):
        super().__init__()
        logp = torch.full((vocab, vocab), -1e9)
        for prev, row in table.items():
            for tok, p in row.items():
                logp[prev, tok] = math.log(p)
        self.logp = logp
        self.tgt_embed = type("E", (), {"max_positions": 64})()

    def encode(self, src):
        return torch.zeros(src.size(0), 1, 1), torch.ones(src.size(0), 1, 1, 1, dtype=torch.bool)

    def new_cache(self):
        return []

    def reorder_cache(self, cache, index):
        pass

    def decode(self, tokens, memory, mask, cache, start):
        return torch.nn.functional.one_hot(tokens, self.logp.size(0)).float()

    def output(self, states):
        return states @ self.logp


A, B = 4, 5
# Greedy takes A (0.55) and then ends (0.4): p = 0.22. The best sentence is "B </s>": 0.45 * 0.95.
HAND_MODEL = {BOS: {A: 0.55, B: 0.45}, A: {EOS: 0.4, A: 0.35, B: 0.25}, B: {EOS: 0.95, A: 0.05}}


def brute_force_best(table, max_len, alpha):
    best, best_score = None, -math.inf
    for n in range(max_len + 1):
        for seq in itertools.product([A, B], repeat=n):
            full = [BOS, *seq, EOS]
            logp = sum(math.log(table[p].get(t, 1e-30)) for p, t in zip(full, full[1:]))
            score = logp / (n + 1) ** alpha
            if score > best_score:
                best, best_score = list(seq), score
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_beam_search_finds_the_best_sentence_of_a_hand_built_model(alpha):
    model = Bigram(HAND_MODEL)
    src = torch.tensor([[7, 7, EOS]])  # length limit: 1.0 * 3 + 1 = 4 tokens
    assert greedy(model, src, max_len_a=1.0, max_len_b=1) == [[A]]
    expected = brute_force_best(HAND_MODEL, max_len=4, alpha=alpha)
    assert beam_search(model, src, beam=8, length_penalty=alpha, max_len_a=1.0, max_len_b=1) == [expected]
    assert beam_search(model, src, beam=2, length_penalty=0.0, max_len_a=1.0, max_len_b=1) == [[B]]


def test_label_smoothed_loss_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(7, 11, generator=g), torch.randint(0, 11, (7,), generator=g)
    loss, nll = label_smoothed_loss(logits, target, 0.1)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum"))
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(logits, target, reduction="sum"))


def test_tied_embeddings_share_one_matrix():
    model = tiny_model(tie="all")
    assert model.src_embed.tokens.weight is model.tgt_embed.tokens.weight is model.output.weight
    untied = tiny_model(tie="none")
    assert untied.src_embed.tokens.weight is not untied.tgt_embed.tokens.weight
    assert untied.output.weight is not untied.tgt_embed.tokens.weight
