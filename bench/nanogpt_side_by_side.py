"""The helper of bench/nanogpt_side_by_side.sh: nanoGPT on the data, tokenizer, model and recipe of an
``l2fast lm train`` run, both final models scored the same way.

    python bench/nanogpt_side_by_side.py export RUN_DIR WORK_DIR
        WORK_DIR/data/{train,val}.bin: the run's training and validation text as l2fast streams them
        (l2fast's tokenizer, an end-of-document token after every document), uint16 as nanoGPT reads
        them; WORK_DIR/data/meta.pkl (vocab_size); WORK_DIR/config.py: nanoGPT's settings for the run's
        model size and recipe; WORK_DIR/export.json
    python bench/nanogpt_side_by_side.py plan WORK_DIR PROBE_SECONDS PROBE_ITERS MINUTES
        prints the max_iters that fill MINUTES ('same': the l2fast run's training time), from the
        iteration times of a short probe run (its log: WORK_DIR/probe.log)
    python bench/nanogpt_side_by_side.py score NANOGPT_DIR RUN_DIR WORK_DIR MINUTES NANOGPT_SECONDS
        scores l2fast's latest.pt and nanoGPT's WORK_DIR/out/ckpt.pt on the whole validation text with
        l2fast's own scoring (l2fast.lm.evaluate: the same windows of the context length, the same
        tokens, the same byte count), and prints the markdown table (also WORK_DIR/side_by_side.md)

Paths in the run's configuration (``data.train``, ``data.valid``) are read relative to the current
directory, as ``l2fast lm train`` read them: run this from the directory the run was started in.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from l2fast.lm.config import Config
from l2fast.lm.data import Documents, read_documents, token_stream
from l2fast.lm.evaluate import Score, score_stream
from l2fast.lm.inference import load_for_inference
from l2fast.lm.tokenizer import Tokenizer
from l2fast.trainer import checkpoint
from l2fast.trainer.text import DataError

NANOGPT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ITERATION_LINE = re.compile(r"^iter (\d+): loss \S+, time ([\d.]+)ms", re.M)
NANOGPT_EVAL_ITERS = 10  # batches per split of nanoGPT's own loss estimate (its numbers are not the ones compared)


class SideBySideError(Exception):
    """A run the comparison cannot reproduce in nanoGPT, or files that are missing."""


# ---- the run and its data ---------------------------------------------------------------------------

def run_files(run_dir: Path) -> tuple[dict, Path, Path]:
    """The run's final checkpoint state and its training and validation text files."""
    path = run_dir / checkpoint.LATEST
    if not path.is_file():
        raise SideBySideError(f"{path} not found: give the run directory of a finished `l2fast lm train` run")
    state = checkpoint.load(path, "cpu", require=("config", "tokenizer", "model", "counters"))
    data = state["config"]["data"]
    if data["train"]:
        train, valid = Path(data["train"]), Path(data["valid"])
    else:  # the built-in demo text, written into the run directory
        train, valid = run_dir / "data" / "train.txt", run_dir / "data" / "valid.txt"
    for text in (train, valid):
        if not text.is_file():
            raise SideBySideError(f"{text} not found (the run's data.train / data.valid are read relative to the "
                                  "current directory: run this from where the run was started)")
    return state, train, valid


def write_stream(tokenizer: Tokenizer, docs: Documents, path: Path) -> int:
    """docs as l2fast's token stream, in nanoGPT's format (raw uint16); returns the token count."""
    if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
        raise SideBySideError(f"nanoGPT stores tokens as uint16; a vocabulary of {tokenizer.vocab_size} does not fit")
    stream = token_stream(tokenizer, docs).numpy().astype(np.uint16)
    stream.tofile(path)
    return stream.size


def write_dataset(tokenizer: Tokenizer, train: Documents, valid: Documents, data_dir: Path) -> dict:
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train_tokens": write_stream(tokenizer, train, data_dir / "train.bin"),
              "valid_tokens": write_stream(tokenizer, valid, data_dir / "val.bin")}
    with open(data_dir / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": tokenizer.vocab_size}, f)
    return counts


# ---- the recipe in nanoGPT's terms ------------------------------------------------------------------

def check_expressible(cfg: Config) -> None:
    """Refuses a run whose model or optimiser nanoGPT cannot reproduce by configuration."""
    m, t, p = cfg.model, cfg.train, cfg.penalty
    problems = []
    if m.ff_dim != 4 * m.d_model:
        problems.append(f"model.ff_dim = {m.ff_dim}, but nanoGPT's feed-forward width is 4 x d_model = {4 * m.d_model}")
    if t.lr_schedule != "cosine":
        problems.append(f"train.lr_schedule = {t.lr_schedule!r}; nanoGPT decays the learning rate by a cosine only")
    if p.l1 or not p.decoupled or p.penalty_schedule:
        problems.append("the penalty is not a constant decoupled L2 (nanoGPT has AdamW's weight_decay only)")
    if p.decay_norms_and_biases or not p.decay_embeddings:
        problems.append("nanoGPT decays every matrix and embedding and no norm or bias: use l2fast's defaults "
                        "(--decay-embeddings, no --decay-norms-and-biases)")
    if problems:
        raise SideBySideError("this run cannot be reproduced in nanoGPT: " + "; ".join(problems))


def differences(cfg: Config) -> list[str]:
    """What still differs between the two trainers for this run (for the notes under the table)."""
    m, t = cfg.model, cfg.train
    notes = [
        "activation: l2fast ReLU, nanoGPT GELU",
        "feed-forward dropout: l2fast also drops the hidden activations, nanoGPT only the block's output",
        "batches: l2fast takes aligned blocks of the training stream in a shuffled order each epoch; nanoGPT "
        "samples windows at random offsets, with replacement",
        f"warm-up: l2fast lr x (step+1)/{t.warmup}, nanoGPT lr x (step+1)/{t.warmup + 1}",
        "initialisation seed: l2fast train.seed, nanoGPT 1337",
    ]
    if m.positions == "rotary":
        notes.append(f"positions: l2fast rotary (no parameters), nanoGPT a learned table ({m.context} x {m.d_model} "
                     "parameters, decayed)")
    if m.attention_dropout != m.dropout:
        notes.append(f"attention dropout: l2fast {m.attention_dropout}, nanoGPT {m.dropout} (one rate for all dropout)")
    if t.adam_eps != 1e-8:
        notes.append(f"Adam eps: l2fast {t.adam_eps}, nanoGPT 1e-8")
    return notes


def nanogpt_config(cfg: Config, precision: str, threads: int, data_dir: Path, out_dir: Path) -> str:
    """nanoGPT's settings (a Python file its configurator runs inside train.py) for the run's model and
    recipe, on as many threads as the run had. max_iters, lr_decay_iters and eval_interval are given on the
    command line, once the wall clock has been measured. nanoGPT joins 'data' with dataset; an absolute
    dataset path wins (os.path.join), so the checkout stays untouched."""
    m, t, p = cfg.model, cfg.train, cfg.penalty
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = {
        "out_dir": str(out_dir), "dataset": str(data_dir.resolve()), "init_from": "scratch",
        "wandb_log": False, "log_interval": 1, "eval_iters": NANOGPT_EVAL_ITERS, "always_save_checkpoint": True,
        "batch_size": t.batch_size, "gradient_accumulation_steps": t.accumulate, "block_size": m.context,
        "n_layer": m.layers, "n_head": m.heads, "n_embd": m.d_model, "dropout": m.dropout,
        "bias": True,  # l2fast's linear layers and layer norms have biases (its output layer none, as nanoGPT's)
        "learning_rate": t.lr, "min_lr": t.min_lr, "warmup_iters": t.warmup, "decay_lr": True,
        "weight_decay": p.l2,  # decoupled: w -= lr * l2 * w in both
        "beta1": t.adam_betas[0], "beta2": t.adam_betas[1], "grad_clip": t.clip_norm,
        "device": device, "dtype": NANOGPT_DTYPES[precision], "compile": False,
    }
    lines = ["# nanoGPT settings for the model and recipe of an l2fast lm run (bench/nanogpt_side_by_side.py)"]
    lines += [f"{key} = {value!r}" for key, value in settings.items()]
    lines.append(f"torch.set_num_threads({threads})")
    return "\n".join(lines) + "\n"


def command_export(args) -> None:
    run_dir, work = Path(args.run_dir), Path(args.work_dir)
    state, train_path, valid_path = run_files(run_dir)
    _, tokenizer, cfg = load_for_inference(run_dir / checkpoint.LATEST, "cpu")
    check_expressible(cfg)
    train, valid = (read_documents(path, cfg.data.documents) for path in (train_path, valid_path))
    counts = write_dataset(tokenizer, train, valid, work / "data")
    counters = state["counters"]
    threads = cfg.train.threads or os.cpu_count() or 1  # as l2fast chose them for one process
    config = nanogpt_config(cfg, counters["precision"], threads, work / "data", work / "out")
    (work / "config.py").write_text(config, encoding="utf-8")
    summary = {"train": str(train_path), "valid": str(valid_path), **counts, "l2fast_minutes": counters["elapsed"] / 60,
               "tokens_per_iter": cfg.train.batch_size * cfg.train.accumulate * cfg.model.context,
               "warmup": cfg.train.warmup}
    (work / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"exported {counts['train_tokens']:,} training and {counts['valid_tokens']:,} validation tokens "
          f"(vocabulary {tokenizer.vocab_size}) to {work / 'data'}")


# ---- the wall clock -----------------------------------------------------------------------------------

def iteration_times(log: str) -> dict[int, float]:
    """Seconds of each iteration nanoGPT logged (log_interval = 1)."""
    return {int(i): float(ms) / 1000 for i, ms in ITERATION_LINE.findall(log)}


def iterations_for(budget_s: float, log: str, probe_seconds: float, probe_iters: int, warmup: int) -> int:
    """max_iters for a run of budget_s seconds, from a probe run of probe_iters (+1) iterations that took
    probe_seconds in all. A run of max_iters takes the probe's fixed cost (start-up, the loss estimate at
    iteration 0), one more loss estimate and a checkpoint at the end, and max_iters + 1 iterations."""
    times = iteration_times(log)
    if len(times) != probe_iters + 1:
        raise SideBySideError(f"the probe logged {len(times)} iterations, expected {probe_iters + 1}")
    step = statistics.median(times[i] for i in range(1, probe_iters + 1))
    estimate = times[0] - step  # iteration 0's time includes the loss estimate
    fixed = probe_seconds - sum(times.values())
    iters = math.floor((budget_s - fixed - estimate) / step) - 1
    if iters <= warmup:  # nanoGPT's cosine needs lr_decay_iters > warmup_iters
        raise SideBySideError(f"a budget of {budget_s:.0f}s fits {max(iters, 0)} iterations, not more than the "
                              f"{warmup} of warm-up: start-up {fixed:.1f}s, loss estimate {estimate:.1f}s, "
                              f"{step:.2f}s per iteration")
    return iters


def read_export(work: Path) -> dict:
    return json.loads((work / "export.json").read_text(encoding="utf-8"))


def budget_minutes(export: dict, minutes: str) -> float:
    """MINUTES as given: a number, or 'same' (the l2fast run's training time)."""
    return export["l2fast_minutes"] if minutes == "same" else float(minutes)


def command_plan(args) -> None:
    work = Path(args.work_dir)
    log = (work / "probe.log").read_text(encoding="utf-8")
    export = read_export(work)
    print(iterations_for(budget_minutes(export, args.minutes) * 60, log, args.probe_seconds, args.probe_iters,
                         export["warmup"]))


# ---- scoring ------------------------------------------------------------------------------------------

class FullLogits(nn.Module):
    """A nanoGPT GPT as l2fast's scoring calls a model: logits at every position, and its context.
    nanoGPT's forward returns every position's logits only when given targets (else the last one's)."""

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = gpt

    @property
    def context(self) -> int:
        return self.gpt.config.block_size

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.contiguous()  # nanoGPT views the targets flat
        logits, _ = self.gpt(ids, targets=ids)
        return logits


def load_nanogpt(nanogpt_dir: Path, path: Path, device) -> tuple[nn.Module, int, str]:
    """nanoGPT's model from its checkpoint (its own model.py builds it), the iterations it trained and the
    arithmetic it trained in (float32 on a CPU, whatever its dtype setting)."""
    sys.path.insert(0, str(nanogpt_dir))
    from model import GPT, GPTConfig  # nanoGPT's

    state = torch.load(path, map_location=device, weights_only=True)
    gpt = GPT(GPTConfig(**state["model_args"]))
    prefix = "_orig_mod."  # left by torch.compile
    gpt.load_state_dict({k.removeprefix(prefix): v for k, v in state["model"].items()})
    dtype = "float32" if device.type == "cpu" else state["config"]["dtype"]
    return gpt.to(device), state["iter_num"], dtype


def median_tokens_per_s(times: list[float], tokens_per_iter: int) -> float:
    return tokens_per_iter / statistics.median(times)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied matrix once


def table(rows: list[dict], valid: Documents, score: Score, context: int, notes: list[str]) -> str:
    lines = ["| trainer | parameters | minutes | iterations | tokens/s (median) | valid loss/token | valid bits/byte |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['trainer']} | {r['parameters']:,} | {r['minutes']:.1f} | {r['iterations']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['score'].loss:.4f} | {r['score'].bits_per_byte:.4f} |")
    lines += ["", f"Both final models scored on the whole of {valid.name}: {score.tokens:,} tokens in windows of "
              f"{context}, {score.utf8_bytes:,} bytes. Differences: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def nanogpt_name(nanogpt_dir: Path) -> str:
    done = subprocess.run(["git", "-C", str(nanogpt_dir), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"nanoGPT {done.stdout.strip()}" if done.returncode == 0 else "nanoGPT"


def l2fast_row(run_dir: Path, state: dict, model: nn.Module, score: Score) -> dict:
    counters, cfg = state["counters"], state["config"]
    if counters["step"] < cfg["train"]["max_steps"]:
        print(f"warning: the l2fast run stopped at step {counters['step']} of train.max_steps = "
              f"{cfg['train']['max_steps']} (its clock ran out): its learning rate had not decayed to train.min_lr",
              file=sys.stderr)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"trainer": f"l2fast ({counters['precision']})", "parameters": parameters(model),
            "minutes": counters["elapsed"] / 60, "iterations": counters["step"],
            "tokens_per_s": statistics.median(row["tok_per_s"] for row in metrics if "tok_per_s" in row), "score": score}


def nanogpt_row(nanogpt_dir: Path, work: Path, budget: float, seconds: float, nanogpt: tuple, score: Score) -> dict:
    gpt, iters, dtype = nanogpt
    minutes = seconds / 60
    if abs(minutes - budget) > 0.1 * budget:
        print(f"warning: nanoGPT trained {minutes:.1f} minutes against a budget of {budget:.1f}: its iterations ran at "
              "another speed than in the probe (a busy machine?); run again on a quiet one", file=sys.stderr)
    times = list(iteration_times((work / "train.log").read_text(encoding="utf-8")).values())
    return {"trainer": f"{nanogpt_name(nanogpt_dir)} ({dtype})", "parameters": parameters(gpt), "minutes": minutes,
            "iterations": iters, "tokens_per_s": median_tokens_per_s(times, read_export(work)["tokens_per_iter"]),
            "score": score}


def command_score(args) -> None:
    nanogpt_dir, run_dir, work = Path(args.nanogpt_dir), Path(args.run_dir), Path(args.work_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state, _, valid_path = run_files(run_dir)
    model, tokenizer, cfg = load_for_inference(run_dir / checkpoint.LATEST, device)
    nanogpt = load_nanogpt(nanogpt_dir, work / "out" / "ckpt.pt", device)
    gpt = nanogpt[0]
    if gpt.config.block_size != cfg.model.context:
        raise SideBySideError(f"nanoGPT's block_size {gpt.config.block_size} is not the run's context {cfg.model.context}")
    valid = read_documents(valid_path, cfg.data.documents)
    stream = token_stream(tokenizer, valid)
    scores = [score_stream(m, stream, valid.utf8_bytes, device) for m in (model, FullLogits(gpt))]
    budget = budget_minutes(read_export(work), args.minutes)
    rows = [l2fast_row(run_dir, state, model, scores[0]),
            nanogpt_row(nanogpt_dir, work, budget, args.nanogpt_seconds, nanogpt, scores[1])]
    text = table(rows, valid, scores[0], cfg.model.context, differences(cfg))
    (work / "side_by_side.md").write_text(text, encoding="utf-8")
    print(text, end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export")
    export.add_argument("run_dir")
    export.add_argument("work_dir")
    plan = commands.add_parser("plan")
    plan.add_argument("work_dir")
    plan.add_argument("probe_seconds", type=float)
    plan.add_argument("probe_iters", type=int)
    plan.add_argument("minutes", help="a number, or 'same': the l2fast run's training time")
    score = commands.add_parser("score")
    score.add_argument("nanogpt_dir")
    score.add_argument("run_dir")
    score.add_argument("work_dir")
    score.add_argument("minutes", help="the budget given to plan")
    score.add_argument("nanogpt_seconds", type=float)
    args = parser.parse_args(argv)
    try:
        {"export": command_export, "plan": command_plan, "score": command_score}[args.command](args)
    except (SideBySideError, checkpoint.CheckpointError, DataError) as e:
        print(f"nanogpt_side_by_side: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
