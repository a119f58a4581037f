"""The ``l2fast`` command: train, translate, evaluate, bench, ablation."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..trainer.cli import (FINITE, NOT_NEGATIVE, POSITIVE, TrainerCommands, add_ablation_command, add_checkpoint_flags,
                           add_train_command, check_output, command_parser)
from ..trainer.text import DataError
from .ablation import FINETUNE_SETTING_NAMES, SETTING_NAMES, make
from .config import Config, build_config

DESCRIPTION = """\
Transformer translation on l2fast's fused weight penalties.

  l2fast train                         train the demo model on the built-in corpus (no download)
  l2fast train --config configs/small.json --train data/train --valid data/valid --test data/test
  l2fast translate --checkpoint runs/demo/best.pt < input.txt > output.txt
  l2fast evaluate --checkpoint runs/demo/best.pt --test runs/demo/data/test
  l2fast bench                         training-step time: naive penalty vs l2fast
  l2fast ablation --seeds 3            penalty ablation on the demo corpus (markdown table)

Run `l2fast COMMAND --help` for every option of a command."""


def _decode_flags(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_flags(parser)
    parser.add_argument("--beam", type=POSITIVE, help="beam size (default: the checkpoint's decode.beam; 1 = greedy)")
    parser.add_argument("--length-penalty", type=FINITE, help="length normalisation exponent (default: the checkpoint's)")
    parser.add_argument("--decode-tokens", type=POSITIVE, help="source tokens per decoding batch (default: the checkpoint's)")


def build_parser() -> argparse.ArgumentParser:
    parser, commands = command_parser("l2fast", DESCRIPTION)

    add_train_command(commands, "train a model (defaults: the demo corpus and model)",
                      "Train a Transformer translation model. With no data options, trains on the built-in demo corpus.",
                      Config)

    translate = commands.add_parser("translate", help="translate a file or stdin to stdout",
                                    description="Translate one sentence per line (lines end at \\n only) to stdout "
                                                "(or --output), in batches of the lines that have arrived, so each "
                                                "translation is written as soon as its line is in.")
    _decode_flags(translate)
    translate.add_argument("--input", help="input file (default: stdin)")
    translate.add_argument("--output", help="output file (default: stdout)")

    evaluate = commands.add_parser("evaluate", help="BLEU and chrF of a checkpoint on a test set",
                                   description="Translate a test set and score it with sacrebleu (BLEU and chrF, signatures printed).")
    _decode_flags(evaluate)
    evaluate.add_argument("--test", required=True, help="test data: PREFIX (PREFIX.SRC / PREFIX.TGT) or a .tsv file")
    evaluate.add_argument("--src-suffix", help="source file suffix (default: the checkpoint's data.src_suffix)")
    evaluate.add_argument("--tgt-suffix", help="target file suffix (default: the checkpoint's data.tgt_suffix)")
    evaluate.add_argument("--hyp", help="also write the translations to this file")
    evaluate.add_argument("--json", help="also write the scores and signatures to this JSON file")

    bench = commands.add_parser("bench", help="training-step time with the naive penalty vs l2fast",
                                description="Times full training steps (forward, backward, penalty, clip, Adam) of one "
                                            "model on one fixed batch, for each way of applying the penalty, and prints "
                                            "a markdown table with the penalty's share of the step.")
    bench.add_argument("--size", choices=("demo", "small", "base"), nargs="+", default=["demo"], help="model sizes to time (default: demo)")
    bench.add_argument("--batch-tokens", type=POSITIVE, default=4096, help="padded tokens in the batch (default: 4096)")
    bench.add_argument("--steps", type=POSITIVE, default=20, help="timed steps per variant, after warm-up (default: 20)")
    bench.add_argument("--threads", type=NOT_NEGATIVE, default=0, help="CPU threads (default: all cores)")
    bench.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype (default: fp32)")

    add_ablation_command(commands, "Trains the translation model (default: the demo model on the demo corpus) per "
                                   "penalty setting (none, coupled L2 at three strengths, cosine-decayed, alternating) "
                                   "and seed, and tabulates test BLEU and chrF.", SETTING_NAMES, FINETUNE_SETTING_NAMES,
                         "runs/ablation")
    return parser


def _decode_settings(args, cfg):
    d = cfg.decode
    return (args.beam or d.beam, d.length_penalty if args.length_penalty is None else args.length_penalty,
            args.decode_tokens or d.decode_tokens)


def _translate_lines(lines, model, tokenizer, cfg, device, args, progress=None) -> list[str]:
    from .search import translate_ids

    beam, length_penalty, decode_tokens = _decode_settings(args, cfg)
    src_ids = tokenizer.encode_src(lines)
    limit = model.src_embed.max_positions - 1
    too_long = sum(len(ids) > limit for ids in src_ids)
    if too_long:
        print(f"warning: {too_long} input lines exceed the model's {limit} source tokens and are truncated", file=sys.stderr)
    ids = translate_ids(model, src_ids, beam, length_penalty, cfg.decode.max_len_a, cfg.decode.max_len_b, decode_tokens,
                        device, progress=progress)
    return tokenizer.decode_tgt(ids)


def command_translate(args) -> None:
    from .streaming import batches_as_available, utf8_lines

    check_output(args.output, "--output")
    try:
        source = open(args.input, "rb") if args.input else sys.stdin.buffer
    except OSError as e:
        raise DataError(f"--input {args.input}: {e.strerror}") from None
    model, tokenizer, cfg, device = TRAINER.load(args)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for lines in batches_as_available(utf8_lines(source, args.input or "stdin")):
            out.write("".join(h + "\n" for h in _translate_lines(lines, model, tokenizer, cfg, device, args)))
            out.flush()
    finally:
        if args.output:
            out.close()
        if args.input:
            source.close()


def command_evaluate(args) -> None:
    from tqdm import tqdm

    from .data import read_parallel
    from .metrics import score

    check_output(args.hyp, "--hyp")
    check_output(args.json, "--json")
    model, tokenizer, cfg, device = TRAINER.load(args)
    test = read_parallel(args.test, args.src_suffix or cfg.data.src_suffix, args.tgt_suffix or cfg.data.tgt_suffix)
    start = time.perf_counter()
    with tqdm(total=len(test.src), desc="evaluate", unit="sent", disable=None, file=sys.stderr) as bar:
        hyps = _translate_lines(test.src, model, tokenizer, cfg, device, args, progress=bar)
    scores = score(hyps, test.tgt)
    print(f"{test.name}: {len(hyps)} sentences, beam {_decode_settings(args, cfg)[0]}, "
          f"{time.perf_counter() - start:.1f}s: {scores.line()}")
    print(scores.signatures())
    if args.hyp:
        Path(args.hyp).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"test": test.name, "bleu": scores.bleu, "chrf": scores.chrf,
                                               "bleu_signature": scores.bleu_signature,
                                               "chrf_signature": scores.chrf_signature}, indent=2) + "\n", encoding="utf-8")


def command_bench(args) -> None:
    from .bench import run_bench

    print(run_bench(args.size, args.batch_tokens, args.steps, args.threads, args.precision))


def _report(results: dict) -> str:
    return (f"test BLEU {results['test_bleu']:.2f}  chrF {results['test_chrf']:.2f}  "
            f"({results['test_sentences']} sentences, beam {results['beam']}; {results['bleu_signature']})")


TRAINER = TrainerCommands("l2fast", __package__, Config, build_config, make, _report)
COMMANDS = {"train": TRAINER.train, "translate": command_translate, "evaluate": command_evaluate,
            "bench": command_bench, "ablation": TRAINER.ablation}


def main(argv: list[str] | None = None) -> int:
    return TRAINER.main(build_parser(), COMMANDS, argv)
