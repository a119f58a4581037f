"""param_groups: which parameter lands in which group, for torch's layers, tied weights and custom rules."""
import warnings

import pytest
import torch
from torch import nn

import l2fast

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


class MyRMSNorm(nn.Module):  # a normalisation layer torch does not know, recognised by its class name
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.scale * x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


class TinyTranslator(nn.Module):
    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, batch_first=True)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.bn = nn.BatchNorm1d(d)
        self.final_norm = MyRMSNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.embed.weight  # tied: owned by an Embedding and by a Linear
        self.frozen = nn.Linear(d, d)
        self.frozen.requires_grad_(False)

    def forward(self, tokens):
        h = self.layer(self.embed(tokens))
        h = self.bn(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return self.out(self.final_norm(h))


DECAYED = [
    "layer.self_attn.in_proj_weight",
    "layer.self_attn.out_proj.weight",
    "layer.linear1.weight",
    "layer.linear2.weight",
    "conv.weight",
]
BIASES = ["layer.self_attn.in_proj_bias", "layer.self_attn.out_proj.bias", "layer.linear1.bias", "layer.linear2.bias", "conv.bias"]
NORMS = ["layer.norm1.weight", "layer.norm1.bias", "layer.norm2.weight", "layer.norm2.bias", "bn.weight", "bn.bias", "final_norm.scale"]


def split_by_hand(model, decayed_keys: dict, exempt_keys: dict) -> list[dict]:
    """The default split written out by hand: biases and norm parameters exempt."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = set(BIASES + NORMS)
    return [
        {"params": [p for n, p in named if n not in exempt], **decayed_keys},
        {"params": [p for n, p in named if n in exempt], **exempt_keys},
    ]


def names(groups):
    return [sorted(g["param_names"]) for g in groups]


def test_default_split_exempts_biases_and_norms():
    groups = l2fast.param_groups(TinyTranslator(), l2=1e-2, with_names=True)
    assert [{k: g[k] for k in ("l2", "l1") if k in g} for g in groups] == [{"l2": 1e-2}, {"l2": 0.0, "l1": 0.0}]
    assert names(groups) == [sorted(DECAYED + ["embed.weight"]), sorted(BIASES + NORMS)]
    for group in groups:
        assert len(group["params"]) == len(group["param_names"])


def test_embedding_rule_exempts_the_tied_embedding_once():
    model = TinyTranslator()
    groups = l2fast.param_groups(model, l2=1e-2, no_decay=("bias", "norm", "embedding"), with_names=True)
    assert names(groups) == [sorted(DECAYED), sorted(BIASES + NORMS + ["embed.weight"])]
    tied = [p for g in groups for p in g["params"] if p is model.embed.weight]
    assert len(tied) == 1


def test_groups_partition_the_trainable_parameters_in_model_order():
    model = TinyTranslator()
    groups = l2fast.param_groups(model, l2=1e-2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    got = [p for g in groups for p in g["params"]]
    assert len(got) == len(trainable) and {id(p) for p in got} == {id(p) for p in trainable}
    order = {id(p): i for i, p in enumerate(trainable)}
    for g in groups:
        assert [order[id(p)] for p in g["params"]] == sorted(order[id(p)] for p in g["params"])


def test_custom_rules_and_a_single_rule_name():
    def positional(name, param, module):
        return name.startswith("layer.linear1")

    groups = l2fast.param_groups(TinyTranslator(), l2=0.1, no_decay=["norm", positional], with_names=True)
    assert "layer.linear1.weight" in groups[1]["param_names"] and "conv.bias" in groups[0]["param_names"]
    only_bias = l2fast.param_groups(TinyTranslator(), no_decay="bias", with_names=True)
    assert sorted(only_bias[1]["param_names"]) == sorted(BIASES + ["layer.norm1.bias", "layer.norm2.bias", "bn.bias"])


def test_torch_optimizers_accept_the_groups_with_names():
    model = TinyTranslator()
    optimizer = torch.optim.AdamW(l2fast.param_groups(model, l2=0.1, key="weight_decay", with_names=True))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert "l2" not in optimizer.param_groups[0]
    model(torch.randint(0, 50, (2, 5))).sum().backward()
    optimizer.step()
    assert optimizer.state_dict()["param_groups"][1]["param_names"][0] == "layer.self_attn.in_proj_bias"


def test_weight_decay_key_equals_a_hand_made_split():
    def run(make_groups):
        torch.manual_seed(0)
        model = TinyTranslator()
        model.eval()  # no dropout, fixed batch-norm statistics
        optimizer = torch.optim.AdamW(make_groups(model), lr=1e-2)
        tokens = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            optimizer.zero_grad()
            model(tokens).logsumexp(-1).mean().backward()
            optimizer.step()
        return model

    got = run(lambda m: l2fast.param_groups(m, l2=0.3, key="weight_decay"))
    want = run(lambda m: split_by_hand(m, {"weight_decay": 0.3}, {"weight_decay": 0.0}))
    assert all(torch.equal(p, q) for p, q in zip(got.parameters(), want.parameters()))


def test_wrapper_arguments_reach_the_penalised_group_and_spare_the_exempt_one():
    """Explicit beats implicit: a coefficient not passed to param_groups is not written, so it cannot
    override Penalized's argument; the exempt group always carries zeros."""
    model = TinyTranslator()
    inner = torch.optim.Adam(l2fast.param_groups(model))
    assert l2fast.Penalized(inner, l2=1e-2, l1=1e-3).coefficients() == [(1e-2, 1e-3), (0.0, 0.0)]
    only_l2 = l2fast.param_groups(model, l2=1e-2)
    assert l2fast.Penalized(torch.optim.Adam(only_l2), l1=1e-3).coefficients() == [(1e-2, 1e-3), (0.0, 0.0)]
    # A group key is a per-group override: it wins over the argument (which then goes unused: a warning).
    with pytest.warns(UserWarning, match="l1=0.001 is not used"):
        overridden = l2fast.Penalized(torch.optim.Adam(l2fast.param_groups(model, l1=0.0)), l1=1e-3)
    assert overridden.coefficients() == [(0.0, 0.0), (0.0, 0.0)]


def test_wrapper_applies_both_penalties_to_the_penalised_group_only():
    def run(groups_of):
        torch.manual_seed(0)
        model = TinyTranslator()
        model.eval()
        optimizer = l2fast.Penalized(torch.optim.SGD(groups_of(model), lr=0.1), l2=0.2, l1=0.01)
        model(torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))).logsumexp(-1).mean().backward()
        optimizer.step()
        return model

    got = run(l2fast.param_groups)
    want = run(lambda m: split_by_hand(m, {}, {"l2": 0.0, "l1": 0.0}))
    assert all(torch.equal(p, q) for p, q in zip(got.parameters(), want.parameters()))
    torch.manual_seed(0)
    before = TinyTranslator()
    assert not torch.equal(got.layer.linear1.weight, before.layer.linear1.weight)


@pytest.mark.parametrize(
    "groups_kwargs, wrapper_kwargs, warns",
    [
        ({"l2": 1e-4}, {"l2": 1e-2}, True),  # both given, different: the argument is dead
        ({}, {"l2": 1e-2, "l1": 1e-3}, False),  # the common case
        ({"l2": 1e-2}, {"l2": 1e-2}, False),  # the same value twice: harmless
        ({"l2": 1e-4}, {}, False),  # nothing explicit to override
    ],
)
def test_an_argument_every_group_overrides_is_warned_about(groups_kwargs, wrapper_kwargs, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        l2fast.Penalized(torch.optim.Adam(l2fast.param_groups(TinyTranslator(), **groups_kwargs)), **wrapper_kwargs)
    messages = [str(w.message) for w in caught if "is not used" in str(w.message)]
    assert messages == (["l2fast.Penalized: l2=0.01 is not used: every param group sets its own 'l2' ([0.0, 0.0001]), "
                         "and a group's key wins over the argument. Leave 'l2' out of the groups that should get "
                         "l2=0.01 (l2fast.param_groups writes it only when you pass l2=)"] if warns else [])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"no_decay": ["bias", "bais"]}, ValueError, r"unknown no_decay rule 'bais'; use \['bias', 'embedding', 'hf-trainer', 'norm'\]"),
        ({"l2": -0.1}, ValueError, "l2 = -0.1 is invalid"),
        ({"l1": float("nan")}, ValueError, "l1 = nan is invalid"),
        ({"l2": "0.1"}, TypeError, "l2 must be a float, got str"),
        ({"l1": 0.1, "key": "weight_decay"}, ValueError, "l1 needs l2fast.Penalized"),
        ({"key": "decay"}, ValueError, "key must be 'l2' or 'weight_decay'"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        l2fast.param_groups(TinyTranslator(), **kwargs)
