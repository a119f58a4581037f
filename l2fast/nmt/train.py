"""Training: data and tokenizer preparation, the update step, validation, checkpoints, final test.

The penalty goes through ``l2fast.Penalized`` over ``l2fast.param_groups`` (biases and norm weights
exempt), gradient clipping inside the optimizer step (``max_grad_norm``). A run fine-tuned from
another's checkpoint (``--init-from``) starts from its weights and tokenizer
(``l2fast.trainer.finetune``). A run directory holds everything a run makes:
tokenizer, ``latest.pt`` / ``best.pt``, ``metrics.jsonl``, ``metrics.png``, ``train.log``,
``results.json`` and the test translations.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..trainer import checkpoint
from .averaging import WeightAverage
from .config import Config, DataConfig, check_init_from, check_resumable
from .data import (TokenizedPairs, collate, drop_empty, eval_batches, filter_long, fit_positions, read_parallel,
                   train_batches)
from .demo_corpus import write_demo_corpus
from .inference import build_model
from .loss import LossModule
from .metrics import Scores, score
from .model import Transformer
from .plot import plot_metrics
from ..trainer.finetune import InitFrom
from ..trainer.loop import TrainerLoop, choose_amp_dtype, training_session
from ..trainer.recipe import learning_rate
from ..trainer.runtime import Environment, RunLog
from ..trainer.text import DataError
from .search import translate_ids
from .tokenizer import Tokenizer


@dataclass
class Split:
    """Evaluation text: raw source lines, raw references (what is scored), and their subword ids."""
    src: list[str]
    ref: list[str]
    pairs: TokenizedPairs


DEMO_HELD_OUT = {"valid": 500, "test": 1000}


def demo_paths(run_dir: Path) -> tuple[str, str, str]:
    data_dir = run_dir / "data"
    return str(data_dir / "train"), str(data_dir / "valid"), str(data_dir / "test")


def write_demo_data(d: DataConfig, run_dir: Path, log) -> tuple[str, str, str]:
    """The demo corpus in RUN_DIR/data (files already holding it are left alone); its three path prefixes."""
    sizes = {"train": d.demo_train_size, **DEMO_HELD_OUT}
    write_demo_corpus(run_dir / "data", sizes)
    log(f"demo corpus: {sizes['train']} train / {sizes['valid']} valid / {sizes['test']} test pairs in {run_dir / 'data'}")
    return demo_paths(run_dir)


def train_tokenizer(d: DataConfig, train_text) -> Tokenizer:
    return Tokenizer.train(train_text.src, train_text.tgt, d.vocab_size, d.joint_vocab, d.subword_type, d.character_coverage)


def prepare_data(cfg: Config, run_dir: Path, env: Environment, log,
                 init: InitFrom | None = None) -> tuple[Tokenizer, TokenizedPairs, Split, Split | None]:
    """The tokenizer (RUN_DIR/tokenizer: kept from an earlier session of the run, else the init-from
    checkpoint's, a copy of data.tokenizer, or trained on the training text) and the tokenized splits."""
    d = cfg.data
    if d.train:
        train_spec, valid_spec, test_spec = d.train, d.valid, d.test
        suffixes = (d.src_suffix, d.tgt_suffix)
    else:
        train_spec, valid_spec, test_spec = demo_paths(run_dir)
        suffixes = ("src", "tgt")
        if env.is_main:
            write_demo_data(d, run_dir, log)
        env.barrier()
    train_text = drop_empty(read_parallel(train_spec, *suffixes), log)
    valid_text = drop_empty(read_parallel(valid_spec, *suffixes), log)
    test_text = drop_empty(read_parallel(test_spec, *suffixes), log) if test_spec else None

    tokenizer_dir = run_dir / "tokenizer"
    if env.is_main and init is not None and not any(tokenizer_dir.glob("*.model")):
        Tokenizer.from_state_dict(init.tokenizer).save(tokenizer_dir)
        log(f"tokenizer: from {init.path}")
    elif env.is_main and d.tokenizer and not any(tokenizer_dir.glob("*.model")):
        Tokenizer.load(d.tokenizer).save(tokenizer_dir)
        log(f"tokenizer: copied from {d.tokenizer}")
    elif env.is_main and not any(tokenizer_dir.glob("*.model")):
        start = time.perf_counter()
        tokenizer = train_tokenizer(d, train_text)
        tokenizer.save(tokenizer_dir)
        log(f"tokenizer: {'joint' if tokenizer.joint else 'separate'} sentencepiece {d.subword_type}, "
            f"vocab {tokenizer.src_vocab_size}/{tokenizer.tgt_vocab_size}, trained in {time.perf_counter() - start:.1f}s")
    env.barrier()
    tokenizer = Tokenizer.load(tokenizer_dir)

    train = TokenizedPairs(tokenizer.encode_src(train_text.src), tokenizer.encode_tgt(train_text.tgt))
    train = filter_long(train, d.max_len, train_text.name, log)

    def split(text) -> Split:
        pairs = TokenizedPairs(tokenizer.encode_src(text.src), tokenizer.encode_tgt(text.tgt))
        return Split(text.src, text.tgt, fit_positions(pairs, cfg.model.max_positions - 1, text, log))

    return tokenizer, train, split(valid_text), (split(test_text) if test_text else None)


def probe_loss(cfg: Config, env: Environment, tokenizer: Tokenizer, pairs: TokenizedPairs):
    """A throwaway model and the loss of the first training batch, for the CPU precision probe."""
    loss_module = LossModule(build_model(cfg, tokenizer).to(env.device), cfg.train.label_smoothing)
    batch = collate(pairs, train_batches(pairs, cfg.train.max_tokens, cfg.train.seed, 0, 0, 1)[0]).to(env.device)
    return loss_module, lambda: loss_module(batch.src, batch.tgt_in, batch.tgt_out)[0]


class Trainer(TrainerLoop):
    WINDOW_KEYS = ("loss_sum", "nll_sum", "src_tokens", "count")

    def __init__(self, cfg: Config, env: Environment, run_dir: Path, log: RunLog, tokenizer: Tokenizer,
                 train: TokenizedPairs, valid: Split, test: Split | None, amp_dtype: torch.dtype | None,
                 init: InitFrom | None = None):
        self.cfg, self.env, self.run_dir, self.log = cfg, env, run_dir, log
        self.tokenizer, self.train_pairs, self.valid, self.test = tokenizer, train, valid, test
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg, tokenizer).to(env.device)
        self.setup_optimizer(init)  # before the weight average, which starts from the weights loaded there
        self.setup_update(LossModule(self.model, cfg.train.label_smoothing), amp_dtype)
        self.average = WeightAverage(self.model, cfg.train.average_decay) if cfg.train.average_decay else None
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_bleu, self.bad_validations = -1.0, 0
        self.elapsed = 0.0  # training wall time over all sessions of this run

    # ---- checkpoints -------------------------------------------------------------------------

    def extra_state(self) -> dict:
        return {"average": self.average.state_dict() if self.average else None}

    def extra_counters(self) -> dict:
        return {"best_bleu": self.best_bleu, "bad_validations": self.bad_validations}

    def load_extra(self, state: dict) -> None:
        if self.average:
            self.average.load_state_dict(state["average"])
        self.best_bleu, self.bad_validations = state["counters"]["best_bleu"], state["counters"]["bad_validations"]

    # ---- training ----------------------------------------------------------------------------

    def count(self, batch) -> int:
        return batch.tgt_tokens

    def loss(self, batch) -> tuple[torch.Tensor, dict]:
        batch = batch.to(self.env.device)
        loss, nll = self.loss_module(batch.src, batch.tgt_in, batch.tgt_out)
        return loss, {"nll_sum": nll.detach(), "src_tokens": batch.src_tokens}

    def fisher_batches(self) -> list:
        """The first penalty.fisher_batches batches of penalty.fisher_data's pairs in the order training
        would draw them at epoch 0, read with the run's tokenizer (the init-from checkpoint's)."""
        d, p, t = self.cfg.data, self.cfg.penalty, self.cfg.train
        text = drop_empty(read_parallel(p.fisher_data, d.src_suffix, d.tgt_suffix), self.log)
        pairs = filter_long(TokenizedPairs(self.tokenizer.encode_src(text.src), self.tokenizer.encode_tgt(text.tgt)),
                            d.max_len, text.name, self.log)
        batches = train_batches(pairs, t.max_tokens, t.seed, 0)[:p.fisher_batches]
        if len(batches) < p.fisher_batches:
            raise DataError(f"{text.name}: its pairs make {len(batches)} batches of train.max_tokens = {t.max_tokens}, "
                            f"fewer than penalty.fisher_batches = {p.fisher_batches}")
        return [collate(pairs, indices) for indices in batches]

    def fisher_loss(self, model: Transformer, batch) -> torch.Tensor:
        """The NLL per target token, without label smoothing: the Fisher of the model's own likelihood."""
        batch = batch.to(self.env.device)
        _, nll = LossModule(model, smoothing=0.0)(batch.src, batch.tgt_in, batch.tgt_out)
        return nll / batch.tgt_tokens

    def update(self, batches) -> dict:
        """The shared update, then the moving average of the weights."""
        result = TrainerLoop.update(self, batches)
        if self.average:
            self.average.update(self.model)
        return result

    def should_stop(self) -> str | None:
        reason = TrainerLoop.should_stop(self)
        patience = self.cfg.train.patience
        if reason is None and patience and self.bad_validations >= patience:
            return f"early stopping: {patience} validations without a better BLEU"
        return reason

    def epoch_batches(self) -> list[list[int]]:
        t = self.cfg.train
        return train_batches(self.train_pairs, t.max_tokens, t.seed, self.epoch, self.env.rank, self.env.world_size)

    def collate(self, indices: list[int]):
        return collate(self.train_pairs, indices)

    def log_training(self, window: dict, last: dict) -> None:
        # Sums over all processes: loss and NLL per target token (the count), throughput of the whole job.
        loss_sum, nll_sum, src_tokens, tgt_tokens = self.window_sums(window, self.WINDOW_KEYS)
        seconds = max(window["time"], 1e-9)
        row = {
            "step": self.step, "epoch": self.epoch,
            "loss": loss_sum / max(tgt_tokens, 1.0),
            "nll": nll_sum / max(tgt_tokens, 1.0),
            "lr": learning_rate(self.cfg, self.step - 1),
            "penalty": float(last["penalty"]),
            "grad_norm": float(last["grad_norm"]),
            "tgt_tok_per_s": tgt_tokens / seconds,
            "tok_per_s": (src_tokens + tgt_tokens) / seconds,
            "elapsed_s": self.elapsed,
        }
        row["ppl"] = math.exp(min(row["nll"], 50.0))
        self.log.metrics(row)
        self.log(f"step {row['step']:6d}  epoch {row['epoch']:3d}  loss {row['loss']:.3f}  ppl {row['ppl']:8.2f}  "
                 f"lr {row['lr']:.2e}  penalty {row['penalty']:.4g}  |g| {row['grad_norm']:.3f}  "
                 f"{row['tgt_tok_per_s']:,.0f} tgt tok/s  {row['tok_per_s']:,.0f} tok/s")

    # ---- validation and test -----------------------------------------------------------------

    @property
    def eval_model(self) -> Transformer:
        """The weights validation and test use: the moving average when the run keeps one."""
        return self.average.model if self.average else self.model

    def translate_split(self, split: Split, beam: int, limit: int = 0) -> list[str]:
        """Detokenized translations of a split, decoded in shards over all processes, gathered on every process."""
        d = self.cfg.decode
        count = min(limit, len(split.src)) if limit else len(split.src)
        mine = list(range(self.env.rank, count, self.env.world_size))
        ids = translate_ids(self.eval_model, [split.pairs.src[i] for i in mine], beam, d.length_penalty, d.max_len_a,
                            d.max_len_b, d.decode_tokens, self.env.device, self.autocast)
        texts = self.tokenizer.decode_tgt(ids)
        if not self.env.distributed:
            return texts
        gathered = [None] * self.env.world_size
        dist.all_gather_object(gathered, texts)
        out = [""] * count
        for rank, part in enumerate(gathered):
            out[rank:count:self.env.world_size] = part
        return out

    @torch.no_grad()
    def valid_loss(self, limit: int) -> float:
        """Per-token NLL of the validation set under teacher forcing, in token-count batches (all
        processes take a share)."""
        model = self.eval_model
        model.eval()
        scorer = LossModule(model, smoothing=0.0)
        pairs = self.valid.pairs
        count = min(limit, len(pairs.src)) if limit else len(pairs.src)
        indices = list(range(self.env.rank, count, self.env.world_size))
        nll_sum, tokens = torch.zeros((), dtype=torch.float64, device=self.env.device), 0
        for batch_indices in eval_batches(pairs, indices, self.cfg.train.max_tokens):
            batch = collate(pairs, batch_indices).to(self.env.device)
            with self.autocast():
                _, nll = scorer(batch.src, batch.tgt_in, batch.tgt_out)
            nll_sum += nll
            tokens += batch.tgt_tokens
        totals = torch.stack([nll_sum, torch.tensor(float(tokens), dtype=torch.float64, device=self.env.device)])
        if self.env.distributed:
            dist.all_reduce(totals)
        self.model.train()
        return float(totals[0] / totals[1])

    def validate_and_save(self) -> Scores:
        t = self.cfg.train
        start = time.perf_counter()
        nll = self.valid_loss(t.valid_max_sentences)
        hyps = self.translate_split(self.valid, t.valid_beam, t.valid_max_sentences)
        scores = score(hyps, self.valid.ref[:len(hyps)])
        improved = scores.bleu > self.best_bleu
        if improved:
            self.best_bleu, self.bad_validations = scores.bleu, 0
        else:
            self.bad_validations += 1
        self.elapsed += time.perf_counter() - start
        self.log.metrics({"step": self.step, "valid_nll": nll, "valid_ppl": math.exp(min(nll, 50.0)),
                          "bleu": scores.bleu, "chrf": scores.chrf, "elapsed_s": self.elapsed})
        self.log(f"valid step {self.step}: {scores.line()}  ppl {math.exp(min(nll, 50.0)):.2f}"
                 f"{'  (best)' if improved else ''}  [{time.perf_counter() - start:.1f}s]")
        self.save(best=improved)
        if self.env.is_main:
            plot_metrics(self.log.metrics_path, self.run_dir / "metrics.png")
        return scores

    def evaluate_test(self) -> dict | None:
        """Test BLEU/chrF of the best checkpoint with the configured beam; written to results.json."""
        if self.test is None:
            return None
        self.env.barrier()  # the main process may still be writing best.pt
        best_path = self.run_dir / checkpoint.BEST
        if best_path.exists():
            self.eval_model.load_state_dict(checkpoint.inference_weights(checkpoint.load(best_path, self.env.device)))
        start = time.perf_counter()
        hyps = self.translate_split(self.test, self.cfg.decode.beam)
        scores = score(hyps, self.test.ref)
        results = {"test_bleu": scores.bleu, "test_chrf": scores.chrf, "bleu_signature": scores.bleu_signature,
                   "chrf_signature": scores.chrf_signature, "beam": self.cfg.decode.beam, "step": self.step,
                   "best_valid_bleu": self.best_bleu, "train_seconds": self.elapsed,
                   "test_decode_seconds": time.perf_counter() - start, "test_sentences": len(hyps)}
        if self.env.is_main:
            (self.run_dir / "test.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            self.log(f"test ({len(hyps)} sentences, beam {self.cfg.decode.beam}): {scores.line()}")
            self.log(scores.signatures())
        return results


def run_training(cfg: Config) -> dict | None:
    """Trains (or resumes) the run described by cfg and scores the test set; returns the results (on the
    main process, and None without a test set; None on the others).
    Everything that can be checked without data is checked before any data is read."""
    with training_session(cfg, check_resumable, check_init_from) as session:
        env, run_dir, saved, log, init = session.env, session.run.path, session.run.saved, session.log, session.init
        started = time.perf_counter()
        tokenizer, train, valid, test = prepare_data(cfg, run_dir, env, log, init)
        amp_dtype = choose_amp_dtype(cfg, env, log, saved["counters"].get("precision") if saved else None,
                                     lambda: probe_loss(cfg, env, tokenizer, train))
        trainer = Trainer(cfg, env, run_dir, log, tokenizer, train, valid, test, amp_dtype, init)
        session.begin(trainer)
        log(f"data: {len(train.src)} training pairs, {len(valid.src)} valid, {len(test.src) if test else 0} test")
        trainer.train()
        results = trainer.evaluate_test()
        if not env.is_main:
            return None  # the main process reports
        plot_metrics(log.metrics_path, run_dir / "metrics.png")
        log(f"total wall time {time.perf_counter() - started:.0f}s; run directory {run_dir}")
    return results
