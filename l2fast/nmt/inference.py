"""A model from a configuration, and a ready-to-translate model from one checkpoint file."""
from __future__ import annotations

from pathlib import Path

from ..trainer import checkpoint
from .config import Config, build_config
from .model import Transformer
from .tokenizer import Tokenizer


def build_model(cfg: Config, tokenizer: Tokenizer) -> Transformer:
    return Transformer(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)


def load_for_inference(path: str | Path, device) -> tuple[Transformer, Tokenizer, Config]:
    """Model, tokenizer and config from one checkpoint file (it carries all three)."""
    state = checkpoint.load(path, device, require=("config", "tokenizer", "model"))
    cfg = checkpoint.saved_config(state, Config, build_config, path)
    tokenizer = Tokenizer.from_state_dict(state["tokenizer"])
    model = build_model(cfg, tokenizer).to(device)
    model.load_state_dict(checkpoint.inference_weights(state))
    model.eval()
    return model, tokenizer, cfg
