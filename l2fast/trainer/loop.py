"""The training loop both trainers run, and what surrounds it: the checkpointed state, the update
over micro-batches (accumulation, DDP, autocast, gradient scaling, normalisation by the count over
all processes), the optimizer step (learning rate, unscaling, fused clipping, the penalised update), the stop conditions, the CPU
precision probe, and the session a train command runs in (``training_session``: the start of a run,
and what a failure or Ctrl-C leaves behind).

A trainer subclasses ``TrainerLoop``, sets in its constructor the attributes named in the class
docstring (``setup_optimizer`` and ``setup_update`` set those of the update), and supplies
``epoch_batches()``, ``collate(indices)``, its objective (``count(batch)`` and ``loss(batch)``, see
``update``), the Fisher's data and loss for EWC (``fisher_batches()`` and ``fisher_loss(model,
batch)``, see ``setup_optimizer``), ``log_training(window, last)`` and ``validate_and_save()``, and,
where it keeps more than the shared state, ``extra_state()`` / ``extra_counters()`` / ``load_extra(state)``.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

import l2fast

from . import checkpoint
from .precision import DTYPES, autocast_dtype, autocast_factory, check_precision, faster_cpu_dtype
from .recipe import ANCHOR_DTYPES, build_optimizer, check_recipe, learning_rate
from .config import ConfigError
from .finetune import InitFrom, estimate_fisher, load_weights, read_init_from
from .rundir import RunDir, discard_fresh_start, open_run_dir, resumes
from .runtime import Environment, RunLog, setup_environment


class TrainerLoop:
    """Shared attributes: cfg, env, run_dir, log, tokenizer, model, step, epoch, batch_in_epoch, elapsed
    (training wall time over all sessions of the run), from ``setup_optimizer``: optimizer
    (l2fast.Penalized) and init_from (where a fine-tuning run started, None for others), from
    ``setup_update``: loss_module, amp_dtype, autocast, scaler; ``Session.begin`` adds checkpoint_step
    (the step latest.pt holds, None before the first).
    ``WINDOW_KEYS``: the entries of each update's result summed between two log lines."""

    WINDOW_KEYS: tuple[str, ...] = ()

    # ---- checkpoints -------------------------------------------------------------------------

    def extra_state(self) -> dict:
        return {}

    def extra_counters(self) -> dict:
        return {}

    def load_extra(self, state: dict) -> None:
        pass

    def rng_states(self) -> list[dict]:
        """Every process's random state, by rank (each draws its own dropout masks): gathered from all
        of them, so every process must call it."""
        mine = {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if self.env.device.type == "cuda" else None}
        if not self.env.distributed:
            return [mine]
        states = [None] * self.env.world_size
        dist.all_gather_object(states, mine)
        return states

    def state_dict(self, rng: list[dict] | None = None) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "tokenizer": self.tokenizer.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "init_from": self.init_from,
            **self.extra_state(),
            "counters": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "elapsed": self.elapsed, **self.extra_counters(),
                         "precision": next(k for k, v in DTYPES.items() if v == self.amp_dtype)},
            "rng": self.rng_states() if rng is None else rng,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        configured = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        # torch brings back each group's saved settings (l2, l1, betas, eps); the run's configuration,
        # which config.json records and a resumed run may change, says which apply from here on.
        for group, settings in zip(self.optimizer.param_groups, configured):
            group.update(settings)
        self.scaler.load_state_dict(state["scaler"])
        self.init_from = state.get("init_from")  # absent from checkpoints older than fine-tuning
        c = state["counters"]
        self.step, self.epoch, self.batch_in_epoch, self.elapsed = c["step"], c["epoch"], c["batch_in_epoch"], c["elapsed"]
        self.load_extra(state)
        saved = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # one state before 0.2
        # A run resumed with more processes than it saved gives the new ones rank 0's state.
        mine = saved[self.env.rank] if self.env.rank < len(saved) else saved[0]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and self.env.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"])

    def save(self, best: bool) -> None:
        rng = self.rng_states()  # every process takes part; rank 0 writes
        if self.env.is_main:
            state = self.state_dict(rng)
            checkpoint.atomic_save(state, self.run_dir / checkpoint.LATEST)
            if best:
                checkpoint.atomic_save(state, self.run_dir / checkpoint.BEST)
        self.checkpoint_step = self.step  # the step latest.pt holds (Session.where_it_stands)

    # ---- training ----------------------------------------------------------------------------

    def setup_optimizer(self, init: InitFrom | None) -> None:
        """The optimizer, built once the model holds the weights the run starts from, since its L2-SP
        anchors are a copy of them: a fresh fine-tuning run loads init's weights here and, for EWC,
        estimates the Fisher on them over ``fisher_batches()`` (the trainer's batches of
        penalty.fisher_data) with ``fisher_loss(model, batch)`` (the mean loss of a batch). A resumed
        run's anchors and Fisher come from latest.pt (``Session.begin``), so here they only have the
        shapes and dtype to load into."""
        p = self.cfg.penalty
        self.init_from = None if init is None else init.record()
        if init is not None:
            load_weights(self.model, init)
            self.log(f"fine-tuning from {init.path} (step {init.step}): its weights and tokenizer; optimizer, step "
                     "count and schedules start afresh")
        fisher = None
        if p.fisher_batches:
            dtype = ANCHOR_DTYPES[p.anchor_dtype]
            if init is None:
                fisher = {param: torch.zeros_like(param, dtype=dtype) for param in self.model.parameters()}
            else:
                estimate = estimate_fisher(self.model, self.fisher_batches(), self.fisher_loss, self.env, dtype)
                fisher = estimate.weights
                self.log(f"EWC: Fisher of {p.fisher_batches} batches of {p.fisher_data} (per batch), mean "
                         f"{estimate.mean:.3g} scaled to 1 (largest {estimate.peak:.3g}), kept in {p.anchor_dtype}")
        self.optimizer = build_optimizer(self.model, self.cfg, fisher)
        if p.l2_sp:
            self.log(f"L2-SP: the weights --l2 does not exempt are pulled toward those of {self.cfg.train.init_from}, "
                     f"strength {p.l2_sp} ({'decoupled' if p.decoupled else 'coupled'})"
                     f"{', weighted by the Fisher (EWC)' if p.fisher_batches else ''}; anchors in {p.anchor_dtype}")

    def setup_update(self, loss_module: nn.Module, amp_dtype: torch.dtype | None) -> None:
        """The module ``loss(batch)`` runs (wrapped in DistributedDataParallel under several processes: it
        must hold every trained parameter), the autocast dtype (None = float32) and the gradient scaler
        (on for float16 only)."""
        self.loss_module = nn.parallel.DistributedDataParallel(loss_module) if self.env.distributed else loss_module
        self.amp_dtype = amp_dtype
        self.autocast = autocast_factory(amp_dtype, self.env.device)
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=amp_dtype == torch.float16)

    def update(self, batches: list) -> dict:
        """One optimizer step over the gradient sum of several micro-batches, normalised by their count
        summed over all micro-batches and processes, so that accumulation and DDP equal one big batch
        whatever each process holds; DDP all-reduces the gradients after the last backward only.

        The trainer's objective is two methods: ``count(batch)``, what the batch's summed loss is divided
        by (its predicted tokens, say), and ``loss(batch) -> (loss_sum, logs)``, the summed loss computed
        through ``self.loss_module`` (moving the batch to the device) and detached values to log, summed
        over the micro-batches. The count is asked before the forward, unlike fairseq's train_step, which
        divides the summed gradients afterwards: here each backward makes its normalised share, so no
        pass over the gradients is added. Returns loss_sum, count (this process's), the sums of the
        logs, grad_norm and penalty."""
        self.loss_module.train()
        local_count = sum(self.count(batch) for batch in batches)
        count = torch.tensor(float(local_count), device=self.env.device)
        if self.env.distributed:
            dist.all_reduce(count)
        scale = self.env.world_size / count  # DDP averages gradients over processes
        loss_sum = torch.zeros((), device=self.env.device)
        logs: dict = {}
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not self.env.distributed else self.loss_module.no_sync()
            with sync:
                with self.autocast():
                    loss, batch_logs = self.loss(batch)
                self.scaler.scale(loss * scale).backward()
            loss_sum += loss.detach()
            for key, value in batch_logs.items():
                logs[key] = logs.get(key, 0) + value
        grad_norm, penalty = self.step_optimizer()
        self.step += 1
        return {"loss_sum": loss_sum, "count": local_count, **logs, "grad_norm": grad_norm, "penalty": penalty}

    def step_optimizer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The update after the backward passes: learning rate, then the penalised step (unscaling and
        clipping inside it on the one-pass path, before it otherwise).
        Returns the gradient norm and the penalty value (NaN where the scaler skipped the update)."""
        lr = learning_rate(self.cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.optimizer.max_grad_norm is None:  # else the optimizer measures (and clips) the unscaled norm
            self.scaler.unscale_(self.optimizer)
            grad_norm = l2fast.sq_norm([p.grad for p in self.model.parameters() if p.grad is not None]).sqrt()
        before = self.optimizer.last_penalty
        try:
            self.scaler.step(self.optimizer)  # skips the update (fp16 gradients with inf/NaN): no new penalty value
        except (ValueError, OverflowError):
            self.check_schedule()
            raise
        if self.optimizer.max_grad_norm is not None:
            grad_norm = self.optimizer.last_grad_norm
        penalty = self.optimizer.last_penalty
        if penalty is before:
            penalty = torch.tensor(float("nan"), device=self.env.device)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, penalty

    def check_schedule(self) -> None:
        """A ConfigError where the penalty schedule fails at this step, e.g. a Step with gamma > 1 counted in
        epochs (recipe.check_schedule_over_run checks the steps of the run up front, not its epochs)."""
        try:
            self.optimizer.coefficients()
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"penalty.penalty_schedule fails at step {self.step} (epoch {self.epoch}): {e}; a resumed "
                              "run keeps its schedule, so start afresh (--overwrite) with one that stays in range") from None

    def should_stop(self) -> str | None:
        t = self.cfg.train
        if t.max_steps and self.step >= t.max_steps:
            return f"reached max_steps = {t.max_steps}"
        if getattr(t, "max_epochs", 0) and self.epoch >= t.max_epochs:
            return f"reached max_epochs = {t.max_epochs}"
        # The clocks of several processes disagree: the first process over the limit stops them all.
        if t.max_minutes and self.env.any(self.elapsed >= t.max_minutes * 60):
            return f"reached max_minutes = {t.max_minutes}"
        return None

    def train(self) -> None:
        from tqdm import tqdm

        t = self.cfg.train
        self.log(f"model: {sum(p.numel() for p in self.model.parameters()):,} parameters; "
                 f"precision {self.amp_dtype or torch.float32}; {self.env.world_size} process(es) on {self.env.device}, "
                 f"{torch.get_num_threads()} threads each")
        clipped = self.optimizer.max_grad_norm
        self.log(f"optimizer step: {'one pass (penalty, clipping and update fused)' if self.optimizer.fused else 'two passes'}"
                 f"{'' if clipped is None else f', gradient norm clipped to {clipped}'}")
        # A context, so that Ctrl-C or an error closes the bar before the command prints its one line.
        with tqdm(total=t.max_steps or None, initial=self.step, desc="train", unit="step",
                  disable=None if self.env.is_main else True, dynamic_ncols=True) as bar:
            window = dict.fromkeys((*self.WINDOW_KEYS, "time"), 0.0)
            reason = self.should_stop()
            while reason is None:
                batches = self.epoch_batches()
                while self.batch_in_epoch < len(batches) and reason is None:
                    start = time.perf_counter()
                    group = batches[self.batch_in_epoch:self.batch_in_epoch + t.accumulate]
                    last = self.update([self.collate(indices) for indices in group])
                    self.batch_in_epoch += len(group)
                    for key in self.WINDOW_KEYS:
                        window[key] += last[key]  # tensors stay on the device until the log step
                    log_now = self.step % t.log_every == 0
                    if log_now and self.env.device.type == "cuda":
                        torch.cuda.synchronize()  # so the time below covers the queued work
                    spent = time.perf_counter() - start
                    window["time"] += spent
                    self.elapsed += spent
                    if log_now:
                        self.log_training(window, last)
                        window = dict.fromkeys(window, 0.0)
                    bar.update(1)
                    if self.step % t.valid_every == 0:
                        self.validate_and_save()
                    reason = self.should_stop()
                if self.batch_in_epoch >= len(batches):
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    self.optimizer.end_epoch()  # for penalty schedules counted in epochs
                    reason = reason or self.should_stop()
        self.log(f"stopped at step {self.step} (epoch {self.epoch}): {reason}")
        if self.step % t.valid_every != 0:
            self.validate_and_save()

    def window_sums(self, window: dict, keys: tuple[str, ...]) -> list[float]:
        """The window's sums of keys over all processes."""
        sums = torch.stack([torch.as_tensor(window[k], dtype=torch.float64, device=self.env.device).reshape(())
                            for k in keys])
        if self.env.distributed:
            dist.all_reduce(sums)
        return sums.tolist()


def choose_amp_dtype(cfg, env: Environment, log, saved_precision: str | None,
                     probe_loss: Callable[[], tuple[torch.nn.Module, Callable[[], torch.Tensor]]]) -> torch.dtype | None:
    """The autocast dtype of the run (None = float32); a resumed run keeps the choice it saved. On CPUs with
    native bf16, "auto" times forward+backward of one batch in float32 and under bf16 autocast and takes the
    faster: ``probe_loss()`` builds a throwaway model and returns it with a function computing the loss of
    one training batch. The random state is left as it was, and rank 0 decides for all."""
    if cfg.train.precision == "auto" and saved_precision is not None:
        return DTYPES[saved_precision]

    def probe() -> torch.dtype | None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            module, loss_of = probe_loss()

            def step(dtype):
                with autocast_factory(dtype, env.device)():
                    loss = loss_of()
                loss.backward()
                module.zero_grad(set_to_none=True)

            dtype, seconds = faster_cpu_dtype(step)
        choice = [dtype]
        if env.distributed:
            dist.broadcast_object_list(choice, src=0)
        log(f"precision auto: this CPU has native bf16; a training step took {seconds['fp32']:.3f}s in float32 and "
            f"{seconds['bf16']:.3f}s under bf16 autocast, so training runs in {choice[0] or torch.float32}")
        return choice[0]

    return autocast_dtype(cfg.train.precision, env.device, probe=probe)


def start_run(cfg, check_resumable, check_init_from) -> tuple[Environment, RunDir, RunLog, InitFrom | None]:
    """The environment, the run directory (resumed or fresh), its log, and for a fresh fine-tuning run
    the checkpoint it starts from; the precision, the penalty recipe and that checkpoint are checked
    first, before anything is written.
    check_resumable / check_init_from: the trainer's refusal of options a resumed run cannot change /
    of a checkpoint whose model or tokenizer options are not the run's."""
    env = setup_environment(cfg.train.threads)
    check_precision(cfg.train.precision, env.device)
    check_recipe(cfg)
    # Read before the run directory is opened: --overwrite may move aside the directory it lies in.
    init = read_init_from(cfg, env.device, check_init_from) if cfg.train.init_from and not resumes(cfg) else None
    run = open_run_dir(cfg, env, check_resumable)
    log = RunLog(run.path, env.is_main)
    if run.moved_to:
        log(f"the earlier run in {run.path} was moved to {run.moved_to} (--overwrite)")
    return env, run, log, init


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a train command; the message says where the run can be resumed from."""


class Session:
    """One train command on its run directory, from start_run to the end of training. The trainer that
    runs it is handed over with ``begin``; until then, and until its first step, the run has done no
    work that a failure could lose."""

    def __init__(self, cfg, env: Environment, run: RunDir, log: RunLog, init: InitFrom | None):
        self.cfg, self.env, self.run, self.log = cfg, env, run, log
        self.init = init  # the checkpoint a fresh fine-tuning run starts from
        self.trainer: TrainerLoop | None = None

    def begin(self, trainer: TrainerLoop) -> None:
        """Loads the saved state into trainer where the run resumes, then records the configuration in
        config.json: only now, so that a refused or failed start never leaves a configuration behind
        that did not run."""
        saved = self.run.saved
        trainer.checkpoint_step = None
        if saved is not None:
            trainer.load_state_dict(saved)
            trainer.checkpoint_step = trainer.step
            trainer.log.truncate_metrics(trainer.step)
            if saved["config"] != self.cfg.to_dict():
                trainer.log("note: the configuration differs from the one saved in latest.pt; resuming with the new one")
            trainer.log(f"resumed from {trainer.run_dir / checkpoint.LATEST} at step {trainer.step}")
        self.trainer = trainer  # from here on, the trainer's counters say how far the run got
        if self.env.is_main:
            (self.run.path / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n", encoding="utf-8")

    def steps_taken(self) -> int:
        """Updates this run has applied, over all its sessions."""
        if self.trainer is not None:
            return self.trainer.step
        return self.run.saved["counters"]["step"] if self.run.saved is not None else 0

    def latest_step(self) -> int | None:
        """The step latest.pt holds, None where the run has none yet."""
        if self.trainer is not None:
            return getattr(self.trainer, "checkpoint_step", None)
        return self.run.saved["counters"]["step"] if self.run.saved is not None else None

    def where_it_stands(self, discarded: bool) -> str:
        """What a failed or interrupted run leaves, and how to go on from there."""
        if discarded:
            earlier = f"; the earlier run stays in {self.run.moved_to}" if self.run.moved_to else ""
            return f"the run took no step, so nothing of it was kept in {self.run.path}{earlier}"
        saved_step = self.latest_step()
        if saved_step is None:
            return (f"no checkpoint yet (the first comes at step {self.cfg.train.valid_every}, train.valid_every): "
                    "nothing to resume from; start again with --overwrite (this run is moved aside)")
        return (f"{self.run.path / checkpoint.LATEST} (step {saved_step}) is intact: run the same command again to "
                "resume from it")


@contextlib.contextmanager
def training_session(cfg, check_resumable, check_init_from) -> Iterator[Session]:
    """start_run, then the body that prepares data, builds the trainer (``Session.begin``) and trains.
    Where the body fails or is interrupted before a fresh run's first step, the run directory is left as
    it was found (a run that took no step must not block its own directory); Ctrl-C becomes one line
    saying where the run can be resumed from, and a failed allocation one naming the options to shrink."""
    session = Session(cfg, *start_run(cfg, check_resumable, check_init_from))
    try:
        yield session
    except BaseException as e:
        discarded = session.run.saved is None and session.steps_taken() == 0
        if discarded:
            discard_fresh_start(session.run, session.env)
        if isinstance(e, KeyboardInterrupt):
            raise RunInterrupted(f"interrupted{_at_step(session)}; {session.where_it_stands(discarded)}") from None
        reason = out_of_memory(e)
        if reason:
            kind = type(cfg).KIND
            raise ConfigError(f"out of memory{_at_step(session)} ({reason}): make the model or the batch smaller "
                              f"({kind.sizes}); {session.where_it_stands(discarded)}") from None
        raise
    session.env.close()


def _at_step(session: Session) -> str:
    steps = session.steps_taken()
    return f" at step {steps}" if steps else " before the first step"


def out_of_memory(e: BaseException) -> str | None:
    """The allocator's reason, where e is a failed allocation (torch's CPU allocator raises a plain
    RuntimeError, its CUDA allocator torch.OutOfMemoryError); else None."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return text or type(e).__name__
    if isinstance(e, RuntimeError) and "can't allocate memory" in text:
        return text[text.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in text else text
    return None
