"""The decoder-only model: causal masking, learned and rotary positions, and generation with the
key/value cache against full recomputation."""
import pytest
import torch

from l2fast.lm.config import ModelConfig
from l2fast.lm.generate import Sampling, generate, next_tokens
from l2fast.lm.model import DecoderLM
from l2fast.trainer.layers import Rotary

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 50


def tiny(positions: str, context: int = 24, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(ModelConfig(d_model=32, heads=4, layers=2, ff_dim=64, context=context, positions=positions), VOCAB)
    return model.double().eval()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_a_later_token_cannot_change_an_earlier_logit(positions):
    model = tiny(positions)
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])  # the change is seen from its own position on


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_positions_matter(positions):
    """Without positions, the last token's attention sees a set: swapping two earlier tokens would not
    change its logits. With them, it does."""
    model = tiny(positions)
    with torch.no_grad():
        a, b = model(torch.tensor([[1, 2, 3, 4]]))[0, -1], model(torch.tensor([[2, 1, 3, 4]]))[0, -1]
    assert not torch.allclose(a, b)


def test_rotary_scores_depend_on_distance_only():
    rotary = Rotary(8, 64).double()
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)
    at = lambda i: torch.tensor([i])  # noqa: E731
    score = lambda i, j: float((rotary(q, at(i)) * rotary(k, at(j))).sum())  # noqa: E731
    assert score(3, 1) == pytest.approx(score(40, 38), rel=1e-6)  # tables are float32
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
    assert torch.allclose(rotary(q, at(0)), q)  # position 0 is not rotated


def test_rotary_refuses_an_odd_head_width():
    with pytest.raises(ValueError, match="even head width, got 7"):
        Rotary(7, 16)


def test_the_output_layer_is_the_token_embedding():
    model = tiny("learned")
    assert model.output.weight is model.embed.weight
    assert sum(p is model.embed.weight for p in model.parameters()) == 1


def test_longer_than_the_context_is_refused():
    model = tiny("learned", context=8)
    with pytest.raises(ValueError, match="sequence of 9 tokens exceeds model.context = 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cache_gives_the_logits_of_full_recomputation(positions):
    model = tiny(positions)
    ids = torch.randint(0, VOCAB, (2, 15), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        steps = [model(ids[:, :6], cache)] + [model(ids[:, i:i + 1], cache) for i in range(6, 15)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("sampling", [Sampling(temperature=0.0), Sampling(temperature=1.3),
                                      Sampling(temperature=0.9, top_k=5), Sampling(temperature=1.0, top_p=0.7)],
                         ids=["greedy", "temperature", "top-k", "top-p"])
def test_generation_with_cache_equals_full_recomputation(positions, sampling):
    model = tiny(positions)
    prompts = [[1, 2, 3], [4, 5, 6], [7], [], [8, 9, 10, 11, 12]]
    args = (model, prompts, 12, 0, sampling, 7, torch.device("cpu"))
    cached, recomputed = generate(*args, use_cache=True), generate(*args, use_cache=False)
    assert cached == recomputed
    assert any(len(row) > 3 for row in cached)
    assert generate(*args) == cached  # seeded: the same again
    if not sampling.greedy:
        assert generate(model, prompts, 12, 0, sampling, 8, torch.device("cpu")) != cached


def test_generation_stops_at_the_end_of_the_context():
    model = tiny("rotary", context=10)
    with torch.no_grad():  # a token the model never picks as end of document, so only the context stops it
        model.embed.weight[VOCAB - 1] = -100 * model.embed.weight[1:].mean(0)
    out = generate(model, [[1, 2, 3], list(range(1, 20))], 50, VOCAB - 1, Sampling(temperature=0.0), 0, torch.device("cpu"))
    assert [len(row) for row in out] == [10 - 4, 1]  # prompt + EOD fill 4 positions; a long prompt keeps room for 1


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_batched_prompts_equal_one_at_a_time(positions):
    model = tiny(positions)
    prompts = [[1, 2], [3, 4, 5, 6, 7, 8], [], [5, 6, 7], [9]]  # batched together, left-padded
    together = generate(model, prompts, 8, 0, Sampling(temperature=0.0), 0, torch.device("cpu"))
    alone = [generate(model, [p], 8, 0, Sampling(temperature=0.0), 0, torch.device("cpu"))[0] for p in prompts]
    assert together == alone
    assert len({len(row) for row in together}) > 1 or len(together[0]) == 8


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_left_padding_changes_no_logit_of_a_real_token(positions):
    model = tiny(positions)
    rows = [[3, 1, 4, 1, 5], [9, 2], [6]]
    width = max(map(len, rows))
    pad = torch.tensor([width - len(r) for r in rows])
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    with torch.no_grad():
        padded = model(ids, pad=pad)
        cache = model.new_cache()
        stepped = torch.cat([model(ids[:, :3], cache, pad)] + [model(ids[:, i:i + 1], cache, pad) for i in range(3, width)], 1)
        for row, r in enumerate(rows):
            alone = model(torch.tensor([r]))[0]
            assert torch.allclose(padded[row, width - len(r):], alone, atol=1e-10)
            assert torch.allclose(stepped[row, width - len(r):], alone, atol=1e-10)


def test_a_prompt_without_room_for_max_new_is_not_padded_into_a_shorter_batch():
    model = tiny("rotary", context=10)
    with torch.no_grad():  # a token the model never picks as end of document, so only the context stops it
        model.embed.weight[VOCAB - 1] = -100 * model.embed.weight[1:].mean(0)
    prompts = [[1, 2], [3, 4, 5, 6, 7], [8]]  # with EOD in front: 3, 6 and 2 positions
    out = generate(model, prompts, 5, VOCAB - 1, Sampling(temperature=0.0), 0, torch.device("cpu"))
    assert [len(row) for row in out] == [5, 10 - 6, 5]  # the long prompt's room does not cut the others
    alone = [generate(model, [p], 5, VOCAB - 1, Sampling(temperature=0.0), 0, torch.device("cpu"))[0] for p in prompts]
    assert out == alone


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    draws = lambda s: {int(next_tokens(logits, s, g)) for _ in range(300)}  # noqa: E731
    assert draws(Sampling(top_k=2)) == {0, 1}
    assert draws(Sampling(top_p=0.79)) == {0, 1}  # 0.5 + 0.3 reaches 0.79
    assert draws(Sampling(top_p=0.81)) == {0, 1, 2}
    assert draws(Sampling(top_p=0.1)) == {0}
    assert draws(Sampling(temperature=0.0)) == {0}


@pytest.mark.parametrize("kwargs, message", [({"temperature": -1.0}, "temperature"), ({"top_k": -1}, "top_k"),
                                             ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_bad_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)
