"""l2fast.diagonal_fisher against the Fisher of a linear regression worked out by hand in float64."""
import pytest
import torch

import l2fast


def regression(batches=4, size=5):
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():  # the same model in every process
        model.weight.copy_(torch.randn(1, 3, generator=g))
        model.bias.copy_(torch.randn(1, generator=g))
    x = torch.randn(batches, size, 3, generator=g)
    y = torch.randn(batches, size, generator=g)
    return model, [(x[i], y[i]) for i in range(batches)]


def mse(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y).pow(2).mean()


def by_hand(model, batches, per_example):
    """d/dw (w.x + b - y)^2 = 2 r x and d/db = 2 r per example (r the residual); a batch's gradient is
    the mean of its examples'."""
    w, b = model.weight.detach().double()[0], model.bias.detach().double()[0]
    samples = []
    for x, y in batches:
        x, y = x.double(), y.double()
        r = x @ w + b - y
        gw, gb = 2 * r[:, None] * x, 2 * r
        samples += list(zip(gw, gb)) if per_example else [(gw.mean(0), gb.mean())]
    return {"weight": torch.stack([s[0] ** 2 for s in samples]).mean(0)[None, :],
            "bias": torch.stack([s[1] ** 2 for s in samples]).mean(0).reshape(1)}


@pytest.mark.parametrize("per_example", [False, True])
def test_diagonal_fisher_is_the_mean_squared_gradient(per_example):
    model, batches = regression()
    fisher = l2fast.diagonal_fisher(model, batches, mse, per_example=per_example)
    want = by_hand(model, batches, per_example)
    assert fisher.keys() == want.keys()
    for name in want:
        assert fisher[name].dtype == torch.float32
        torch.testing.assert_close(fisher[name].double(), want[name], rtol=1e-6, atol=0)


def test_per_example_takes_dict_batches_and_leaves_grads_alone():
    model, batches = regression()
    model.weight.grad = torch.full_like(model.weight, 7.0)
    dict_batches = [{"x": x, "y": y} for x, y in batches]
    fisher = l2fast.diagonal_fisher(model, dict_batches, lambda m, b: mse(m, (b["x"], b["y"])), per_example=True,
                                    dtype=torch.bfloat16)
    assert fisher["weight"].dtype == torch.bfloat16
    torch.testing.assert_close(fisher["weight"].double(), by_hand(model, batches, True)["weight"], rtol=1e-2, atol=0)
    assert torch.equal(model.weight.grad, torch.full_like(model.weight, 7.0)) and model.bias.grad is None


def test_refusals():
    model, batches = regression()
    with pytest.raises(ValueError, match="no batches"):
        l2fast.diagonal_fisher(model, [], mse)
    with pytest.raises(ValueError, match="same first"):
        l2fast.diagonal_fisher(model, [(batches[0][0], batches[0][1][:2])], mse, per_example=True)
    with pytest.raises(ValueError, match="no trainable"):
        l2fast.diagonal_fisher(model.requires_grad_(False), batches, mse)
