"""The CPU dropout: its rate, its unbiasedness, its gradient and its reproducibility."""
import pytest
import torch

from l2fast.trainer.dropout import Dropout, random_bytes


def test_random_bytes_are_uniform():
    torch.manual_seed(0)
    counts = torch.bincount(random_bytes(torch.Size([256 * 4000])).long(), minlength=256).double()
    expected = 4000.0
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 340  # 255 degrees of freedom: the 99.9th percentile is about 330


@pytest.mark.parametrize("p", [0.1, 0.2, 0.3])
def test_rate_and_expectation(p):
    torch.manual_seed(1)
    drop = Dropout(p).train()
    x = torch.rand(1000, 1000, dtype=torch.float64) + 0.5
    y = drop(x)
    dropped = (y == 0).double().mean().item()
    exact_rate = round(p * 256) / 256
    assert dropped == pytest.approx(exact_rate, abs=0.003)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - exact_rate))
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.01)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = Dropout(0.25).train()(x)
    y.backward(torch.ones_like(y))
    expected = torch.where(y != 0, torch.full_like(x, 1 / 0.75), torch.zeros_like(x))
    torch.testing.assert_close(x.grad, expected)


def test_same_seed_same_mask_and_eval_is_identity():
    drop = Dropout(0.2).train()
    x = torch.randn(300, 7)
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(first, drop(x))
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"in \[0, 1\), got 1.0"):
        Dropout(1.0)
