"""Fine-tuning a language model from another run's checkpoint (--init-from): the new run starts from
its weights and tokenizer bit for bit, with a fresh optimizer and step count, and records where it
started; it resumes from its own latest.pt without the checkpoint; checkpoints that do not fit and
options that cannot change are refused before anything is written; the Fisher of EWC is per batch,
scaled to mean 1, in the anchors' dtype. The last tests pull toward the init-from weights (L2-SP,
EWC) through l2fast.Penalized's anchors."""
import json
import shutil

import pytest
import torch

pytest.importorskip("sentencepiece")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from l2fast.lm.config import build_config, check_init_from, check_resumable  # noqa: E402
from l2fast.lm.data import Documents, token_stream  # noqa: E402
from l2fast.lm.model import DecoderLM  # noqa: E402
from l2fast.lm.tokenizer import from_state_dict  # noqa: E402
from l2fast.lm.train import Split, Trainer, run_training  # noqa: E402
from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.trainer.checkpoint import CheckpointError  # noqa: E402
from l2fast.trainer.config import ConfigError  # noqa: E402
from l2fast.trainer.finetune import estimate_fisher, read_init_from  # noqa: E402
from l2fast.trainer.runtime import Environment, RunLog  # noqa: E402
from l2fast.trainer.text import DataError  # noqa: E402
from test_lm_train import STORY, metrics, tiny_config, write_text  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
# Domain B: text the pre-trained model never saw, so a tokenizer trained on it would differ.
CODE = ["def add(x, y): return x + y  # numbers in, their sum out", "for item in items: print(item, end=', ')"]
SPM = {"tokenizer": "spm", "vocab_size": 300}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """best.pt of a two-step run on STORY with a sentencepiece tokenizer (its run directory is copied by
    the tests that move it)."""
    root = tmp_path_factory.mktemp("pretrained")
    run_training(tiny_config(root, "pre", data=SPM, train={"max_steps": 2, "valid_every": 1}))
    return root / "pre" / checkpoint.BEST


def finetune_config(tmp_path, init_from, run="ft", **sections):
    """A tiny run on CODE that starts from init_from."""
    data = {"train": write_text(tmp_path, CODE * 4, "code.txt"), "valid": write_text(tmp_path, CODE, "code-valid.txt"),
            **SPM, **sections.pop("data", {})}
    train = {"init_from": str(init_from), "lr_schedule": "constant", **sections.pop("train", {})}
    return tiny_config(tmp_path, run, data=data, train=train, **sections)


def test_init_from_starts_from_the_checkpoints_weights_and_tokenizer_bit_for_bit(pretrained, tmp_path):
    cfg = finetune_config(tmp_path, pretrained)
    saved = checkpoint.load(pretrained)
    init = read_init_from(cfg, CPU, check_init_from)
    tokenizer = from_state_dict(init.tokenizer)
    docs = Documents("code", CODE * 4)
    stream = token_stream(tokenizer, docs)
    run_dir = tmp_path / "direct"
    run_dir.mkdir()
    trainer = Trainer(cfg, Environment(CPU), run_dir, RunLog(run_dir, False), tokenizer, stream, Split(docs, stream),
                      None, init)
    weights = trainer.model.state_dict()
    assert weights.keys() == saved["model"].keys()
    assert all(torch.equal(weights[k], saved["model"][k]) for k in weights)
    assert trainer.optimizer.state_dict()["state"] == {} and trainer.step == 0  # a fresh optimizer and count

    results = run_training(finetune_config(tmp_path, pretrained, train={"max_steps": 3, "valid_every": 3}))
    run = tmp_path / "ft"
    latest = checkpoint.load(run / checkpoint.LATEST)
    assert latest["tokenizer"] == saved["tokenizer"]  # the checkpoint's, not one trained on CODE
    assert (run / "tokenizer.model").read_bytes() == saved["tokenizer"]["model"]
    assert latest["counters"]["step"] == results["step"] == 3  # counted from 0, not from the checkpoint's 2
    assert latest["init_from"] == {"checkpoint": str(pretrained.resolve()), "step": 2}
    log = (run / "train.log").read_text()
    assert f"fine-tuning from {pretrained.resolve()} (step 2)" in log and "trained in" not in log
    assert json.loads((run / "config.json").read_text())["train"]["init_from"] == str(pretrained)


def test_a_fine_tuning_run_resumes_from_its_own_checkpoint(pretrained, tmp_path):
    """Two steps, stop, resume to four, after the checkpoint it started from is gone: the same losses and
    weights as four steps in one go; the resumed session did not start from the checkpoint again."""
    source = tmp_path / "pre"
    shutil.copytree(pretrained.parent, source)
    init_from = source / checkpoint.BEST
    run_training(finetune_config(tmp_path, init_from, "straight", train={"max_steps": 4, "valid_every": 2}))
    run_training(finetune_config(tmp_path, init_from, "resumed", train={"max_steps": 2, "valid_every": 2}))
    shutil.rmtree(source)
    run_training(finetune_config(tmp_path, init_from, "resumed", train={"max_steps": 4, "valid_every": 2}))
    rows = lambda run: [(r["step"], r["loss"], r["penalty"]) for r in metrics(tmp_path / run) if "loss" in r]  # noqa: E731
    assert rows("resumed") == rows("straight") and [r[0] for r in rows("resumed")] == [1, 2, 3, 4]
    a = checkpoint.load(tmp_path / "straight" / checkpoint.LATEST)
    b = checkpoint.load(tmp_path / "resumed" / checkpoint.LATEST)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["init_from"] == a["init_from"]  # still recorded after the resume
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert log.count("fine-tuning from") == 1 and "resumed from" in log


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(pretrained, tmp_path):
    with pytest.raises(ConfigError, match=rf"train.init_from {pretrained} was trained with model.d_model = 32, but this "
                                          r"run asks for 64: a fine-tuning run keeps the checkpoint's model shape and "
                                          rf"tokenizer, so give 32 \(--config {pretrained.parent}/config.json gives"):
        run_training(finetune_config(tmp_path, pretrained, model={"d_model": 64}))
    with pytest.raises(ConfigError, match="was trained with data.tokenizer = 'spm', but this run asks for 'bytes'"):
        run_training(finetune_config(tmp_path, pretrained, data={"tokenizer": "bytes"}))
    with pytest.raises(CheckpointError, match="train.init_from: checkpoint .*missing.pt does not exist"):
        run_training(finetune_config(tmp_path, tmp_path / "missing.pt"))
    assert not (tmp_path / "ft").exists()


def test_dropout_may_change_from_the_checkpoints(pretrained, tmp_path):
    run_training(finetune_config(tmp_path, pretrained, model={"dropout": 0.1}, train={"max_steps": 1, "valid_every": 1}))


def test_a_resumed_run_cannot_switch_the_pull_or_change_where_it_started(tmp_path):
    saved = tiny_config(tmp_path, train={"init_from": "pre.pt"}).to_dict()
    where = tmp_path / "latest.pt"
    with pytest.raises(ConfigError, match=r"trained with penalty.l2_sp = 0.0, and a resumed run cannot switch the pull "
                                          r"toward the init-from weights on .*keep penalty.l2_sp = 0, or pass --overwrite"):
        check_resumable(saved, tiny_config(tmp_path, train={"init_from": "pre.pt"}, penalty={"l2_sp": 0.1}), where)
    with pytest.raises(ConfigError, match="trained with train.init_from = 'pre.pt', but this run asks for 'other.pt', "
                                          "which a resumed run cannot change"):
        check_resumable(saved, tiny_config(tmp_path, train={"init_from": "other.pt"}), where)
    pulled = tiny_config(tmp_path, train={"init_from": "pre.pt"}, penalty={"l2_sp": 0.1}).to_dict()
    check_resumable(pulled, tiny_config(tmp_path, train={"init_from": "pre.pt"}, penalty={"l2_sp": 0.5}), where)
    with pytest.raises(ConfigError, match="trained with penalty.anchor_dtype = 'float32', but this run asks for 'bfloat16'"):
        check_resumable(pulled, tiny_config(tmp_path, train={"init_from": "pre.pt"},
                                            penalty={"l2_sp": 0.1, "anchor_dtype": "bfloat16"}), where)


def test_the_fisher_is_per_batch_scaled_to_mean_one_in_the_anchors_dtype():
    torch.manual_seed(0)
    model = DecoderLM(build_config({"model": {"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 16, "context": 8}}).model,
                      257)
    model.train()
    batches = [torch.randint(0, 257, (3, 9)) for _ in range(3)]

    def loss(m, batch):
        logits = m(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())

    fisher = estimate_fisher(model, batches, loss, Environment(CPU), torch.bfloat16)
    assert model.training  # left in the mode it was in
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    model.eval()
    for batch in batches:  # the squared gradient of each batch's mean loss, averaged over the batches
        grads = torch.autograd.grad(loss(model, batch), list(model.parameters()))
        for (name, _), g in zip(model.named_parameters(), grads):
            expected[name] += g.square() / len(batches)
    mean = sum(f.double().sum() for f in expected.values()) / sum(f.numel() for f in expected.values())
    assert fisher.mean == pytest.approx(float(mean), rel=1e-5)
    params = dict(model.named_parameters())
    assert set(fisher.weights) == set(params.values())
    for name, p in params.items():
        f = fisher.weights[p]
        assert f.dtype == torch.bfloat16
        torch.testing.assert_close(f.float(), (expected[name] / mean).float(), rtol=1e-2, atol=1e-6)
    scaled = sum(f.double().sum() for f in fisher.weights.values()) / sum(f.numel() for f in fisher.weights.values())
    assert float(scaled) == pytest.approx(1.0, rel=1e-2)  # bf16 rounding
    with pytest.raises(DataError, match="the Fisher of the --init-from weights on it has mean 0.0"):
        estimate_fisher(model, batches, lambda m, b: 0.0 * loss(m, b), Environment(CPU), torch.float32)


def test_the_fisher_batches_are_the_first_training_batches_of_the_fisher_text(pretrained, tmp_path):
    """Read with the run's (the checkpoint's) tokenizer; too short a text is a data error naming it."""
    cfg = finetune_config(tmp_path, pretrained)
    init = read_init_from(cfg, CPU, check_init_from)
    tokenizer = from_state_dict(init.tokenizer)
    docs = Documents("code", CODE * 4)
    stream = token_stream(tokenizer, docs)
    trainer = Trainer(cfg, Environment(CPU), tmp_path, RunLog(tmp_path, False), tokenizer, stream, Split(docs, stream),
                      None, init)
    story = write_text(tmp_path, STORY * 4, "story.txt")
    trainer.cfg = finetune_config(tmp_path, pretrained, penalty={"l2_sp": 0.1, "fisher_batches": 2, "fisher_data": story})
    batches = trainer.fisher_batches()
    expected = token_stream(tokenizer, Documents("story", STORY * 4))
    trainer.train_stream = expected  # the same text as training data: its first two batches at epoch 0
    assert len(batches) == 2
    assert all(torch.equal(a, b) for got, want in zip(batches, [trainer.collate(i) for i in trainer.epoch_batches()[:2]])
               for a, b in zip(got, want))
    trainer.cfg = finetune_config(tmp_path, pretrained, penalty={"l2_sp": 0.1, "fisher_batches": 99, "fisher_data": story})
    with pytest.raises(DataError, match=r"story.txt: \d+ blocks of model.context = 16 make \d+ batches of "
                                        r"train.batch_size = 4, fewer than penalty.fisher_batches = 99"):
        trainer.fisher_batches()


# ---- the pull toward the init-from weights: these need l2fast.Penalized(anchor=, fisher=, l2_sp group keys) ----

def distance(weights: dict, anchor: dict) -> float:
    return sum(float((weights[k].double() - anchor[k].double()).square().sum()) for k in anchor) ** 0.5


def test_l2_sp_holds_the_weights_near_the_checkpoints(pretrained, tmp_path):
    """Only the groups --l2 would decay are pulled; the logged penalty carries the pull; the weights end
    nearer the checkpoint's than plain fine-tuning leaves them."""
    start = checkpoint.load(pretrained)["model"]
    common = {"train": {"max_steps": 4, "valid_every": 4, "lr": 1e-2}, "penalty": {"l2": 0.0}}
    run_training(finetune_config(tmp_path, pretrained, "plain", **common))
    run_training(finetune_config(tmp_path, pretrained, "pulled", train=common["train"],
                                 penalty={"l2": 0.0, "l2_sp": 50.0}))
    plain = checkpoint.load(tmp_path / "plain" / checkpoint.LATEST)
    pulled = checkpoint.load(tmp_path / "pulled" / checkpoint.LATEST)
    assert distance(pulled["model"], start) < distance(plain["model"], start)
    assert sorted(g["l2_sp"] for g in pulled["optimizer"]["param_groups"]) == [0.0, 50.0]
    assert all(r["penalty"] == 0.0 for r in metrics(tmp_path / "plain") if "loss" in r)
    # The value is that of the weights before each update: at the first, they are the anchors themselves.
    assert [r["penalty"] > 0.0 for r in metrics(tmp_path / "pulled") if "loss" in r] == [False, True, True, True]


def test_an_ewc_run_resumes_with_its_anchors_and_fisher(pretrained, tmp_path):
    """bfloat16 anchors and Fisher, kept in the optimizer state: a run resumed after the checkpoint it
    started from is gone continues with bitwise the losses, penalties and weights of one that did not stop."""
    source = tmp_path / "pre"
    shutil.copytree(pretrained.parent, source)
    story = write_text(tmp_path, STORY * 4, "story.txt")
    penalty = {"l2": 0.0, "l2_sp": 1.0, "fisher_batches": 2, "fisher_data": story, "anchor_dtype": "bfloat16"}
    run = lambda name, steps: run_training(finetune_config(  # noqa: E731
        tmp_path, source / checkpoint.BEST, name, train={"max_steps": steps, "valid_every": 2}, penalty=penalty))
    run("straight", 4)
    run("resumed", 2)
    shutil.rmtree(source)
    run("resumed", 4)
    rows = lambda name: [(r["step"], r["loss"], r["penalty"]) for r in metrics(tmp_path / name) if "loss" in r]  # noqa: E731
    assert rows("resumed") == rows("straight")
    a = checkpoint.load(tmp_path / "straight" / checkpoint.LATEST)
    b = checkpoint.load(tmp_path / "resumed" / checkpoint.LATEST)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    kept = [s for s in b["optimizer"]["state"].values() if "l2fast_fisher" in s]
    assert kept and all(s["l2fast_anchor"].dtype == s["l2fast_fisher"].dtype == torch.bfloat16 for s in kept)
    log = (tmp_path / "straight" / "train.log").read_text()
    assert "EWC: Fisher of 2 batches of" in log and "(per batch), mean" in log
