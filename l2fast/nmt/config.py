"""Typed, immutable run configuration: defaults < config file (JSON or TOML) < command-line flags.

Every field carries its help text, so the CLI's ``--help`` documents every option from this one
place, and every field has one flag named after it (``max_tokens`` -> ``--max-tokens``).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged (the nmt extra depends on it there)
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value that is missing, unknown, or inconsistent with another."""


def opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


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
    subword_type: str = opt("unigram", "sentencepiece model type", ("unigram", "bpe"))
    character_coverage: float = opt(1.0, "sentencepiece character coverage (0.9995 suits large CJK alphabets)")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = opt(256, "model width")
    heads: int = opt(4, "attention heads (must divide --d-model)")
    encoder_layers: int = opt(3, "encoder layers")
    decoder_layers: int = opt(3, "decoder layers")
    ff_dim: int = opt(1024, "feed-forward inner width")
    dropout: float = opt(0.0, "dropout on embeddings, residual branches and feed-forward activations (the demo needs "
                         "none; use 0.1-0.3 on real corpora)")
    attention_dropout: float = opt(0.0, "dropout on attention weights")
    positions: str = opt("sinusoidal", "position encoding", ("sinusoidal", "learned"))
    max_positions: int = opt(512, "longest sequence the model accepts (size of learned position tables)")
    tie: str = opt("all", "embedding sharing: all = source, target and output share one matrix (joint vocab); "
                   "decoder = target embedding tied to the output layer; none", ("all", "decoder", "none"))


@dataclass(frozen=True)
class TrainConfig:
    max_tokens: int = opt(3000, "tokens per batch (padded source + target), per process and accumulation step")
    accumulate: int = opt(1, "batches whose gradients are summed into one update")
    max_steps: int = opt(800, "stop after this many updates (0 = no limit)")
    max_epochs: int = opt(0, "stop after this many passes over the data (0 = no limit)")
    max_minutes: float = opt(11.0, "stop training after this much wall-clock time, validation included (0 = no limit)")
    lr: float = opt(1e-3, "peak learning rate")
    lr_schedule: str = opt("inverse_sqrt", "learning-rate schedule after linear warm-up", ("inverse_sqrt", "cosine", "constant"))
    warmup: int = opt(300, "linear warm-up updates")
    min_lr: float = opt(0.0, "learning rate floor reached by the cosine schedule at --max-steps")
    adam_betas: tuple = opt((0.9, 0.98), "Adam beta1 beta2")
    adam_eps: float = opt(1e-9, "Adam epsilon")
    clip_norm: float = opt(1.0, "clip the global gradient norm to this (fused norm op; 0 = off)")
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy")
    average_decay: float = opt(0.0, "validate, test and translate with an exponential moving average of the weights "
                               "with this decay per update, e.g. 0.998 (0 = off, use the last weights)")
    precision: str = opt("auto", "autocast dtype: auto = bf16 on GPUs (fp16 where bf16 is missing); on CPUs "
                          "with native bf16 (AVX512-BF16, AMX) the faster of bf16 and fp32 in a timed probe, else fp32", ("auto", "fp32", "bf16", "fp16"))
    threads: int = opt(0, "CPU threads for torch (0 = all cores)")
    seed: int = opt(1, "random seed (data order, dropout, initialisation)")
    log_every: int = opt(100, "log training loss, throughput and penalty every N updates")
    valid_every: int = opt(200, "validate (loss, BLEU, chrF) and checkpoint every N updates")
    valid_beam: int = opt(1, "beam size for validation BLEU (1 = greedy, the fastest)")
    valid_max_sentences: int = opt(200, "validate on at most this many sentences (0 = all)")
    patience: int = opt(0, "early stopping: stop after N validations without a better BLEU (0 = off)")
    run_dir: str = opt("runs/demo", "directory for checkpoints, tokenizer, metrics, plot and results")
    resume: bool = opt(True, "continue from RUN_DIR/latest.pt if it exists")
    overwrite: bool = opt(False, "start afresh even where RUN_DIR holds an earlier run: the earlier run is moved aside to "
                          "RUN_DIR.old-TIMESTAMP, nothing is deleted (without it, such a RUN_DIR is refused unless it "
                          "can be resumed)")


@dataclass(frozen=True)
class PenaltyConfig:
    l2: float = opt(1e-5, "L2 coefficient: the gradient gains l2*w (as weight_decay in torch.optim.Adam)")
    l1: float = opt(0.0, "L1 coefficient: the gradient gains l1*sign(w)")
    decoupled: bool = opt(False, "decoupled decay w -= lr*l2*w (as in AdamW) instead of a gradient term; L2 only, "
                          "so --l1 with --decoupled is an error")
    penalty_schedule: str = opt("", "coefficient schedule as JSON: {\"type\": NAME, \"args\": [...], ...keyword arguments} "
                                "naming a class of l2fast.schedules, e.g. {\"type\": \"Alternating\", \"every\": 100}; "
                                "nested objects with \"type\" are schedules too; empty = constant")
    decay_norms_and_biases: bool = opt(False, "also penalise biases and layer-norm weights (exempt otherwise)")


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = opt(4, "beam size (1 = greedy)")
    length_penalty: float = opt(1.0, "length normalisation exponent alpha: hypotheses ranked by logprob / len**alpha")
    max_len_a: float = opt(1.5, "longest output = a * source length + b")
    max_len_b: int = opt(10, "see --max-len-a")
    decode_tokens: int = opt(6000, "source tokens per decoding batch")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return asdict(self)


SECTIONS = {f.name: f.default_factory for f in fields(Config)}


def section_fields():
    """(section name, field) for every option, in declaration order."""
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            yield name, f


def _coerce(section: str, f, value: Any, where: str) -> Any:
    default = f.default if f.default is not MISSING else None
    kind = type(default)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif kind is tuple:
            value = tuple(float(v) for v in value)
            if len(value) != len(default):
                raise TypeError
        elif kind is float:
            value = float(value)
        elif kind is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            value = int(value)
        elif kind is str and not isinstance(value, str):
            value = json.dumps(value) if isinstance(value, dict) else str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: {section}.{f.name} must be of type {kind.__name__}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {section}.{f.name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def build_config(overrides: dict[str, dict[str, Any]], where: str = "config") -> Config:
    """A Config from {section: {field: value}}, coercing types and naming any unknown key."""
    _sections(overrides, where)
    sections = {}
    for section, cls in SECTIONS.items():
        values = dict(overrides.get(section, {}))
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown option {section}.{unknown[0]} (known: {', '.join(known)})")
        sections[section] = cls(**{k: _coerce(section, known[k], v, where) for k, v in values.items()})
    unknown_sections = sorted(set(overrides) - set(SECTIONS))
    if unknown_sections:
        raise ConfigError(f"{where}: unknown section [{unknown_sections[0]}] (known: {', '.join(SECTIONS)})")
    config = Config(**sections)
    check(config)
    return config


def _sections(content: Any, where) -> dict:
    """content itself when it has the shape {section: {option: value}}, else a ConfigError."""
    if not isinstance(content, dict):
        raise ConfigError(f"{where}: expected sections {', '.join(SECTIONS)} as an object, got a {type(content).__name__}")
    for section, values in content.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section [{section}] must be an object of options, got a {type(values).__name__}")
    return content


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        if path.suffix == ".toml":
            with open(path, "rb") as f:
                return _sections(tomllib.load(f), path)
        with open(path, encoding="utf-8") as f:
            return _sections(json.load(f), path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None


def merge(base: dict, extra: dict) -> dict:
    """extra's options over base's, section by section (both already shaped as {section: {option: value}})."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


def check(config: Config) -> None:
    """Every value and combination that can be judged without data, so a bad setting fails before any
    data is read or a tokenizer trained."""
    m, d, t, p, dec = config.model, config.data, config.train, config.penalty, config.decode
    for section, f in section_fields():
        value = getattr(getattr(config, section), f.name)
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(values[0], float) and not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{section}.{f.name} must be finite, got {value!r}")
    positive = {"data.vocab_size": d.vocab_size, "data.max_len": d.max_len, "data.demo_train_size": d.demo_train_size,
                "model.d_model": m.d_model, "model.heads": m.heads, "model.encoder_layers": m.encoder_layers,
                "model.decoder_layers": m.decoder_layers, "model.ff_dim": m.ff_dim, "model.max_positions": m.max_positions,
                "train.max_tokens": t.max_tokens, "train.accumulate": t.accumulate, "train.log_every": t.log_every,
                "train.valid_every": t.valid_every, "train.valid_beam": t.valid_beam, "train.lr": t.lr,
                "train.adam_eps": t.adam_eps, "decode.beam": dec.beam, "decode.decode_tokens": dec.decode_tokens}
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    not_negative = {"train.max_steps": t.max_steps, "train.max_epochs": t.max_epochs, "train.max_minutes": t.max_minutes,
                    "train.warmup": t.warmup, "train.min_lr": t.min_lr, "train.clip_norm": t.clip_norm,
                    "train.threads": t.threads, "train.valid_max_sentences": t.valid_max_sentences,
                    "train.patience": t.patience, "penalty.l2": p.l2, "penalty.l1": p.l1,
                    "decode.max_len_a": dec.max_len_a, "decode.max_len_b": dec.max_len_b}
    for name, value in not_negative.items():
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    for name, value in (("model.dropout", m.dropout), ("model.attention_dropout", m.attention_dropout),
                        ("train.average_decay", t.average_decay), ("train.label_smoothing", t.label_smoothing),
                        ("train.adam_betas[0]", t.adam_betas[0]), ("train.adam_betas[1]", t.adam_betas[1])):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if not 0.0 < d.character_coverage <= 1.0:
        raise ConfigError(f"data.character_coverage must be in (0, 1], got {d.character_coverage}")
    if m.d_model % m.heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by model.heads ({m.heads})")
    if m.tie == "all" and not d.joint_vocab:
        raise ConfigError("model.tie = 'all' shares one embedding across languages and needs data.joint_vocab = true")
    if d.max_len + 1 > m.max_positions:  # a kept pair has max_len tokens plus EOS (source) or BOS (target)
        raise ConfigError(f"data.max_len + 1 ({d.max_len + 1}) exceeds model.max_positions ({m.max_positions})")
    if t.max_steps == 0 and t.max_epochs == 0 and t.max_minutes == 0:
        raise ConfigError("set at least one of train.max_steps, train.max_epochs, train.max_minutes")
    if t.lr_schedule == "cosine" and t.max_steps == 0:
        raise ConfigError("train.lr_schedule = 'cosine' decays to train.max_steps, so set it")
    if p.decoupled and p.l1:
        raise ConfigError(f"penalty.decoupled applies L2 only (as AdamW's weight_decay), but penalty.l1 = {p.l1}: "
                          "use --no-decoupled for an L1 penalty")
    if p.penalty_schedule:
        try:
            spec = json.loads(p.penalty_schedule)
        except json.JSONDecodeError as e:
            raise ConfigError(f"penalty.penalty_schedule is not valid JSON: {e}") from None
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError('penalty.penalty_schedule must be a JSON object with a "type" key')
    if bool(d.train) != bool(d.valid):
        raise ConfigError("give data.train and data.valid together (or neither, for the demo corpus)")


def with_overrides(config: Config, section: str, **values) -> Config:
    """A copy of config with some fields of one section replaced (checked again)."""
    updated = replace(config, **{section: replace(getattr(config, section), **values)})
    check(updated)
    return updated

