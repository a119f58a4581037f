"""A ready-to-use model, tokenizer and config from one checkpoint file."""
from __future__ import annotations

from pathlib import Path

from ..trainer import checkpoint
from .config import Config, build_config
from .model import DecoderLM
from .tokenizer import Tokenizer, from_state_dict


def load_for_inference(path: str | Path, device) -> tuple[DecoderLM, Tokenizer, Config]:
    state = checkpoint.load(path, device, require=("config", "tokenizer", "model"))
    cfg = checkpoint.saved_config(state, Config, build_config, path)
    tokenizer = from_state_dict(state["tokenizer"])
    model = DecoderLM(cfg.model, tokenizer.vocab_size).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, tokenizer, cfg
