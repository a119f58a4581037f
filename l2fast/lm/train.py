"""Language-model training: data and tokenizer, the update step, validation, checkpoints, final test.

The penalty goes through ``l2fast.Penalized`` over ``l2fast.param_groups`` (the shared recipe of
``l2fast.trainer.recipe``), gradient clipping inside the optimizer step (``max_grad_norm``). A run
fine-tuned from another's checkpoint (``--init-from``) starts from its weights and tokenizer
(``l2fast.trainer.finetune``). A run directory holds everything a run makes: ``tokenizer.model``
(sentencepiece), ``latest.pt`` / ``best.pt``, ``metrics.jsonl``, ``metrics.png``, ``train.log``,
``config.json`` and ``results.json``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..trainer import checkpoint
from ..trainer.finetune import InitFrom
from ..trainer.loop import TrainerLoop, choose_amp_dtype, training_session
from ..trainer.plot import plot_panels
from ..trainer.recipe import learning_rate
from ..trainer.runtime import Environment, RunLog
from ..trainer.text import DataError
from .config import Config, check_init_from, check_resumable
from .data import (Documents, block_count, check_trainable, collate_blocks, eval_windows, read_documents, token_stream,
                   train_batches)
from .demo_text import write_demo_text
from .evaluate import Score, stream_nll
from .generate import Sampling, generate
from .model import DecoderLM
from .tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer, from_state_dict

PANELS = [
    ("loss per token (nats)", [("loss", "train", "-"), ("valid_loss", "valid", "o-")]),
    ("validation bits per byte", [("valid_bpb", None, "o-")]),
    ("penalty value", [("penalty", None, "-")]),
]
DEMO_SIZES = {"valid": 300, "test": 300}
SAMPLE_PROMPTS = ["", "This is a story about"]


@dataclass
class Split:
    docs: Documents
    stream: torch.Tensor


class LossModule(nn.Module):
    """Model + summed next-token NLL in one forward, so DistributedDataParallel sees every parameter used."""

    def __init__(self, model: DecoderLM):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")


def data_paths(cfg: Config, run_dir: Path, env: Environment, log) -> tuple[str, str, str]:
    """The train, valid and test files: the configured ones, or the demo text written into RUN_DIR/data."""
    d = cfg.data
    if d.train:
        return d.train, d.valid, d.test
    sizes = {"train": d.demo_documents, **DEMO_SIZES}
    paths = {split: run_dir / "data" / f"{split}.txt" for split in sizes}
    if env.is_main and not all(p.exists() for p in paths.values()):
        write_demo_text(run_dir / "data", sizes)
        log(f"demo text: {sizes['train']} train / {sizes['valid']} valid / {sizes['test']} test stories in {run_dir / 'data'}")
    env.barrier()
    return str(paths["train"]), str(paths["valid"]), str(paths["test"])


def prepare_tokenizer(cfg: Config, run_dir: Path, train: Documents, env: Environment, log, saved: dict | None,
                      init: InitFrom | None) -> Tokenizer:
    """Bytes; or the run's sentencepiece model: from the checkpoint when resuming, else that of the
    checkpoint a fine-tuning run starts from or one trained (on the main process), saved as
    RUN_DIR/tokenizer.model."""
    if cfg.data.tokenizer == "bytes":
        return ByteTokenizer()
    if saved is not None:
        return from_state_dict(saved["tokenizer"])
    path = run_dir / "tokenizer.model"
    if env.is_main and init is not None:
        tokenizer = from_state_dict(init.tokenizer)
        path.write_bytes(tokenizer.model)
        log(f"tokenizer: sentencepiece, vocab {tokenizer.vocab_size}, from {init.path}")
    elif env.is_main:
        start = time.perf_counter()
        tokenizer = SentencePieceTokenizer.train(train.texts, cfg.data.vocab_size, cfg.data.subword_type)
        path.write_bytes(tokenizer.model)
        log(f"tokenizer: sentencepiece {cfg.data.subword_type}, vocab {tokenizer.vocab_size}, "
            f"trained in {time.perf_counter() - start:.1f}s")
    env.barrier()
    return SentencePieceTokenizer(path.read_bytes())


class Trainer(TrainerLoop):
    WINDOW_KEYS = ("loss_sum", "count")

    def __init__(self, cfg: Config, env: Environment, run_dir: Path, log: RunLog, tokenizer: Tokenizer,
                 train: torch.Tensor, valid: Split, amp_dtype: torch.dtype | None, init: InitFrom | None = None):
        self.cfg, self.env, self.run_dir, self.log = cfg, env, run_dir, log
        self.tokenizer, self.train_stream, self.valid = tokenizer, train, valid
        torch.manual_seed(cfg.train.seed)
        self.model = DecoderLM(cfg.model, tokenizer.vocab_size).to(env.device)
        self.setup_optimizer(init)
        self.setup_update(LossModule(self.model), amp_dtype)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_loss = math.inf
        self.elapsed = 0.0  # training wall time over all sessions of this run
        self.valid_windows = self._valid_windows()

    def _valid_windows(self) -> list[tuple[int, int]]:
        """The validation windows scored during training (at most train.valid_max_tokens tokens in all)."""
        windows = eval_windows(self.valid.stream, self.cfg.model.context)
        limit = self.cfg.train.valid_max_tokens
        if limit:
            windows = windows[:max(1, limit // self.cfg.model.context)]
        return windows

    # ---- checkpoints and training (the loop is l2fast.trainer.loop's) ------------------------

    def extra_counters(self) -> dict:
        return {"best_loss": self.best_loss}

    def load_extra(self, state: dict) -> None:
        self.best_loss = state["counters"]["best_loss"]

    def epoch_batches(self) -> list[list[int]]:
        t = self.cfg.train
        return train_batches(block_count(self.train_stream, self.cfg.model.context), t.batch_size, t.seed, self.epoch,
                             self.env.rank, self.env.world_size)

    def collate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate_blocks(self.train_stream, indices, self.cfg.model.context)

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[1].numel()  # every position predicts a token

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        inputs, targets = (t.to(self.env.device) for t in batch)
        return self.loss_module(inputs, targets), {}

    def fisher_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first penalty.fisher_batches batches of penalty.fisher_data's blocks in the order training
        would draw them at epoch 0, read with the run's tokenizer (the init-from checkpoint's)."""
        p, t, context = self.cfg.penalty, self.cfg.train, self.cfg.model.context
        docs = read_documents(p.fisher_data, self.cfg.data.documents)
        stream = token_stream(self.tokenizer, docs)
        check_trainable(stream, context, t.batch_size, 1, docs.name)
        batches = train_batches(block_count(stream, context), t.batch_size, t.seed, 0)[:p.fisher_batches]
        if len(batches) < p.fisher_batches:
            raise DataError(f"{docs.name}: {block_count(stream, context)} blocks of model.context = {context} make "
                            f"{len(batches)} batches of train.batch_size = {t.batch_size}, fewer than "
                            f"penalty.fisher_batches = {p.fisher_batches}")
        return [collate_blocks(stream, indices, context) for indices in batches]

    def fisher_loss(self, model: DecoderLM, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = (t.to(self.env.device) for t in batch)
        return LossModule(model)(inputs, targets) / targets.numel()

    def log_training(self, window: dict, last: dict) -> None:
        loss_sum, tokens = self.window_sums(window, self.WINDOW_KEYS)
        row = {"step": self.step, "epoch": self.epoch, "loss": loss_sum / max(tokens, 1.0),
               "lr": learning_rate(self.cfg, self.step - 1), "penalty": float(last["penalty"]),
               "grad_norm": float(last["grad_norm"]), "tok_per_s": tokens / max(window["time"], 1e-9),
               "elapsed_s": self.elapsed}
        row["ppl"] = math.exp(min(row["loss"], 50.0))
        self.log.metrics(row)
        self.log(f"step {row['step']:6d}  epoch {row['epoch']:3d}  loss {row['loss']:.4f}  ppl {row['ppl']:8.3f}  "
                 f"lr {row['lr']:.2e}  penalty {row['penalty']:.4g}  |g| {row['grad_norm']:.3f}  "
                 f"{row['tok_per_s']:,.0f} tok/s")

    # ---- validation and test -----------------------------------------------------------------

    def sharded_nll(self, stream: torch.Tensor, windows: list[tuple[int, int]]) -> tuple[float, int]:
        """Summed NLL and token count over the windows, each process scoring its share of them."""
        nats, tokens = stream_nll(self.model, stream, self.env.device, autocast=self.autocast,
                                  windows=windows[self.env.rank::self.env.world_size])
        totals = torch.stack([nats, torch.tensor(float(tokens), dtype=torch.float64, device=self.env.device)])
        if self.env.distributed:
            dist.all_reduce(totals)
        return float(totals[0]), int(totals[1])

    def valid_score(self) -> Score:
        """Loss, perplexity and bits per byte on (the first train.valid_max_tokens tokens of) the validation text."""
        nats, tokens = self.sharded_nll(self.valid.stream, self.valid_windows)
        full = self.valid.stream.numel() - 1
        # The bytes of the scored part: in proportion, when only part of the text is scored.
        utf8_bytes = self.valid.docs.utf8_bytes if tokens == full else max(1, round(self.valid.docs.utf8_bytes * tokens / full))
        return Score(nats, tokens, utf8_bytes)

    def validate_and_save(self) -> Score:
        start = time.perf_counter()
        score = self.valid_score()
        improved = score.loss < self.best_loss
        if improved:
            self.best_loss = score.loss
        self.elapsed += time.perf_counter() - start
        self.log.metrics({"step": self.step, **score.as_dict("valid"), "elapsed_s": self.elapsed})
        self.log(f"valid step {self.step}: {score.line()}{'  (best)' if improved else ''}  "
                 f"[{time.perf_counter() - start:.1f}s]")
        self.save(best=improved)
        if self.env.is_main:
            plot_panels(self.log.metrics_path, self.run_dir / "metrics.png", PANELS)
        return score

    def finish(self, test: Split | None) -> dict:
        """Scores the whole validation text, and the test text if there is one, with the best checkpoint,
        logs samples, and writes results.json."""
        self.env.barrier()  # the main process may still be writing best.pt
        best_path = self.run_dir / checkpoint.BEST
        if best_path.exists():
            self.model.load_state_dict(checkpoint.load(best_path, self.env.device)["model"])
        start = time.perf_counter()
        splits = {"valid": self.valid, **({"test": test} if test is not None else {})}
        scores = {name: Score(*self.sharded_nll(split.stream, eval_windows(split.stream, self.cfg.model.context)),
                              split.docs.utf8_bytes)
                  for name, split in splits.items()}
        results = {"scored": splits["test" if test is not None else "valid"].docs.name}
        for name, score in scores.items():
            results.update(score.as_dict(name))
        results.update(step=self.step, best_valid_loss=self.best_loss, train_seconds=self.elapsed,
                       score_seconds=time.perf_counter() - start)
        if self.env.is_main:
            for name, score in scores.items():
                self.log(f"{name} ({splits[name].docs.name}, {score.tokens:,} tokens, {score.utf8_bytes:,} bytes): "
                         f"{score.line()}")
            samples = generate(self.model, self.tokenizer.encode(SAMPLE_PROMPTS), 200, self.tokenizer.eod,
                               Sampling(temperature=0.8, top_k=40), self.cfg.train.seed, self.env.device)
            for prompt, text in zip(SAMPLE_PROMPTS, self.tokenizer.decode(samples)):
                self.log(f"sample (temperature 0.8, top-k 40): {prompt + text!r}")
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return results


def probe_loss(cfg: Config, env: Environment, vocab_size: int, stream: torch.Tensor):
    """A throwaway model and the loss of its first training batch, for the CPU precision probe."""
    loss_module = LossModule(DecoderLM(cfg.model, vocab_size).to(env.device))
    indices = list(range(min(cfg.train.batch_size, block_count(stream, cfg.model.context))))
    inputs, targets = (t.to(env.device) for t in collate_blocks(stream, indices, cfg.model.context))
    return loss_module, lambda: loss_module(inputs, targets)


def run_training(cfg: Config) -> dict | None:
    """Trains (or resumes) the run described by cfg and scores the test text; returns the results (on
    the main process; None on the others).
    Everything that can be checked without data is checked before any data is read."""
    with training_session(cfg, check_resumable, check_init_from) as session:
        env, run_dir, saved, log, init = session.env, session.run.path, session.run.saved, session.log, session.init
        started = time.perf_counter()
        train_path, valid_path, test_path = data_paths(cfg, run_dir, env, log)
        train_docs = read_documents(train_path, cfg.data.documents)
        valid_docs = read_documents(valid_path, cfg.data.documents)
        test_docs = read_documents(test_path, cfg.data.documents) if test_path else None
        tokenizer = prepare_tokenizer(cfg, run_dir, train_docs, env, log, saved, init)
        train = token_stream(tokenizer, train_docs)
        check_trainable(train, cfg.model.context, cfg.train.batch_size, env.world_size, train_docs.name)
        valid = Split(valid_docs, token_stream(tokenizer, valid_docs))
        test = Split(test_docs, token_stream(tokenizer, test_docs)) if test_docs else None
        log(f"data: {len(train_docs.texts):,} training documents, {train.numel():,} tokens "
            f"({train_docs.utf8_bytes / max(train.numel(), 1):.2f} bytes per token), "
            f"{block_count(train, cfg.model.context):,} blocks of {cfg.model.context}; valid {valid.stream.numel():,} tokens"
            + (f"; test {test.stream.numel():,} tokens" if test else ""))
        amp_dtype = choose_amp_dtype(cfg, env, log, saved["counters"].get("precision") if saved else None,
                                     lambda: probe_loss(cfg, env, tokenizer.vocab_size, train))
        trainer = Trainer(cfg, env, run_dir, log, tokenizer, train, valid, amp_dtype, init)
        session.begin(trainer)
        trainer.train()
        results = trainer.finish(test)
        if not env.is_main:
            return None  # the main process reports
        plot_panels(log.metrics_path, run_dir / "metrics.png", PANELS)
        log(f"total wall time {time.perf_counter() - started:.0f}s; run directory {run_dir}")
    return results
