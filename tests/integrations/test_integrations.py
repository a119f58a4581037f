"""Penalized inside the loops people already use, against the real packages: the Hugging Face Trainer
(through optimizer_cls_and_kwargs) and Lightning (configure_optimizers, its closure, bf16-mixed with
gradient clipping). Each run is compared with the same framework training torch's own optimizer with
the same weight_decay, and the one-pass step is counted."""
import itertools
import subprocess
import sys

import pytest
import torch

import l2fast
import l2fast.integrations

STEPS = 30


class Tiny(torch.nn.Module):
    """A regression model whose forward takes a batch as the frameworks hand it over."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.LayerNorm(16),
                                       torch.nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x).squeeze(-1)
        return {"loss": (out - labels).pow(2).mean()} if labels is not None else {"logits": out}


def rows(count=STEPS * 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(count, 6, generator=g)
    y = x.sum(-1) + 0.1 * torch.randn(count, generator=g)
    return [{"x": x[i], "labels": y[i]} for i in range(count)]


def same(a, b, rel):
    for p, q in zip(a, b):
        assert ((p - q).abs().max() / q.abs().max()).item() <= rel


@pytest.fixture
def one_pass_calls(monkeypatch):
    calls = []
    run = l2fast.fused_step.run
    monkeypatch.setattr(l2fast.fused_step, "run", lambda *args: calls.append(1) or run(*args))
    return calls


@pytest.mark.slow
def test_hf_trainer_takes_penalized_through_optimizer_cls_and_kwargs(tmp_path, one_pass_calls):
    transformers = pytest.importorskip("transformers")

    def train(**optimizer):
        model = Tiny()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
            weight_decay=0.1, lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True,
            logging_strategy="no", seed=0, data_seed=0, dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows(), **optimizer)
        trainer.train()
        return [p.detach().clone() for p in model.parameters()]

    want = train()  # the Trainer's own AdamW with weight_decay=0.1 on the weights it decays
    got = train(optimizer_cls_and_kwargs=(l2fast.Penalized.wrapping(torch.optim.AdamW), {"lr": 1e-2}))
    assert len(one_pass_calls) == STEPS
    same(got, want, rel=1e-5)


def lightning_module(build_optimizer):
    import lightning

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Tiny()

        def training_step(self, batch, _):
            return self.model(batch["x"], batch["labels"])["loss"]

        def configure_optimizers(self):
            return build_optimizer(self.model.parameters())

    return Module()


def lightning_train(build_optimizer, **trainer_options):
    lightning = pytest.importorskip("lightning")
    module = lightning_module(build_optimizer)
    loader = torch.utils.data.DataLoader(rows(), batch_size=4, shuffle=False)
    trainer = lightning.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, **trainer_options)
    trainer.fit(module, loader)
    return [p.detach().clone() for p in module.model.parameters()]


def test_lightning_closure_takes_the_one_pass_step_and_trains_as_adam(one_pass_calls):
    pytest.importorskip("lightning")
    want = lightning_train(lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1))
    got = lightning_train(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=0.1))
    assert len(one_pass_calls) == STEPS
    same(got, want, rel=1e-5)


def test_lightning_bf16_mixed_with_gradient_clipping_trains_as_adam(one_pass_calls):
    """Lightning refuses gradient clipping for an optimizer that unscales inside its step; the wrapper
    says what the inner optimizer says, so plain Adam's setup works unchanged."""
    pytest.importorskip("lightning")
    options = dict(precision="bf16-mixed", gradient_clip_val=0.5)
    want = lightning_train(lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1), **options)
    got = lightning_train(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=0.1), **options)
    assert len(one_pass_calls) == STEPS
    same(got, want, rel=1e-5)


def test_the_hf_trainer_no_decay_rule_splits_as_the_trainer_does():
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                                   feed_forward_proj="gated-gelu")
    model = transformers.T5ForConditionalGeneration(config)
    by_name = dict(model.named_parameters(remove_duplicate=False))  # the Trainer names tied weights each time
    trainer_decays = {id(by_name[n]) for n in transformers.Trainer.get_decay_parameter_names(None, model)}
    decayed = l2fast.param_groups(model, l2=0.1, no_decay="hf-trainer", with_names=True)[0]["param_names"]
    assert {id(by_name[n]) for n in decayed} == trainer_decays
    assert any("relative_attention_bias" in n for n in l2fast.param_groups(model, with_names=True)[0]["param_names"])
    assert not any("relative_attention_bias" in n for n in decayed)


# --- the penalty in the frameworks' logs, resuming from their checkpoints, accelerate on its own ---

def hf_trainer(tmp_path, steps=STEPS, callbacks=None, **args):
    transformers = pytest.importorskip("transformers")
    options = dict(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
                   weight_decay=0.1, lr_scheduler_type="linear", report_to=[], save_strategy="no", use_cpu=True,
                   logging_strategy="no", seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    options.update(args)
    # A decaying penalty: resuming must restore the wrapper's clock as well as the inner optimizer.
    penalized = l2fast.Penalized.wrapping(torch.optim.AdamW, schedule=l2fast.schedules.Linear(total=steps))
    return transformers.Trainer(model=Tiny(), args=transformers.TrainingArguments(**options), train_dataset=rows(),
                                optimizer_cls_and_kwargs=(penalized, {"lr": 1e-2}), callbacks=callbacks)


def test_hf_log_penalty_puts_the_last_penalty_in_each_training_record_ahead_of_other_callbacks(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from l2fast.integrations import hf

    class Reporter(transformers.TrainerCallback):  # what a user callback / reporter receives
        seen = []

        def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
            if "loss" in logs:
                self.seen.append((dict(logs), l2fast.integrations.find_penalized(optimizer).last_penalty.item()))

    reads = []
    metrics = hf.metrics
    monkeypatch.setattr(hf, "metrics", lambda optimizer: reads.append(1) or metrics(optimizer))
    trainer = hf.log_penalty(hf_trainer(tmp_path, logging_strategy="steps", logging_steps=5, callbacks=[Reporter()]))
    assert hf.log_penalty(trainer) is trainer  # once only
    trainer.train()
    assert len(Reporter.seen) == STEPS // 5 == len(reads)  # read at the logging steps only
    for logs, last_penalty in Reporter.seen:
        assert logs["penalty"] == last_penalty > 0
        assert "loss" in logs and "grad_norm" in logs  # the Trainer's own (it clips first) is kept
    history = [record for record in trainer.state.log_history if "loss" in record]
    assert [record["penalty"] for record in history] == [logs["penalty"] for logs, _ in Reporter.seen]


@pytest.mark.slow
def test_hf_trainer_resumes_bitwise_from_its_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    whole = hf_trainer(tmp_path / "whole")
    whole.train()
    first = hf_trainer(tmp_path / "split", steps=STEPS, save_strategy="steps", save_steps=STEPS // 2)
    first.train()
    resumed = hf_trainer(tmp_path / "split", steps=STEPS)
    resumed.train(resume_from_checkpoint=str(tmp_path / "split" / f"checkpoint-{STEPS // 2}"))
    for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
        assert torch.equal(p, q)
    assert l2fast.integrations.find_penalized(resumed.optimizer).clock.step == STEPS


class Recorder:
    """Lightning pieces that record what the optimizer holds and what reaches the logger."""

    def __init__(self):
        import lightning
        recorder = self
        self.held, self.logged = [], []

        class Held(lightning.Callback):
            def on_train_batch_end(self, trainer, *args):
                recorder.held.append(l2fast.integrations.find_penalized(trainer.optimizers[0]).last_penalty.item())

        class Logger(lightning.pytorch.loggers.Logger):
            name, version = "recorder", 0

            def log_metrics(self, metrics, step=None):
                recorder.logged.append(metrics)

            def log_hyperparams(self, *args, **kwargs):
                pass

        self.callback, self.logger = Held(), Logger()


def test_lightning_penalty_logger_logs_the_last_penalty_at_the_logging_steps():
    lightning = pytest.importorskip("lightning")
    from l2fast.integrations.lightning import PenaltyLogger
    recorder = Recorder()
    module = lightning_module(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=0.1, max_grad_norm=0.5))
    trainer = lightning.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5,
                                logger=recorder.logger, callbacks=[PenaltyLogger(), recorder.callback])
    trainer.fit(module, torch.utils.data.DataLoader(rows(), batch_size=4))
    logged = [m for m in recorder.logged if "penalty" in m]
    assert len(logged) == STEPS // 5
    assert [m["penalty"] for m in logged] == recorder.held[4::5]
    assert all(m["grad_norm"] > 0 for m in logged)  # Penalized clips, so it has the norm


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader with Lightning's state protocol, so that a checkpoint taken inside an epoch resumes at
    the next batch (Lightning restarts a plain DataLoader's epoch)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.taken, self.skip = 0, 0

    def __iter__(self):
        self.taken, self.skip = self.skip, 0
        for batch in itertools.islice(super().__iter__(), self.taken, None):
            self.taken += 1
            yield batch

    def state_dict(self):
        return {"taken": self.taken}

    def load_state_dict(self, state):
        self.skip = state["taken"]


def test_lightning_resumes_bitwise_from_its_checkpoint(tmp_path):
    lightning = pytest.importorskip("lightning")

    def fit(steps, ckpt_path=None, **options):
        module = lightning_module(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=0.1,
                                                              schedule=l2fast.schedules.Linear(total=STEPS)))
        trainer = lightning.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                                    enable_progress_bar=False, enable_model_summary=False, **options)
        trainer.fit(module, ResumableLoader(rows(), batch_size=4), ckpt_path=ckpt_path)
        return module, trainer

    whole, _ = fit(STEPS, enable_checkpointing=False)
    checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=STEPS // 2,
                                                            save_top_k=-1)
    fit(STEPS // 2, callbacks=[checkpoint])
    resumed, trainer = fit(STEPS, ckpt_path=checkpoint.best_model_path, enable_checkpointing=False)
    for p, q in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(p, q)
    assert l2fast.integrations.find_penalized(trainer.optimizers[0]).clock.step == STEPS


def accelerate_train(build_optimizer, steps=STEPS, accumulate=2, state_dir=None, load_from=None, scaler=None):
    """accelerate's loop: prepare, accumulate, backward, step, scheduler; optionally save or load its state."""
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    accelerator.scaler = scaler  # accelerate makes no GradScaler on the CPU; this drives its scaler path
    model = Tiny()
    optimizer = build_optimizer(model.parameters())
    inner = getattr(optimizer, "optimizer", optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(inner, lambda s: 1 / (1 + s))
    loader = torch.utils.data.DataLoader(rows(steps * 4 * accumulate), batch_size=4)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    if load_from is not None:
        accelerator.load_state(load_from)
        loader = accelerator.skip_first_batches(loader, len(loader) // 2)
    skipped = []
    for index, batch in enumerate(loader):
        with accelerator.accumulate(model):
            x = batch["x"] * (float("inf") if index in (5, 6) and scaler is not None else 1)
            accelerator.backward(model(x, batch["labels"])["loss"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if accelerator.sync_gradients:
                skipped.append(optimizer.step_was_skipped)
        if state_dir is not None and index + 1 == len(loader) // 2:
            accelerator.save_state(state_dir)
    return model, optimizer, scheduler, skipped


def test_accelerate_trains_as_adam_with_accumulation_and_logs_the_penalty(one_pass_calls):
    pytest.importorskip("accelerate")
    want, *_ = accelerate_train(lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1))
    got, optimizer, *_ = accelerate_train(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=0.1))
    assert len(one_pass_calls) == STEPS
    same(list(got.parameters()), list(want.parameters()), rel=1e-5)
    assert l2fast.integrations.metrics(optimizer)["penalty"] is not None
    assert torch.equal(l2fast.integrations.metrics(optimizer)["penalty"], optimizer.optimizer.last_penalty)


def test_accelerate_sees_a_gradscaler_skipped_step_as_with_adam():
    """GradScaler skips step() itself for an optimizer that does not unscale inside its step, so
    accelerate reports the skip and its scheduler holds; the wrapper's clock holds with it."""
    pytest.importorskip("accelerate")

    def run(build):
        return accelerate_train(build, accumulate=1, scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 8))

    want, _, want_scheduler, want_skipped = run(lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1))
    got, optimizer, scheduler, skipped = run(lambda ps: l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=0.1))
    assert skipped == want_skipped and sum(skipped) == 2
    assert scheduler.scheduler.last_epoch == want_scheduler.scheduler.last_epoch == STEPS - 2
    assert optimizer.optimizer.clock.step == STEPS - 2
    same(list(got.parameters()), list(want.parameters()), rel=1e-5)


def test_accelerate_resumes_bitwise_from_save_state(tmp_path):
    pytest.importorskip("accelerate")

    def build(ps):
        return l2fast.Penalized(torch.optim.Adam(ps, lr=1e-2), l2=0.1, schedule=l2fast.schedules.Linear(total=STEPS))

    whole, *_ = accelerate_train(build, state_dir=tmp_path)
    resumed, optimizer, *_ = accelerate_train(build, load_from=tmp_path)
    for p, q in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(p, q)
    assert optimizer.optimizer.clock.step == STEPS


def test_l2fast_and_its_integrations_import_no_framework():
    code = ("import sys, l2fast, l2fast.integrations; "
            "found = {'transformers', 'accelerate', 'lightning', 'pytorch_lightning'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(found)}' if found else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_find_penalized_unwraps_the_frameworks_optimizers():
    accelerate = pytest.importorskip("accelerate")
    accelerate.Accelerator(cpu=True)
    penalized = l2fast.Penalized(torch.optim.Adam(Tiny().parameters()), l2=0.1)
    wrapped = accelerate.optimizer.AcceleratedOptimizer(penalized, device_placement=False)
    assert l2fast.integrations.find_penalized(wrapped) is penalized
    assert l2fast.integrations.find_penalized(penalized.optimizer) is None
    assert l2fast.integrations.metrics(wrapped) == {}  # before the first step
