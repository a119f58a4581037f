"""l2fast's decoder-only LM (built from a config) trained by Lightning with l2fast: Penalized in
configure_optimizers, the penalty logged by PenaltyLogger beside the loss.

    python examples/lightning_module.py --steps 40
"""
import argparse

import lightning
import torch

import l2fast
from demo_blocks import byte_blocks
from l2fast.integrations.lightning import PenaltyLogger
from l2fast.lm.config import ModelConfig
from l2fast.lm.model import DecoderLM


class LanguageModel(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = DecoderLM(ModelConfig(d_model=64, heads=4, layers=2, ff_dim=256, context=64), vocab_size=256)

    def training_step(self, block, _):
        logits = self.model(block[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), block[:, 1:].flatten())
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        # The one changed line (was: torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.1)).
        groups = l2fast.param_groups(self.model)  # biases and norms exempt
        return l2fast.Penalized.wrapping(torch.optim.AdamW)(groups, lr=3e-3, weight_decay=0.1)


class PrintedLogs(lightning.pytorch.loggers.Logger):
    """Prints each record Lightning logs (a stand-in for TensorBoard, CSV, W&B, ...)."""
    name, version = "printed", 0

    def log_metrics(self, metrics, step=None):
        print(f"step {step + 1}: " + ", ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items())))

    def log_hyperparams(self, *args, **kwargs):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    lightning.seed_everything(0)
    loader = torch.utils.data.DataLoader(byte_blocks(count=args.steps * 8, length=64), batch_size=8, shuffle=True)
    trainer = lightning.Trainer(max_steps=args.steps, accelerator="cpu", log_every_n_steps=10, logger=PrintedLogs(),
                                callbacks=[PenaltyLogger()], enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(LanguageModel(), loader)


if __name__ == "__main__":
    main()
