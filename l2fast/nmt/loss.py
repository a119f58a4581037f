"""The training objective: label-smoothed cross-entropy over the real (non-pad) target positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import Transformer
from ..trainer.special_tokens import PAD


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy and summed NLL over rows of logits, in float32.

    Same definition as ``F.cross_entropy(label_smoothing=...)``: (1 - e) * NLL + e * mean over the
    vocabulary of -log p; the NLL comes from the same log-softmax for perplexity.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    loss = (1.0 - smoothing) * nll - smoothing * logp.mean(dim=-1)
    return loss.sum(), nll.sum()


class LossModule(nn.Module):
    """Model + loss in one forward, so DistributedDataParallel sees every parameter used. Training
    and validation both call it (validation with smoothing 0 for the NLL alone)."""

    def __init__(self, model: Transformer, smoothing: float):
        super().__init__()
        self.model, self.smoothing = model, smoothing

    def forward(self, src, tgt_in, tgt_out):
        states = self.model(src, tgt_in)
        keep = tgt_out != PAD  # the output layer only sees real target positions
        return label_smoothed_loss(self.model.output(states[keep]), tgt_out[keep], self.smoothing)
