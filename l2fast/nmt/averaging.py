"""An exponential moving average of the model's weights, used for validation, test and translation.

Short runs end at a high learning rate, where the last weights are a noisy sample around a better
point; averaging them over the last few hundred updates removes much of that noise. The decay ramps
up as min(decay, (1 + n) / (10 + n)) over the first updates n, so early, poor weights fade quickly
(the ramp of TensorFlow's ExponentialMovingAverage with num_updates).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"average decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
