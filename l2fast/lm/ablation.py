"""The language model's penalty ablation (run by l2fast.trainer.ablation): the model of --config (default:
the demo model on the demo text) trained per penalty setting and seed; validation and test bits per
byte, and test perplexity, of the best checkpoint.

The settings: no penalty; coupled L2 (the gradient gains l2 * w, as Adam's weight_decay) at three
strengths; decoupled decay at the strength language models commonly use with AdamW; the middle
coupled strength cosine-decayed to 0, and alternating on and off. Where the configuration fine-tunes
(train.init_from), the settings are those of fine-tuning instead (``finetune_settings``: plain, L2
toward zero, L2-SP, and EWC where penalty.fisher_data names the original task's text). The command's
module imports this one for the setting names, so training is imported only to run.
"""
from __future__ import annotations

from ..trainer.ablation import FISHER_BATCHES, Ablation, Metric, finetune_settings, penalty_settings
from .config import Config, build_config

STRENGTHS = (1e-5, 1e-4, 1e-3)
DECOUPLED = 0.1
ALTERNATE_EVERY = 100
METRICS = (Metric("valid_bpb", "valid bits/byte", 4), Metric("test_bpb", "test bits/byte", 4),
           Metric("test_ppl", "test ppl", 3, compare=False), Metric("train_seconds", "train s", 0, compare=False))
SETTING_NAMES = [s.name for s in penalty_settings(STRENGTHS, 1, ALTERNATE_EVERY, DECOUPLED)]
FINETUNE_SETTING_NAMES = [s.name for s in finetune_settings(fisher_batches=FISHER_BATCHES)]


def title(config: dict) -> str:
    d, m, t = config["data"], config["model"], config["train"]
    what = (f"Fine-tuning ablation of the language model from {t['init_from']}" if t.get("init_from")
            else "Penalty ablation of the language model")
    return (f"{what} on {d['train'] or 'the demo text'} ({d['tokenizer']} tokenizer; "
            f"{m['layers']} layers of width {m['d_model']}, context {m['context']})")


def make(base: Config) -> Ablation:
    from .train import run_training

    if base.train.init_from:
        settings = finetune_settings(fisher_batches=FISHER_BATCHES if base.penalty.fisher_data else 0)
    else:
        settings = penalty_settings(STRENGTHS, base.train.max_steps, ALTERNATE_EVERY, DECOUPLED)
    return Ablation(title, settings, METRICS, build_config, run_training)
