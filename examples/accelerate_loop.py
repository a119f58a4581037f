"""l2fast's decoder-only LM (built from a config) trained in an accelerate loop with gradient
accumulation; the penalty is logged beside the loss.

    python examples/accelerate_loop.py --steps 40
"""
import argparse

import accelerate
import torch

import l2fast
from demo_blocks import byte_blocks
from l2fast.integrations import metrics
from l2fast.lm.config import ModelConfig
from l2fast.lm.model import DecoderLM


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=2)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(d_model=64, heads=4, layers=2, ff_dim=256, context=64), vocab_size=256)
    # The one changed line (was: torch.optim.AdamW(l2fast.param_groups(model), lr=3e-3, weight_decay=0.1)).
    optimizer = l2fast.Penalized.wrapping(torch.optim.AdamW)(l2fast.param_groups(model), lr=3e-3, weight_decay=0.1)
    loader = torch.utils.data.DataLoader(byte_blocks(count=args.steps * 16, length=64), batch_size=8, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for index, block in enumerate(loader):
        with accelerator.accumulate(model):
            logits = model(block[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), block[:, 1:].flatten())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        step = (index + 1) // 2
        if accelerator.sync_gradients and step % 10 == 0:
            # One host sync per logged line, none per step.
            logs = {"loss": loss.item(), **{name: value.item() for name, value in metrics(optimizer).items()}}
            accelerator.print(f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in logs.items()))


if __name__ == "__main__":
    main()
