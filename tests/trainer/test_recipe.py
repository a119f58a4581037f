"""The trainer's optimizer applies exactly the configured penalty: the gradient gains l2*w + l1*sign(w)
on the decayed tensors (checked against plain torch Adam on hand-made gradients), and the penalty a
run logs is that penalty's value."""
import json

import pytest
import torch
from torch import nn

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt.config import ConfigError, build_config  # noqa: E402
from l2fast.trainer.recipe import build_optimizer  # noqa: E402
from l2fast.nmt.train import run_training  # noqa: E402
from test_nmt_train import tiny_config  # noqa: E402


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


@pytest.mark.parametrize("l2, l1", [(0.0, 0.1), (0.01, 0.1), (0.01, 0.0)])
def test_optimizer_step_equals_adam_on_penalised_gradients(l2, l1):
    cfg = build_config({"penalty": {"l2": l2, "l1": l1}, "train": {"lr": 1e-2}})
    model, reference = small_model(), small_model()
    optimizer = build_optimizer(model, cfg)
    adam = torch.optim.Adam(reference.parameters(), lr=1e-2, betas=cfg.train.adam_betas, eps=cfg.train.adam_eps)
    decayed = {"0.weight", "2.weight"}  # biases and the layer norm are exempt
    g = torch.Generator().manual_seed(1)
    assert optimizer.max_grad_norm == cfg.train.clip_norm  # clipping goes into the optimizer's step
    for _ in range(3):
        for p, q in zip(model.parameters(), reference.parameters()):
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad.clone(), grad.clone()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.train.clip_norm)  # then the penalty, as weight_decay
        for name, q in reference.named_parameters():
            if name in decayed:
                q.grad += l2 * q.detach() + l1 * q.detach().sign()
        optimizer.step()
        adam.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    moved = [not torch.equal(p, q) for p, q in zip(small_model().parameters(), model.parameters())]
    assert all(moved)


def test_l1_alone_is_applied_and_logged(tmp_path):
    cfg = tiny_config(tmp_path, train={"max_steps": 2, "valid_every": 2, "valid_max_sentences": 2},
                      penalty={"l2": 0.0, "l1": 0.1})
    run_training(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    penalties = [r["penalty"] for r in rows if "loss" in r]
    assert len(penalties) == 2 and all(p > 1.0 for p in penalties)  # 0.1 * sum|w| over thousands of weights


def test_decoupled_l1_is_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"penalty.decoupled applies L2 only .* penalty.l1 = 0.1"):
        build_config({"penalty": {"decoupled": True, "l1": 0.1},
                      "data": {"train": str(tmp_path / "absent"), "valid": str(tmp_path / "absent")}})


def test_the_wrapper_argument_cannot_be_defeated_by_a_group_key():
    """Whatever rule the library uses to merge group keys with wrapper arguments, the trainer's
    coefficients are those of the configuration."""
    cfg = build_config({"penalty": {"l2": 0.02, "l1": 0.03}})
    optimizer = build_optimizer(small_model(), cfg)
    assert optimizer.coefficients() == [(0.02, 0.03), (0.0, 0.0)]
    decoupled = build_optimizer(small_model(), build_config({"penalty": {"l2": 0.02, "decoupled": True}}))
    assert decoupled.coefficients() == [(0.02, 0.0), (0.0, 0.0)]
