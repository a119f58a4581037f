"""The language model's run configuration: defaults < config file (JSON or TOML) < command-line flags.

The train and penalty sections use the translation trainer's names wherever the option means the
same (``--lr``, ``--warmup``, ``--l2``, ``--decoupled``, ``--penalty-schedule`` ...), so the shared
recipe reads both.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ..trainer import config as plumbing
from ..trainer.config import ConfigError, check_finite, check_train_and_penalty, check_ranges, common, opt
from ..trainer.finetune import check_same_weights
from ..trainer.kinds import LANGUAGE_MODEL, TrainerKind
from ..trainer.rundir import check_fixed

DOCUMENTS = ("lines", "paragraphs")


@dataclass(frozen=True)
class DataConfig:
    train: str = opt("", "training text: a UTF-8 file; empty = the built-in demo text (written to RUN_DIR/data)")
    valid: str = opt("", "validation text, same format as --train")
    test: str = opt("", "test text, scored with the best checkpoint at the end of training (optional)")
    documents: str = opt("lines", "how a file holds documents: one per line, or paragraphs separated by blank lines",
                         DOCUMENTS)
    tokenizer: str = opt("bytes", "bytes = the 256 UTF-8 byte values; spm = a sentencepiece model trained on --train "
                         "(byte fallback, so any text round-trips)", ("bytes", "spm"))
    vocab_size: int = opt(4000, "sentencepiece vocabulary size (--tokenizer spm; at least 300: 256 byte pieces + specials)")
    subword_type: str = common("unigram")
    demo_documents: int = opt(6000, "training documents the demo text generator writes")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = common(128)
    heads: int = common(4)
    layers: int = opt(4, "Transformer blocks")
    ff_dim: int = common(512)
    context: int = opt(128, "tokens the model sees at once (training block length, longest generation)")
    positions: str = opt("rotary", "position encoding: learned table, or rotary (RoPE) on queries and keys",
                         ("learned", "rotary"))
    dropout: float = opt(0.0, "dropout on embeddings, residual branches and feed-forward activations")
    attention_dropout: float = common(0.0)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = opt(16, "blocks of --context tokens per batch, per process and accumulation step")
    accumulate: int = common(1)
    max_steps: int = common(1500)
    max_minutes: float = common(5.0)
    lr: float = common(2e-3)
    lr_schedule: str = common("cosine")
    warmup: int = common(100)
    min_lr: float = common(1e-4)
    adam_betas: tuple = common((0.9, 0.95))
    adam_eps: float = common(1e-8)
    clip_norm: float = common(1.0)
    precision: str = common("auto")
    threads: int = common(0)
    seed: int = common(1)
    log_every: int = common(50)
    valid_every: int = opt(250, "validate (loss, perplexity, bits per byte) and checkpoint every N updates")
    valid_max_tokens: int = opt(65536, "validate on at most this many tokens of --valid (0 = all); the final "
                                "test always scores all of --test")
    run_dir: str = common("runs/lm-demo")
    resume: bool = common(True)
    overwrite: bool = common(False)
    init_from: str = common("")


@dataclass(frozen=True)
class PenaltyConfig:
    l2: float = opt(0.1, "L2 coefficient: with --decoupled (the default) w -= lr*l2*w as AdamW's weight_decay; "
                    "with --no-decoupled the gradient gains l2*w (as weight_decay in torch.optim.Adam)")
    l1: float = opt(0.0, "L1 coefficient: the gradient gains l1*sign(w) (needs --no-decoupled)")
    decoupled: bool = opt(True, "decoupled decay (as in AdamW) instead of a gradient term; L2 only")
    penalty_schedule: str = common("")
    decay_norms_and_biases: bool = common(False)
    decay_embeddings: bool = opt(True, "penalise the token (and learned position) embeddings; the output layer "
                                 "shares the token embedding's matrix")
    l2_sp: float = common(0.0)
    fisher_batches: int = common(0)
    fisher_data: str = common("")
    anchor_dtype: str = common("float32")


@dataclass(frozen=True)
class Config:
    KIND: ClassVar[TrainerKind] = LANGUAGE_MODEL  # which trainer's runs and checkpoints this configures
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def build_config(overrides: dict[str, dict[str, Any]], where: str = "config") -> Config:
    """A Config from {section: {field: value}}, coercing types and naming any unknown key."""
    config = plumbing.build_sections(Config, overrides, where)
    check(config)
    return config


def check(config: Config) -> None:
    """Every value and combination that can be judged without data, so a bad setting fails before any
    data is read or a tokenizer trained."""
    d, m, t, p = config.data, config.model, config.train, config.penalty
    check_finite(config)
    check_ranges(
        positive={"data.vocab_size": d.vocab_size, "data.demo_documents": d.demo_documents, "model.d_model": m.d_model,
                  "model.heads": m.heads, "model.layers": m.layers, "model.ff_dim": m.ff_dim, "model.context": m.context,
                  "train.batch_size": t.batch_size, "train.accumulate": t.accumulate, "train.lr": t.lr,
                  "train.adam_eps": t.adam_eps, "train.log_every": t.log_every, "train.valid_every": t.valid_every},
        not_negative={"train.max_steps": t.max_steps, "train.max_minutes": t.max_minutes, "train.warmup": t.warmup,
                      "train.min_lr": t.min_lr, "train.clip_norm": t.clip_norm, "train.threads": t.threads,
                      "train.valid_max_tokens": t.valid_max_tokens, "penalty.l2": p.l2, "penalty.l1": p.l1},
        fractions={"model.dropout": m.dropout, "model.attention_dropout": m.attention_dropout,
                   "train.adam_betas[0]": t.adam_betas[0], "train.adam_betas[1]": t.adam_betas[1]})
    if m.d_model % m.heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by model.heads ({m.heads})")
    if m.positions == "rotary" and (m.d_model // m.heads) % 2:
        raise ConfigError(f"model.positions = 'rotary' rotates channel pairs and needs an even head width, "
                          f"but model.d_model / model.heads = {m.d_model // m.heads}")
    if d.tokenizer == "spm" and d.vocab_size < 300:
        raise ConfigError(f"data.vocab_size = {d.vocab_size} is too small for --tokenizer spm: its byte fallback "
                          "needs 256 byte pieces plus special and character pieces (use at least 300)")
    check_train_and_penalty(t, p)
    if bool(d.train) != bool(d.valid):
        raise ConfigError("give data.train and data.valid together (or neither, for the demo text)")


# What the weights and tokenizer of a checkpoint fix, so that a run resumed from it or fine-tuned from it
# (--init-from) keeps them: the tokenizer and the shapes of the weights. Dropout rates are not shapes,
# so either may change them.
WEIGHT_OPTIONS = (("data", "tokenizer"), ("data", "vocab_size"), ("data", "subword_type")) + tuple(
    ("model", f.name) for f in fields(ModelConfig) if f.name not in ("dropout", "attention_dropout"))
# What a resumed run cannot change, besides the options the shared recipe and run directory fix.
FIXED_ON_RESUME = WEIGHT_OPTIONS


def check_resumable(saved_config: dict, cfg: Config, where: Path) -> None:
    check_fixed(saved_config, cfg, where, FIXED_ON_RESUME)


def check_init_from(saved_config: dict, cfg: Config, where: Path) -> None:
    check_same_weights(saved_config, cfg, where, WEIGHT_OPTIONS)
