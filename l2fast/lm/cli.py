"""The ``l2fast lm`` command: train, generate, evaluate, ablation."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..trainer.cli import (NOT_NEGATIVE, NOT_NEGATIVE_FLOAT, POSITIVE, SEED, TrainerCommands, add_ablation_command,
                           add_checkpoint_flags, add_train_command, check_output, command_parser)
from ..trainer.config import ConfigError
from ..trainer.text import DataError
from .ablation import FINETUNE_SETTING_NAMES, SETTING_NAMES, make
from .config import DOCUMENTS, Config, build_config

PROG = "l2fast lm"
DESCRIPTION = """\
Decoder-only Transformer language model on l2fast's fused weight penalties.

  l2fast lm train                      train a small model on the built-in demo text (no download)
  l2fast lm train --config configs/lm-english.json   the English documentation corpus (after
                                       python scripts/english_corpus.py data/english)
  l2fast lm generate --checkpoint runs/lm-demo/best.pt --prompt "This is a story about"
  l2fast lm evaluate --checkpoint runs/lm-demo/best.pt --text runs/lm-demo/data/test.txt
  l2fast lm ablation --config configs/lm-ablation.json --seeds 3     penalty ablation (markdown table)

Run `l2fast lm COMMAND --help` for every option of a command."""


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser, commands = command_parser(PROG, DESCRIPTION)

    add_train_command(commands, "train a model (defaults: the demo text and a small model)",
                      "Train a decoder-only language model. With no data options, trains on the built-in demo text.",
                      Config)

    gen = commands.add_parser("generate", help="continue prompts",
                              description="Continue each prompt (one per --prompt, or one per line of --input) until the "
                                          "end of the document or --max-new-tokens, one continuation per output line "
                                          "(newlines inside it written as \\n).")
    add_checkpoint_flags(gen)
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable; default: one empty prompt)")
    gen.add_argument("--input", help="a UTF-8 file with one prompt per line (instead of --prompt)")
    gen.add_argument("--max-new-tokens", type=POSITIVE, default=200, help="tokens to add at most (default: 200; "
                                                                          "fewer where the context is full)")
    gen.add_argument("--temperature", type=NOT_NEGATIVE_FLOAT, default=1.0, help="sampling temperature (0 = greedy; default: 1)")
    gen.add_argument("--top-k", type=NOT_NEGATIVE, default=0, help="sample among the k most likely tokens (0 = all; default: 0)")
    gen.add_argument("--top-p", type=_probability, default=1.0, help="sample among the most likely tokens whose "
                                                                     "probability sums to p (default: 1 = all)")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token (as --temperature 0)")
    gen.add_argument("--seed", type=SEED, default=1, help="random seed of the sampling (default: 1)")
    gen.add_argument("--no-prompt", action="store_true", help="print the continuation only, without its prompt")

    evaluate = commands.add_parser("evaluate", help="loss, perplexity and bits per byte of a text",
                                   description="Score a text file with a checkpoint: loss and perplexity per token, and "
                                               "bits per byte (comparable across tokenizers).")
    add_checkpoint_flags(evaluate)
    evaluate.add_argument("--text", required=True, help="UTF-8 text file")
    evaluate.add_argument("--documents", choices=DOCUMENTS, help="how --text holds documents (default: the checkpoint's)")
    evaluate.add_argument("--json", help="also write the scores to this JSON file")

    add_ablation_command(commands, "Trains the language model (default: the demo model on the demo text) per penalty "
                                   "setting (none, coupled L2 at three strengths, decoupled, cosine-decayed, "
                                   "alternating) and seed, and tabulates validation and test bits per byte.",
                         SETTING_NAMES, FINETUNE_SETTING_NAMES, "runs/lm-ablation")
    return parser


def _prompts(args) -> list[str]:
    from ..trainer.text import read_lines

    if args.input and args.prompt:
        raise ConfigError("give prompts with --prompt or --input, not both")
    if args.input:
        if Path(args.input).is_dir():
            raise DataError(f"--input {args.input}: is a directory, not a text file")
        return read_lines(args.input)
    return args.prompt or [""]


def command_generate(args) -> None:
    from .generate import Sampling, generate

    prompts = _prompts(args)
    model, tokenizer, cfg, device = TRAINER.load(args)
    sampling = Sampling(0.0 if args.greedy else args.temperature, args.top_k, args.top_p)
    ids = generate(model, tokenizer.encode(prompts), args.max_new_tokens, tokenizer.eod, sampling, args.seed, device)
    for prompt, text in zip(prompts, tokenizer.decode(ids)):
        line = text if args.no_prompt else prompt + text
        sys.stdout.write(line.replace("\\", "\\\\").replace("\n", "\\n") + "\n")


def command_evaluate(args) -> None:
    from .data import read_documents, token_stream
    from .evaluate import score_stream

    check_output(args.json, "--json")
    model, tokenizer, cfg, device = TRAINER.load(args)
    docs = read_documents(args.text, args.documents or cfg.data.documents)
    score = score_stream(model, token_stream(tokenizer, docs), docs.utf8_bytes, device)
    print(f"{docs.name}: {len(docs.texts)} documents, {score.tokens:,} tokens, {score.utf8_bytes:,} bytes: {score.line()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"text": docs.name, "documents": len(docs.texts), **score.as_dict("text")},
                                              indent=2) + "\n", encoding="utf-8")


def _report(results: dict) -> str:
    name = "test" if "test_bpb" in results else "valid"
    return (f"{name} loss {results[f'{name}_loss']:.4f}  ppl {results[f'{name}_ppl']:.3f}  "
            f"bits/byte {results[f'{name}_bpb']:.4f}  ({results['scored']}, step {results['step']})")


TRAINER = TrainerCommands(PROG, __package__, Config, build_config, make, _report)
COMMANDS = {"train": TRAINER.train, "generate": command_generate, "evaluate": command_evaluate,
            "ablation": TRAINER.ablation}


def main(argv: list[str] | None = None) -> int:
    return TRAINER.main(build_parser(), COMMANDS, argv)
