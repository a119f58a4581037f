"""Typed, immutable run configuration: defaults < config file (JSON or TOML) < command-line flags.

Every field carries its help text, so the CLI's ``--help`` documents every option from this one
place, and every field has one flag named after it (``max_tokens`` -> ``--max-tokens``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from ..trainer import config as plumbing
from ..trainer.config import ConfigError, check_finite, check_train_and_penalty, check_ranges, common, merge, opt
from ..trainer.finetune import check_same_weights
from ..trainer.kinds import TRANSLATION, TrainerKind
from ..trainer.rundir import FRESH_RUN, check_fixed

__all__ = ["Config", "ConfigError", "FIXED_ON_RESUME", "WEIGHT_OPTIONS", "build_config", "check", "check_init_from",
           "check_resumable", "merge", "read_config_file", "section_fields", "with_overrides"]


@dataclass(frozen=True)
class DataConfig:
    train: str = opt("", "training data: a path prefix (PREFIX.SRC_SUFFIX / PREFIX.TGT_SUFFIX) or a .tsv file; empty = built-in demo corpus")
    valid: str = opt("", "validation data, same forms as --train")
    test: str = opt("", "test data, same forms as --train (scored at the end of training)")
    src_suffix: str = opt("src", "file suffix of the source side, e.g. 'de'")
    tgt_suffix: str = opt("tgt", "file suffix of the target side, e.g. 'en'")
    max_len: int = opt(128, "training pairs with more subword tokens than this on either side are filtered (and counted)")
    demo_train_size: int = opt(40000, "number of training pairs the demo corpus generator writes")
    tokenizer: str = opt("", "directory with trained sentencepiece models (joint.model, or src.model + tgt.model) to "
                         "use instead of training new ones, e.g. RUN_DIR/tokenizer of an earlier run")
    vocab_size: int = opt(2000, "subword vocabulary size (per side when --no-joint-vocab)")
    joint_vocab: bool = opt(True, "one sentencepiece model for both languages (needed for --tie all)")
    subword_type: str = common("unigram")
    character_coverage: float = opt(1.0, "sentencepiece character coverage (0.9995 suits large CJK alphabets)")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = common(256)
    heads: int = common(4)
    encoder_layers: int = opt(3, "encoder layers")
    decoder_layers: int = opt(3, "decoder layers")
    ff_dim: int = common(1024)
    dropout: float = opt(0.0, "dropout on embeddings, residual branches and feed-forward activations (the demo needs "
                         "none; use 0.1-0.3 on real corpora)")
    attention_dropout: float = common(0.0)
    positions: str = opt("sinusoidal", "position encoding", ("sinusoidal", "learned"))
    max_positions: int = opt(512, "longest sequence the model accepts (size of learned position tables)")
    tie: str = opt("all", "embedding sharing: all = source, target and output share one matrix (joint vocab); "
                   "decoder = target embedding tied to the output layer; none", ("all", "decoder", "none"))


@dataclass(frozen=True)
class TrainConfig:
    max_tokens: int = opt(3000, "tokens per batch (padded source + target), per process and accumulation step")
    accumulate: int = common(1)
    max_steps: int = common(800)
    max_epochs: int = opt(0, "stop after this many passes over the data (0 = no limit)")
    max_minutes: float = common(11.0)
    lr: float = common(1e-3)
    lr_schedule: str = common("inverse_sqrt")
    warmup: int = common(300)
    min_lr: float = common(0.0)
    adam_betas: tuple = common((0.9, 0.98))
    adam_eps: float = common(1e-9)
    clip_norm: float = common(1.0)
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy")
    average_decay: float = opt(0.0, "validate, test and translate with an exponential moving average of the weights "
                               "with this decay per update, e.g. 0.998 (0 = off, use the last weights)")
    precision: str = common("auto")
    threads: int = common(0)
    seed: int = common(1)
    log_every: int = common(100)
    valid_every: int = opt(200, "validate (loss, BLEU, chrF) and checkpoint every N updates")
    valid_beam: int = opt(1, "beam size for validation BLEU (1 = greedy, the fastest)")
    valid_max_sentences: int = opt(200, "validate on at most this many sentences (0 = all)")
    patience: int = opt(0, "early stopping: stop after N validations without a better BLEU (0 = off)")
    run_dir: str = common("runs/demo")
    resume: bool = common(True)
    overwrite: bool = common(False)
    init_from: str = common("")


@dataclass(frozen=True)
class PenaltyConfig:
    l2: float = opt(1e-5, "L2 coefficient: the gradient gains l2*w (as weight_decay in torch.optim.Adam)")
    l1: float = opt(0.0, "L1 coefficient: the gradient gains l1*sign(w)")
    decoupled: bool = opt(False, "decoupled decay w -= lr*l2*w (as in AdamW) instead of a gradient term; L2 only, "
                          "so --l1 with --decoupled is an error")
    penalty_schedule: str = common("")
    decay_norms_and_biases: bool = common(False)
    l2_sp: float = common(0.0)
    fisher_batches: int = common(0)
    fisher_data: str = common("")
    anchor_dtype: str = common("float32")


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = opt(4, "beam size (1 = greedy)")
    length_penalty: float = opt(1.0, "length normalisation exponent alpha: hypotheses ranked by logprob / len**alpha")
    max_len_a: float = opt(1.5, "longest output = a * source length + b")
    max_len_b: int = opt(10, "see --max-len-a")
    decode_tokens: int = opt(6000, "source tokens per decoding batch")


@dataclass(frozen=True)
class Config:
    KIND: ClassVar[TrainerKind] = TRANSLATION  # which trainer's runs and checkpoints this configures
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def section_fields():
    """(section name, field) for every option, in declaration order."""
    return plumbing.section_fields(Config)


def build_config(overrides: dict[str, dict[str, Any]], where: str = "config") -> Config:
    """A Config from {section: {field: value}}, coercing types and naming any unknown key."""
    config = plumbing.build_sections(Config, overrides, where)
    check(config)
    return config


def read_config_file(path: str | Path) -> dict:
    return plumbing.read_config_file(path, Config)


def check(config: Config) -> None:
    """Every value and combination that can be judged without data, so a bad setting fails before any
    data is read or a tokenizer trained."""
    m, d, t, p, dec = config.model, config.data, config.train, config.penalty, config.decode
    check_finite(config)
    check_ranges(
        positive={"data.vocab_size": d.vocab_size, "data.max_len": d.max_len, "data.demo_train_size": d.demo_train_size,
                  "model.d_model": m.d_model, "model.heads": m.heads, "model.encoder_layers": m.encoder_layers,
                  "model.decoder_layers": m.decoder_layers, "model.ff_dim": m.ff_dim, "model.max_positions": m.max_positions,
                  "train.max_tokens": t.max_tokens, "train.accumulate": t.accumulate, "train.log_every": t.log_every,
                  "train.valid_every": t.valid_every, "train.valid_beam": t.valid_beam, "train.lr": t.lr,
                  "train.adam_eps": t.adam_eps, "decode.beam": dec.beam, "decode.decode_tokens": dec.decode_tokens},
        not_negative={"train.max_steps": t.max_steps, "train.max_epochs": t.max_epochs, "train.max_minutes": t.max_minutes,
                      "train.warmup": t.warmup, "train.min_lr": t.min_lr, "train.clip_norm": t.clip_norm,
                      "train.threads": t.threads, "train.valid_max_sentences": t.valid_max_sentences,
                      "train.patience": t.patience, "penalty.l2": p.l2, "penalty.l1": p.l1,
                      "decode.max_len_a": dec.max_len_a, "decode.max_len_b": dec.max_len_b},
        fractions={"model.dropout": m.dropout, "model.attention_dropout": m.attention_dropout,
                   "train.average_decay": t.average_decay, "train.label_smoothing": t.label_smoothing,
                   "train.adam_betas[0]": t.adam_betas[0], "train.adam_betas[1]": t.adam_betas[1]})
    if not 0.0 < d.character_coverage <= 1.0:
        raise ConfigError(f"data.character_coverage must be in (0, 1], got {d.character_coverage}")
    if m.d_model % m.heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by model.heads ({m.heads})")
    if m.tie == "all" and not d.joint_vocab:
        raise ConfigError("model.tie = 'all' shares one embedding across languages and needs data.joint_vocab = true")
    if d.max_len + 1 > m.max_positions:  # a kept pair has max_len tokens plus EOS (source) or BOS (target)
        raise ConfigError(f"data.max_len + 1 ({d.max_len + 1}) exceeds model.max_positions ({m.max_positions})")
    check_train_and_penalty(t, p)
    if bool(d.train) != bool(d.valid):
        raise ConfigError("give data.train and data.valid together (or neither, for the demo corpus)")
    if t.init_from and d.tokenizer:
        raise ConfigError(f"a run fine-tuned from train.init_from uses that checkpoint's tokenizer, so data.tokenizer "
                          f"({d.tokenizer}) would go unused: leave it out")


def with_overrides(config: Config, section: str, **values) -> Config:
    """A copy of config with some fields of one section replaced (checked again)."""
    updated = replace(config, **{section: replace(getattr(config, section), **values)})
    check(updated)
    return updated



# What the weights and tokenizer of a checkpoint fix, so that a run resumed from it or fine-tuned from it
# (--init-from) keeps them: the options that made the tokenizer (a tokenizer that is reused, so options
# that would make another one would be recorded but not used) and the shapes of the weights. Dropout
# rates are not shapes, so either may change them.
WEIGHT_OPTIONS = tuple(("data", name) for name in ("vocab_size", "joint_vocab", "subword_type", "character_coverage")) + \
    tuple(("model", f.name) for f in fields(ModelConfig) if f.name not in ("dropout", "attention_dropout"))
# What a resumed run cannot change, besides the options the shared recipe and run directory fix: also
# where its tokenizer came from (RUN_DIR/tokenizer is reused).
FIXED_ON_RESUME = (("data", "tokenizer"),) + WEIGHT_OPTIONS


def check_resumable(saved_config: dict, cfg: Config, where: Path) -> None:
    check_fixed(saved_config, cfg, where, FIXED_ON_RESUME)
    if bool(saved_config.get("train", {}).get("average_decay")) != bool(cfg.train.average_decay):
        raise ConfigError(f"{where} was trained with train.average_decay = {saved_config['train']['average_decay']!r}; "
                          f"a resumed run cannot switch the weight average {'on' if cfg.train.average_decay else 'off'}: "
                          f"keep it, or {FRESH_RUN}")


def check_init_from(saved_config: dict, cfg: Config, where: Path) -> None:
    check_same_weights(saved_config, cfg, where, WEIGHT_OPTIONS)
