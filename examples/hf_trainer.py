"""A tiny GPT-2 (built from a config, no download) trained by the Hugging Face Trainer with l2fast:
only the optimizer line differs from the stock AdamW run, and the penalty is logged beside the loss.

    python examples/hf_trainer.py --steps 40
"""
import argparse
import tempfile

import torch
import transformers

import l2fast
from demo_blocks import byte_blocks
from l2fast.integrations.hf import log_penalty


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    blocks = byte_blocks(count=args.steps * 8, length=64)[:, :-1]  # GPT-2 shifts the labels itself
    data = [{"input_ids": block, "labels": block} for block in blocks]
    with tempfile.TemporaryDirectory() as out:
        training = transformers.TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=8, learning_rate=3e-3,
            weight_decay=0.1, warmup_steps=args.steps // 10, logging_steps=10, report_to=[], save_strategy="no",
            use_cpu=True, disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(
            model=model, args=training, train_dataset=data,
            # The one changed line: AdamW's weight_decay=0.1 becomes l2fast's decoupled penalty.
            optimizer_cls_and_kwargs=(l2fast.Penalized.wrapping(torch.optim.AdamW), {"lr": 3e-3}))
        log_penalty(trainer)  # `penalty` in every logged record, reporters included
        trainer.train()


if __name__ == "__main__":
    main()
