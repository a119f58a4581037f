"""End-to-end training-step time of the translation model with each way of applying an L2 penalty.

One model, one fixed batch, the full step (forward, backward, penalty, fused clipping, Adam). The
variants run round-robin, one step each in turn, so drift in machine speed hits them all alike;
each variant's figure is its median step time. The penalty's share of the step is given twice:
(variant - no penalty) / variant, and the penalty work timed alone (many repetitions) / variant,
since on a CPU the first is within the step-to-step noise.
"""
from __future__ import annotations

import statistics
import time

import torch

import l2fast

from .config import ModelConfig
from .model import Transformer
from ..trainer.precision import autocast_dtype, autocast_factory
from .loss import LossModule

SIZES = {
    "demo": ModelConfig(),
    "small": ModelConfig(dropout=0.1),  # configs/small.json (with its 8k vocabulary)
    "base": ModelConfig(d_model=512, heads=8, encoder_layers=6, decoder_layers=6, ff_dim=2048),
}
VARIANTS = ("no penalty", "naive", "l2fast.penalty", "l2fast.Penalized")
L2 = 1e-4
VOCAB = 8000
SENTENCE_LEN = 25


def _decay_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors l2fast.param_groups penalises (its first group with a nonzero coefficient)."""
    groups = l2fast.param_groups(model, l2=L2)
    return [p for g in groups if g.get("l2", L2) for p in g["params"]]


class Variant:
    """A model copy with its optimizer and the step function for one way of adding the penalty."""

    def __init__(self, name: str, cfg: ModelConfig, device, precision: str):
        torch.manual_seed(0)
        self.name = name
        self.model = Transformer(cfg, VOCAB, VOCAB).to(device)
        self.loss_module = LossModule(self.model, 0.1)
        self.autocast = autocast_factory(autocast_dtype(precision, device), device)
        self.decay = _decay_params(self.model)
        adam = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        if name == "l2fast.Penalized":
            self.optimizer = l2fast.Penalized(torch.optim.Adam(l2fast.param_groups(self.model, l2=L2), **adam))
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), **adam)

    def penalty_only(self) -> None:
        """Just this variant's penalty work, on the gradients the last step left (step keeps them)."""
        if self.name == "naive":
            (L2 / 2 * sum(p.pow(2).sum() for p in self.decay)).backward()
        elif self.name == "l2fast.penalty":
            l2fast.penalty(self.decay, l2=L2).backward()
        elif self.name == "l2fast.Penalized":
            l2fast.add_penalty_grad_(self.decay, l2=L2)

    def step(self, batch) -> None:
        src, tgt_in, tgt_out = batch
        with self.autocast():
            loss, _ = self.loss_module(src, tgt_in, tgt_out)
        loss = loss / tgt_out.numel()
        if self.name == "naive":
            loss = loss + L2 / 2 * sum(p.pow(2).sum() for p in self.decay)
        elif self.name == "l2fast.penalty":
            loss = loss + l2fast.penalty(self.decay, l2=L2)
        loss.backward()
        l2fast.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # keeps .grad tensors for penalty_only


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_size(size: str, batch_tokens: int, steps: int, device, precision: str) -> list[dict]:
    cfg = SIZES[size]
    rows = max(1, batch_tokens // (2 * SENTENCE_LEN))
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, VOCAB, (rows, SENTENCE_LEN), generator=g).to(device)
    tgt = torch.randint(4, VOCAB, (rows, SENTENCE_LEN), generator=g).to(device)
    batch = (src, tgt, tgt)  # the same tokens in and out: the time does not depend on them
    variants = [Variant(name, cfg, device, precision) for name in VARIANTS]
    times = {v.name: [] for v in variants}
    for i in range(steps + 3):
        for v in variants:
            _sync(device)
            start = time.perf_counter()
            v.step(batch)
            _sync(device)
            if i >= 3:  # warm-up: allocator, kernel selection, optimizer state
                times[v.name].append(time.perf_counter() - start)
    # The penalty alone costs less than the step-to-step noise of a CPU step, so it is also timed by
    # itself, many times, and its share reported against the variant's median step.
    isolated = {}
    for v in variants:
        runs = []
        for _ in range(10 * steps):
            _sync(device)
            start = time.perf_counter()
            v.penalty_only()
            _sync(device)
            runs.append(time.perf_counter() - start)
        isolated[v.name] = statistics.median(runs)
    base = statistics.median(times["no penalty"])
    out = []
    for v in variants:
        t = statistics.median(times[v.name])
        out.append({"size": size, "variant": v.name, "params": sum(p.numel() for p in v.model.parameters()),
                    "decay_tensors": len(v.decay), "ms": t * 1e3, "share": (t - base) / t,
                    "penalty_ms": isolated[v.name] * 1e3, "penalty_share": isolated[v.name] / t})
    return out


def run_bench(sizes: list[str], batch_tokens: int, steps: int, threads: int = 0, precision: str = "fp32") -> str:
    """Markdown table of step times per size and variant."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as training does
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lines = [f"Training step, {device.type} ({torch.get_num_threads()} threads), {precision}, batch of "
             f"{batch_tokens} padded tokens, l2 = {L2}, median of {steps} steps",
             "", "| model | params | penalised tensors | penalty | step ms | step - no-penalty step | "
             "penalty alone ms | penalty alone / step |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for size in sizes:
        for r in time_size(size, batch_tokens, steps, device, precision):
            share = "-" if r["variant"] == "no penalty" else f"{100 * r['share']:+.1f}%"
            alone = "-" if r["variant"] == "no penalty" else f"{r['penalty_ms']:.2f}"
            alone_share = "-" if r["variant"] == "no penalty" else f"{100 * r['penalty_share']:.2f}%"
            lines.append(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['decay_tensors']} | {r['variant']} | "
                         f"{r['ms']:.1f} | {share} | {alone} | {alone_share} |")
    return "\n".join(lines)
