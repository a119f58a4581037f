"""Which trainer made a checkpoint, a run directory or a configuration file, and which commands read it.

Each trainer's configuration has options the other's lacks, so a saved configuration tells which
trainer wrote it. A trainer's commands use this to refuse the other trainer's checkpoints
(``checkpoint``), run directories (``rundir``) and configuration files (``config``) with a message
that names the command to use instead, rather than one about an option they do not know.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerKind:
    model: str  # what its checkpoints hold, e.g. "translation model"
    trainer: str  # e.g. "translation trainer"
    train: str  # the command that trains and resumes its runs
    readers: str  # the commands that read its checkpoints
    marker: tuple[str, str]  # (section, option) that only this trainer's configuration has
    sizes: str  # the options that set how much memory a run needs


TRANSLATION = TrainerKind("translation model", "translation trainer", "l2fast train",
                          "l2fast translate or l2fast evaluate", ("model", "encoder_layers"),
                          "model.d_model, model.ff_dim, model.encoder_layers, model.decoder_layers, train.max_tokens")
LANGUAGE_MODEL = TrainerKind("language model", "language-model trainer", "l2fast lm train",
                             "l2fast lm generate or l2fast lm evaluate", ("model", "context"),
                             "model.d_model, model.ff_dim, model.layers, model.context, train.batch_size")
KINDS = (TRANSLATION, LANGUAGE_MODEL)


def kind_of(config) -> TrainerKind | None:
    """The trainer whose configuration config ({section: {option: value}}) is; None when it is neither's."""
    if not isinstance(config, dict):
        return None
    for kind in KINDS:
        section, option = kind.marker
        if isinstance(config.get(section), dict) and option in config[section]:
            return kind
    return None


def other_kind(config, expected: TrainerKind) -> TrainerKind | None:
    """The other trainer, where config is its configuration; else None."""
    kind = kind_of(config)
    return kind if kind is not None and kind != expected else None
