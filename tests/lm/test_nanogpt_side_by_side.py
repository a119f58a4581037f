"""bench/nanogpt_side_by_side.py without nanoGPT: the token export, the scoring of a model that answers
as nanoGPT's GPT does (bits per byte against a hand-worked value), the iteration plan and the config."""
import importlib.util
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from l2fast.lm.config import build_config
from l2fast.lm.data import Documents, token_stream
from l2fast.lm.evaluate import score_stream

HELPER = Path(__file__).resolve().parents[2] / "bench" / "nanogpt_side_by_side.py"
spec = importlib.util.spec_from_file_location("nanogpt_side_by_side", HELPER)
side = importlib.util.module_from_spec(spec)
spec.loader.exec_module(side)


class DigitTokenizer:
    """Each space-separated word is a digit, its own id; 0 ends a document."""

    eod = 0
    vocab_size = 10

    def encode(self, texts):
        return [[int(word) for word in text.split()] for text in texts]


class CountingGPT(nn.Module):
    """Answers as nanoGPT's GPT does: (logits, loss); every position's logits only when given targets,
    which it views flat. It gives the next digit (current + 1) weight 9 and each other digit 1, so the
    next digit has probability 9/18 and any other 1/18."""

    def __init__(self, block_size: int):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, 10)
        logits.scatter_(-1, ((idx + 1) % 10).unsqueeze(-1), math.log(9))
        if targets is None:
            return logits[:, [-1], :], None
        targets.view(-1)  # as nanoGPT's loss does: fails on a non-contiguous batch
        return logits, None


def test_export_writes_the_l2fast_stream_as_nanogpt_reads_it(tmp_path):
    train, valid = Documents("train", ["1 2 3", "4 6"]), Documents("valid", ["5 7"])
    counts = side.write_dataset(DigitTokenizer(), train, valid, tmp_path)
    assert np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist() == [0, 1, 2, 3, 0, 4, 6, 0]
    assert np.fromfile(tmp_path / "val.bin", dtype=np.uint16).tolist() == [0, 5, 7, 0]
    assert counts == {"train_tokens": 8, "valid_tokens": 4}
    with open(tmp_path / "meta.pkl", "rb") as f:
        assert pickle.load(f) == {"vocab_size": 10}


def test_export_refuses_a_vocabulary_beyond_uint16(tmp_path):
    tokenizer = DigitTokenizer()
    tokenizer.vocab_size = 70_000
    with pytest.raises(side.SideBySideError, match="uint16"):
        side.write_stream(tokenizer, Documents("t", ["1"]), tmp_path / "t.bin")


def test_a_nanogpt_model_scored_in_bits_per_byte_hand_worked():
    # Stream 0 1 2 3 0 4 6 0: of its 7 predicted tokens 0->1, 1->2, 2->3 are next digits (1 bit each),
    # 3->0, 0->4, 4->6, 6->0 are not (log2 18 bits each); bytes: "1 2 3" + end = 6, "4 6" + end = 4.
    # Windows of 3 tokens (3, 3, 1) cover each predicted token once. Bits = 3 + 4 log2 18 = 19.6797.
    docs = Documents("valid", ["1 2 3", "4 6"])
    score = score_stream(side.FullLogits(CountingGPT(block_size=3)), token_stream(DigitTokenizer(), docs),
                         docs.utf8_bytes, torch.device("cpu"))
    assert (score.tokens, score.utf8_bytes) == (7, 10)
    assert score.bits_per_byte == pytest.approx(1.96797, abs=1e-5)
    assert score.loss == pytest.approx(19.67970 * math.log(2) / 7, abs=1e-5)


PROBE_LOG = """step 0: train loss 9.0, val loss 9.0
iter 0: loss 9.0000, time 2500.00ms, mfu -100.00%
iter 1: loss 8.0000, time 500.00ms, mfu -100.00%
iter 2: loss 7.0000, time 400.00ms, mfu -100.00%
iter 3: loss 6.0000, time 600.00ms, mfu -100.00%
iter 4: loss 5.0000, time 500.00ms, mfu -100.00%
"""


def test_iterations_fill_the_budget():
    # Median iteration 0.5 s; iteration 0 also held a 2.0 s loss estimate; the probe's 6.5 s hold 4.5 s of
    # iterations, so 2.0 s of start-up. 60 s - 2.0 - 2.0 (the estimate at the end) = 56 s = 112 iterations,
    # of which one runs after the last checkpoint: max_iters 111.
    assert side.iterations_for(60.0, PROBE_LOG, 6.5, 4, warmup=10) == 111
    with pytest.raises(side.SideBySideError, match="not more than the 200 of warm-up"):
        side.iterations_for(60.0, PROBE_LOG, 6.5, 4, warmup=200)
    with pytest.raises(side.SideBySideError, match="logged 5 iterations, expected 21"):
        side.iterations_for(60.0, PROBE_LOG, 6.5, 20, warmup=10)


def test_nanogpt_config_carries_the_model_and_recipe(tmp_path):
    cfg = build_config({"model": {"d_model": 64, "heads": 2, "layers": 3, "ff_dim": 256, "context": 32, "dropout": 0.1},
                        "train": {"batch_size": 8, "accumulate": 2, "lr": 1e-3, "warmup": 5, "min_lr": 1e-5},
                        "penalty": {"l2": 0.05}})
    side.check_expressible(cfg)
    threads = []
    settings = {"torch": SimpleNamespace(set_num_threads=threads.append)}
    exec(side.nanogpt_config(cfg, "fp32", 3, tmp_path / "data", tmp_path / "out"), settings)
    expected = {"n_embd": 64, "n_head": 2, "n_layer": 3, "block_size": 32, "dropout": 0.1, "bias": True,
                "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 1e-3, "warmup_iters": 5,
                "min_lr": 1e-5, "weight_decay": 0.05, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
                "dtype": "float32", "compile": False, "wandb_log": False, "dataset": str(tmp_path / "data")}
    assert {key: settings[key] for key in expected} == expected
    assert threads == [3]


@pytest.mark.parametrize("overrides, excerpt", [
    ({"model": {"ff_dim": 500}}, "nanoGPT's feed-forward width is 4 x d_model = 512"),
    ({"penalty": {"decoupled": False}}, "not a constant decoupled L2"),
    ({"penalty": {"decay_embeddings": False}}, "nanoGPT decays every matrix and embedding"),
    ({"train": {"lr_schedule": "inverse_sqrt"}}, "decays the learning rate by a cosine only"),
])
def test_runs_nanogpt_cannot_reproduce_are_refused(overrides, excerpt):
    with pytest.raises(side.SideBySideError, match=excerpt):
        side.check_expressible(build_config(overrides))
