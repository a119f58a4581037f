"""Fine-tuning a translation model from another run's checkpoint (--init-from): the weights it
translated with (its weight average, where it kept one) and its tokenizer, bit for bit, in a run of
its own that resumes from its own latest.pt; a checkpoint whose model does not fit is refused before
anything is written."""
import shutil

import pytest
import torch

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt.config import ConfigError, check_init_from  # noqa: E402
from l2fast.nmt.demo_corpus import generate  # noqa: E402
from l2fast.nmt.train import Trainer, prepare_data, run_training  # noqa: E402
from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.trainer.finetune import read_init_from  # noqa: E402
from l2fast.trainer.runtime import Environment, RunLog  # noqa: E402
from test_nmt_train import tiny_config, write_corpus  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """best.pt of a two-step run that keeps a weight average."""
    root = tmp_path_factory.mktemp("pretrained")
    run_training(tiny_config(root, "pre", train={"max_steps": 2, "valid_every": 1, "valid_max_sentences": 4,
                                                 "average_decay": 0.9}))
    return root / "pre" / checkpoint.BEST


def finetune_config(tmp_path, init_from, run="ft", **sections):
    """A tiny run on other sentences than the pre-training's, starting from init_from."""
    corpus = write_corpus(tmp_path, generate(20, seed=8), name="other")
    data = {"train": corpus, "valid": corpus, "test": corpus, **sections.pop("data", {})}
    train = {"init_from": str(init_from), "valid_max_sentences": 4, **sections.pop("train", {})}
    return tiny_config(tmp_path, run, data=data, train=train, **sections)


def test_init_from_starts_from_the_weights_it_translated_with_and_its_tokenizer(pretrained, tmp_path):
    cfg = finetune_config(tmp_path, pretrained)
    saved = checkpoint.load(pretrained)
    run_dir = tmp_path / "ft"
    run_dir.mkdir()
    log = RunLog(run_dir, True)
    init = read_init_from(cfg, CPU, check_init_from)
    tokenizer, train, valid, test = prepare_data(cfg, run_dir, Environment(CPU), log, init)
    assert tokenizer.state_dict() == saved["tokenizer"]  # not one trained on the other sentences
    assert (run_dir / "tokenizer" / "joint.model").read_bytes() == saved["tokenizer"]["src_model"]
    trainer = Trainer(cfg, Environment(CPU), run_dir, log, tokenizer, train, valid, test, None, init)
    average = saved["average"]["model"]
    assert not all(torch.equal(average[k], saved["model"][k]) for k in average)  # so the choice below means something
    assert all(torch.equal(v, average[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.average is None and trainer.optimizer.state_dict()["state"] == {}


def test_a_fine_tuning_run_resumes_from_its_own_checkpoint(pretrained, tmp_path):
    source = tmp_path / "pre"
    shutil.copytree(pretrained.parent, source)
    run_training(finetune_config(tmp_path, source / checkpoint.BEST, train={"max_steps": 1, "valid_every": 1}))
    tokenizer = (tmp_path / "ft" / "tokenizer" / "joint.model").read_bytes()
    shutil.rmtree(source)  # a resumed run never reads it again
    results = run_training(finetune_config(tmp_path, source / checkpoint.BEST, train={"max_steps": 2, "valid_every": 1}))
    assert results["step"] == 2
    assert (tmp_path / "ft" / "tokenizer" / "joint.model").read_bytes() == tokenizer
    log = (tmp_path / "ft" / "train.log").read_text()
    assert log.count("fine-tuning from") == 1 and "resumed from" in log


def test_a_checkpoint_whose_model_does_not_fit_is_refused_before_anything_is_written(pretrained, tmp_path):
    with pytest.raises(ConfigError, match=f"train.init_from {pretrained} was trained with model.encoder_layers = 2, but "
                                          "this run asks for 3"):
        run_training(finetune_config(tmp_path, pretrained, model={"encoder_layers": 3}))
    with pytest.raises(ConfigError, match="was trained with data.vocab_size = 120, but this run asks for 100"):
        run_training(finetune_config(tmp_path, pretrained, data={"vocab_size": 100}))
    assert not (tmp_path / "ft").exists()
