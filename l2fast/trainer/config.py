"""Configuration plumbing for typed, immutable run configurations: defaults < config file (JSON or
TOML) < command-line flags.

A trainer's configuration is a frozen dataclass whose fields are sections (frozen dataclasses of
options). Every option carries its help text, so the CLI's ``--help`` documents every option from
this one place, and every option has one flag named after it (``max_tokens`` -> ``--max-tokens``).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, Protocol

from ..schedules import MAX_NESTING
from .kinds import other_kind

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged (the nmt extra depends on it there)
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value that is missing, unknown, or inconsistent with another."""


def opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


# Options both trainers have: one help text (and set of choices) each, written once; each trainer
# declares such an option with common(default), its own default.
COMMON_OPTIONS = {
    "d_model": ("model width", None),
    "heads": ("attention heads (must divide --d-model)", None),
    "ff_dim": ("feed-forward inner width", None),
    "attention_dropout": ("dropout on attention weights", None),
    "subword_type": ("sentencepiece model type", ("unigram", "bpe")),
    "accumulate": ("batches whose gradients are summed into one update", None),
    "max_steps": ("stop after this many updates (0 = no limit)", None),
    "max_minutes": ("stop training after this much wall-clock time, validation included (0 = no limit)", None),
    "lr": ("peak learning rate", None),
    "lr_schedule": ("learning-rate schedule after linear warm-up", ("inverse_sqrt", "cosine", "constant")),
    "warmup": ("linear warm-up updates", None),
    "min_lr": ("learning rate floor reached by the cosine schedule at --max-steps", None),
    "adam_betas": ("Adam beta1 beta2", None),
    "adam_eps": ("Adam epsilon", None),
    "clip_norm": ("clip the global gradient norm to this (inside the optimizer step; 0 = off)", None),
    "precision": ("autocast dtype: auto = bf16 on GPUs (fp16 where bf16 is missing); on CPUs with native bf16 "
                  "(AVX512-BF16, AMX) the faster of bf16 and fp32 in a timed probe, else fp32",
                  ("auto", "fp32", "bf16", "fp16")),
    "threads": ("CPU threads for torch (0 = all cores)", None),
    "seed": ("random seed (data order, dropout, initialisation)", None),
    "log_every": ("log training loss, throughput and penalty every N updates", None),
    "run_dir": ("directory for checkpoints, tokenizer, metrics, plot and results", None),
    "init_from": ("fine-tune: a fresh run starts from this checkpoint's weights (its weight average where it kept "
                  "one) and tokenizer, with a new optimizer, step count and schedule; the run's model shape and "
                  "tokenizer options must be the checkpoint's (--config CHECKPOINT_DIR/config.json gives them). A "
                  "resumed run continues from RUN_DIR/latest.pt and does not read it again", None),
    "resume": ("continue from RUN_DIR/latest.pt if it exists", None),
    "overwrite": ("start afresh even where RUN_DIR holds an earlier run: the earlier run is moved aside to "
                  "RUN_DIR.old-TIMESTAMP, nothing is deleted (without it, such a RUN_DIR is refused unless it "
                  "can be resumed)", None),
    "penalty_schedule": ("coefficient schedule as JSON: {\"type\": NAME, \"args\": [...], ...keyword arguments} "
                         "naming a class of l2fast.schedules, e.g. {\"type\": \"Alternating\", \"every\": 100}; "
                         "nested objects with \"type\" are schedules too; empty = constant", None),
    "decay_norms_and_biases": ("also penalise biases and layer-norm weights (exempt otherwise)", None),
    "l2_sp": ("L2-SP: pull toward the --init-from weights w0: the gradient gains l2_sp * F * (w - w0), or with "
              "--decoupled w -= lr * l2_sp * F * (w - w0); F = 1, or the Fisher with --fisher-batches (EWC). The "
              "parameters --l2 exempts are not pulled; --penalty-schedule scales it as it scales --l2", None),
    "fisher_batches": ("EWC: weigh the L2-SP pull by the diagonal empirical Fisher of the --init-from weights, "
                       "estimated on this many batches of --fisher-data at the start (per batch: the squared "
                       "gradient of each batch's mean loss, averaged over the batches), scaled to mean 1 over all "
                       "weights so that --l2-sp keeps its average strength (0 = plain L2-SP)", None),
    "fisher_data": ("text of the task the --init-from checkpoint was trained on, in the form --train takes, for "
                    "--fisher-batches (read with the checkpoint's tokenizer)", None),
    "anchor_dtype": ("dtype in which the L2-SP anchors and the Fisher are kept (bfloat16 halves their memory)",
                     ("float32", "bfloat16")),
}


def common(default: Any) -> Any:
    """An option of COMMON_OPTIONS (found by the field's name) with this trainer's default."""
    return field(default=default, metadata={"common": True})


def describe(f) -> tuple[str, tuple | None]:
    """(help text, choices or None) of an option field."""
    if f.metadata.get("common"):
        return COMMON_OPTIONS[f.name]
    return f.metadata["help"], f.metadata.get("choices")


def sections_of(config_cls) -> dict:
    """{section name: section class} of a configuration class."""
    return {f.name: f.default_factory for f in fields(config_cls)}


def section_fields(config_cls):
    """(section name, field) for every option of a configuration class, in declaration order."""
    for name, cls in sections_of(config_cls).items():
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
            # Whole numbers only; an int is taken as it is (through float, a large one would lose digits).
            if isinstance(value, bool) or (not isinstance(value, int) and float(value) != int(value)):
                raise TypeError
            value = int(value)
        elif kind is str and not isinstance(value, str):
            value = json.dumps(value) if isinstance(value, dict) else str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: {section}.{f.name} must be of type {kind.__name__}, got {value!r}") from None
    choices = describe(f)[1]
    if choices and value not in choices:
        raise ConfigError(f"{where}: {section}.{f.name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def build_sections(config_cls, overrides: dict[str, dict[str, Any]], where: str = "config"):
    """An instance of config_cls from {section: {field: value}}, coercing types and naming any unknown key
    (the caller checks the values)."""
    sections_cls = sections_of(config_cls)
    check_shape(overrides, sections_cls, where)
    sections = {}
    for section, cls in sections_cls.items():
        values = dict(overrides.get(section, {}))
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown option {section}.{unknown[0]} (known: {', '.join(known)})")
        sections[section] = cls(**{k: _coerce(section, known[k], v, where) for k, v in values.items()})
    unknown_sections = sorted(set(overrides) - set(sections_cls))
    if unknown_sections:
        raise ConfigError(f"{where}: unknown section [{unknown_sections[0]}] (known: {', '.join(sections_cls)})")
    return config_cls(**sections)


def check_shape(content: Any, sections: dict, where) -> dict:
    """content itself when it has the shape {section: {option: value}}, else a ConfigError."""
    if not isinstance(content, dict):
        raise ConfigError(f"{where}: expected sections {', '.join(sections)} as an object, got a {type(content).__name__}")
    for section, values in content.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section [{section}] must be an object of options, got a {type(values).__name__}")
    return content


def read_config_file(path: str | Path, config_cls) -> dict:
    """The {section: {option: value}} of a JSON or TOML file; a file written for the other trainer is
    refused, naming the command it belongs to."""
    path = Path(path)
    content = _parse_config_file(path, sections_of(config_cls))
    kind = other_kind(content, config_cls.KIND)
    if kind:
        raise ConfigError(f"{path} is a configuration of the {kind.trainer}, not of the {config_cls.KIND.trainer}: "
                          f"give it to {kind.train} --config {path}")
    return content


def _parse_config_file(path: Path, sections: dict) -> dict:
    try:
        if path.suffix == ".toml":
            with open(path, "rb") as f:
                return check_shape(tomllib.load(f), sections, path)
        with open(path, encoding="utf-8") as f:
            return check_shape(json.load(f), sections, path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to be read") from None


def merge(base: dict, extra: dict) -> dict:
    """extra's options over base's, section by section (both already shaped as {section: {option: value}})."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


def check_finite(config) -> None:
    """Every float option of config is finite."""
    for section, f in section_fields(type(config)):
        value = getattr(getattr(config, section), f.name)
        values = value if isinstance(value, tuple) else (value,)
        if values and isinstance(values[0], float) and not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{section}.{f.name} must be finite, got {value!r}")


def check_ranges(positive: dict, not_negative: dict, fractions: dict) -> None:
    """Each named value > 0, >= 0, or in [0, 1) respectively; the first that is not is a ConfigError."""
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    for name, value in not_negative.items():
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    for name, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")


# torch.manual_seed and torch.Generator.manual_seed take seeds from 0 to 2**64 - 1.
SEED_RANGE = (0, 2**64 - 1)


def check_seed(value: int, name: str) -> None:
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low} to {high} (2**64 - 1), got {value}")


def check_train_and_penalty(train, penalty) -> None:
    """The checks of the train and penalty sections both trainers have: some stop condition, a cosine
    schedule's end, the seed's range, L1 with decoupled decay, the schedule's JSON, and what the pull
    toward the init-from weights needs."""
    t, p = train, penalty
    check_ranges(positive={}, not_negative={"penalty.l2_sp": p.l2_sp, "penalty.fisher_batches": p.fisher_batches},
                 fractions={})
    if t.max_steps == 0 and getattr(t, "max_epochs", 0) == 0 and t.max_minutes == 0:
        raise ConfigError("set at least one of " + ", ".join(
            f"train.{name}" for name in ("max_steps", "max_epochs", "max_minutes") if hasattr(t, name)))
    if t.lr_schedule == "cosine" and t.max_steps == 0:
        raise ConfigError("train.lr_schedule = 'cosine' decays to train.max_steps, so set it")
    check_seed(t.seed, "train.seed")
    if p.decoupled and p.l1:
        raise ConfigError(f"penalty.decoupled applies L2 only (as AdamW's weight_decay), but penalty.l1 = {p.l1}: "
                          "use --no-decoupled for an L1 penalty")
    if p.penalty_schedule:
        spec = parse_schedule(p.penalty_schedule)
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError('penalty.penalty_schedule must be a JSON object with a "type" key')
    check_anchored(t, p)


def check_anchored(train, penalty) -> None:
    """L2-SP pulls toward the init-from weights, EWC weighs that pull by a Fisher estimated on the
    original task's text: each needs the one before it."""
    if penalty.l2_sp and not train.init_from:
        raise ConfigError(f"penalty.l2_sp = {penalty.l2_sp} pulls the weights toward those the run starts from, "
                          "which must be a trained model's: give its checkpoint with --init-from")
    if penalty.fisher_batches and not penalty.l2_sp:
        raise ConfigError(f"penalty.fisher_batches = {penalty.fisher_batches} weighs the L2-SP pull by the Fisher "
                          "(EWC), but penalty.l2_sp = 0: give its strength with --l2-sp")
    if penalty.fisher_batches and not penalty.fisher_data:
        raise ConfigError(f"penalty.fisher_batches = {penalty.fisher_batches} estimates the Fisher on the text of the "
                          "task the --init-from model learned: give it with --fisher-data")


def parse_schedule(text: str):
    """The JSON of penalty.penalty_schedule, parsed; a ConfigError where it is not JSON or nests deeper
    than the parser can follow."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"penalty.penalty_schedule is not valid JSON: {e}") from None
    except RecursionError:
        # The same message as a nest the parser can follow (recipe.py): where the parser gives up
        # depends on how deep the caller's stack already is.
        raise ConfigError(f"penalty.penalty_schedule nests schedules more than {MAX_NESTING} levels deep") from None


class TrainerConfig(Protocol):
    """What the shared recipe reads of a trainer's configuration: its train and penalty sections."""
    train: Any
    penalty: Any
