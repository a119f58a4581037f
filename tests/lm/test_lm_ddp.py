"""The shared update under DistributedDataParallel, through the language-model trainer: two gloo
processes holding different numbers of tokens, each accumulating two micro-batches, take the same
steps as one process accumulating all four. The loss is normalised by the token count summed over
the processes; a count of this process's tokens times the number of processes (what the trainer
assumed before) weights the processes' gradients wrongly and fails this test."""
from pathlib import Path

import pytest
import torch

pytest.importorskip("tqdm")

from conftest import run_on_gloo  # noqa: E402

from l2fast.lm.config import build_config  # noqa: E402
from l2fast.lm.data import Documents, collate_blocks, token_stream  # noqa: E402
from l2fast.lm.tokenizer import ByteTokenizer  # noqa: E402
from l2fast.lm.train import Split, Trainer  # noqa: E402
from l2fast.trainer.runtime import Environment, RunLog  # noqa: E402

WORLD = 2
STEPS = 3
CONTEXT = 16
# Block indices of each micro-batch: rank 0 holds four blocks, rank 1 two; one process takes all six.
RANKS = [[[0, 1, 2], [3]], [[4], [5]]]
STORY = ["the cat sat on the mat and looked at the moon.", "a dog ran to the river, drank, and ran back home."]


def make_trainer(run_dir, env: Environment) -> Trainer:
    # Coupled L2 and Adam: the update depends on how the loss gradient is scaled against the penalty's.
    cfg = build_config({"model": {"d_model": 32, "heads": 2, "layers": 2, "ff_dim": 64, "context": CONTEXT},
                        "train": {"lr_schedule": "constant", "warmup": 0, "clip_norm": 0.0, "precision": "fp32",
                                  "run_dir": str(run_dir)},
                        "penalty": {"l2": 0.05, "decoupled": False}})
    docs = Documents("story", STORY * 2)
    stream = token_stream(ByteTokenizer(), docs)
    return Trainer(cfg, env, run_dir, RunLog(run_dir, False), ByteTokenizer(), stream, Split(docs, stream), None)


def train(trainer: Trainer, micro_batches: list[list[int]]) -> dict:
    batches = [collate_blocks(trainer.train_stream, indices, CONTEXT) for indices in micro_batches]
    results = [trainer.update(batches) for _ in range(STEPS)]
    return {"grad_norms": [float(r["grad_norm"]) for r in results], "counts": [r["count"] for r in results],
            "params": [p.detach().clone() for p in trainer.model.parameters()]}


def job(rank, out_dir):
    trainer = make_trainer(Path(out_dir), Environment(torch.device("cpu"), rank, WORLD))
    return train(trainer, RANKS[rank])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_processes_with_different_token_counts_step_as_one_process(tmp_path):
    ranks = run_on_gloo(job, WORLD, tmp_path, str(tmp_path))
    single = train(make_trainer(tmp_path, Environment(torch.device("cpu"))), RANKS[0] + RANKS[1])

    assert [rank["counts"][0] for rank in ranks] == [4 * CONTEXT, 2 * CONTEXT]  # the ranks' counts differ
    initial = [p.detach() for p in make_trainer(tmp_path, Environment(torch.device("cpu"))).model.parameters()]
    assert max((p - q).abs().max().item() for p, q in zip(single["params"], initial)) > 1e-3  # the steps moved the weights
    for rank in ranks:
        assert rank["grad_norms"] == pytest.approx(single["grad_norms"], rel=1e-5)
        for p, q in zip(rank["params"], single["params"]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)  # lr 2e-3: 0.5% of a step
