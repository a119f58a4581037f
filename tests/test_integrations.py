"""Penalized inside the loops people already use, against the real packages: the Hugging Face Trainer
(through optimizer_cls_and_kwargs) and Lightning (configure_optimizers, its closure, bf16-mixed with
gradient clipping). Each run is compared with the same framework training torch's own optimizer with
the same weight_decay, and the one-pass step is counted."""
import pytest
import torch

import l2fast

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
