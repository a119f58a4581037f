"""The weight average against a hand-computed exponential moving average in float64."""
import pytest
import torch

from l2fast.trainer import checkpoint
from l2fast.nmt.averaging import WeightAverage


def test_average_follows_the_ramped_exponential_moving_average():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    average = WeightAverage(model, decay=0.3)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(model)
        decay = min(0.3, (1 + n) / (10 + n))  # 0.1, 0.18, 0.25, then capped at 0.3
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for got, want in zip(average.model.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not any(p.requires_grad for p in average.model.parameters())


def test_state_round_trip_and_inference_weights():
    model = torch.nn.Linear(2, 2)
    average = WeightAverage(model, decay=0.99)
    average.update(model)
    other = WeightAverage(torch.nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(average.state_dict())
    assert other.updates == 1
    assert all(torch.equal(a, b) for a, b in zip(other.model.parameters(), average.model.parameters()))
    state = {"model": {"w": torch.zeros(1)}, "average": {"model": {"w": torch.ones(1)}, "updates": 1}}
    assert checkpoint.inference_weights(state)["w"].item() == 1.0
    assert checkpoint.inference_weights({**state, "average": None})["w"].item() == 0.0


def test_rejects_bad_decay():
    with pytest.raises(ValueError, match=r"in \(0, 1\), got 1.0"):
        WeightAverage(torch.nn.Linear(1, 1), 1.0)
