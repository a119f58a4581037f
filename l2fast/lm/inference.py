"""A ready-to-use model, tokenizer and config from one checkpoint file."""
from __future__ import annotations

from pathlib import Path

from ..trainer import checkpoint
from ..trainer.config import ConfigError
from .config import Config, build_config
from .model import DecoderLM
from .tokenizer import Tokenizer, from_state_dict


def load_for_inference(path: str | Path, device) -> tuple[DecoderLM, Tokenizer, Config]:
    state = checkpoint.load(path, device, require=("config", "tokenizer", "model"))
    try:
        cfg = build_config(state["config"], where=str(path))
    except ConfigError as e:  # e.g. a translation checkpoint
        raise checkpoint.CheckpointError(f"{path} is not a checkpoint of the language model ({e})") from None
    tokenizer = from_state_dict(state["tokenizer"])
    model = DecoderLM(cfg.model, tokenizer.vocab_size).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, tokenizer, cfg
