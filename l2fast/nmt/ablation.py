"""The translation trainer's penalty ablation (run by l2fast.trainer.ablation): the demo model, or the
model of --config, trained per penalty setting and seed; test BLEU and chrF.

Every run reads the same corpus with the same tokenizer, made once in the ablation's directory (a
fine-tuning run's is its checkpoint's); the settings use coupled L2 (the gradient gains l2 * w, as
Adam's weight_decay). Where the configuration fine-tunes (train.init_from), the settings are those of
fine-tuning instead (``finetune_settings``). The command's module imports this one for the setting
names, so training (sentencepiece, sacrebleu) is imported only to run.
"""
from __future__ import annotations

from pathlib import Path

from ..trainer.ablation import FISHER_BATCHES, Ablation, Metric, finetune_settings, penalty_settings
from ..trainer.config import ConfigError
from .config import Config, build_config

STRENGTHS = (1e-5, 1e-4, 1e-3)
ALTERNATE_EVERY = 100
METRICS = (Metric("test_bleu", "test BLEU", 2), Metric("test_chrf", "test chrF", 2),
           Metric("best_valid_bleu", "best valid BLEU", 2, compare=False),
           Metric("train_seconds", "train s", 0, compare=False))
SETTING_NAMES = [s.name for s in penalty_settings(STRENGTHS, 1, ALTERNATE_EVERY)]
FINETUNE_SETTING_NAMES = [s.name for s in finetune_settings(fisher_batches=FISHER_BATCHES)]


def prepare(cfg: Config, root: Path) -> dict:
    """The demo corpus (unless the configuration names a corpus) and one tokenizer (unless it names one or
    fine-tunes from a checkpoint, whose tokenizer every run takes), made in root once: the options that
    point every run at them."""
    from .data import drop_empty, read_parallel
    from .train import train_tokenizer, write_demo_data

    d = cfg.data
    data = {}
    if not d.train:
        paths = write_demo_data(d, root, print)
        data.update(train=paths[0], valid=paths[1], test=paths[2], src_suffix="src", tgt_suffix="tgt")
    if not (d.tokenizer or cfg.train.init_from):
        directory = root / "tokenizer"
        if not any(directory.glob("*.model")):
            text = drop_empty(read_parallel(data.get("train", d.train), data.get("src_suffix", d.src_suffix),
                                            data.get("tgt_suffix", d.tgt_suffix)))
            partial = root / "tokenizer.partial"  # renamed when whole: a killed process leaves no half tokenizer
            train_tokenizer(d, text).save(partial)
            partial.rename(directory)
        data["tokenizer"] = str(directory)
    return {"data": data}


def title(config: dict) -> str:
    d, init_from = config["data"], config["train"].get("init_from")
    where = f"{d['train']} (test {d['test']})" if d["train"] else "the demo corpus"
    what = (f"Fine-tuning ablation of the translation trainer from {init_from}" if init_from
            else "Penalty ablation of the translation trainer")
    return f"{what} on {where}, beam {config['decode']['beam']}"


def make(base: Config) -> Ablation:
    from .train import run_training

    if base.data.train and not base.data.test:
        raise ConfigError("the ablation compares test BLEU: give data.test")
    if base.train.init_from:
        settings = finetune_settings(fisher_batches=FISHER_BATCHES if base.penalty.fisher_data else 0)
    else:
        settings = penalty_settings(STRENGTHS, base.train.max_steps, ALTERNATE_EVERY)
    return Ablation(title, settings, METRICS, build_config, run_training, prepare)
