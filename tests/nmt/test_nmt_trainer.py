"""The trainer's step and stop decisions: collective stopping under several processes, a skipped
fp16 update, validation that survives over-long lines, and the validation loss itself."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt.data import collate, train_batches  # noqa: E402
from l2fast.trainer.runtime import Environment, RunLog  # noqa: E402
from l2fast.trainer.special_tokens import BOS, EOS  # noqa: E402
from l2fast.nmt.train import Trainer, prepare_data, run_training  # noqa: E402
from test_nmt_train import tiny_config, write_corpus  # noqa: E402

CPU = torch.device("cpu")

STOP_DECISION = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    import torch, torch.distributed as dist
    from l2fast.nmt.config import build_config
    from l2fast.trainer.runtime import Environment
    from l2fast.nmt.train import Trainer
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
    cfg = build_config({"train": {"max_steps": 0, "max_minutes": 1.0}})
    # The two processes' clocks disagree: only rank 1's has passed the one-minute limit.
    trainer = SimpleNamespace(cfg=cfg, env=Environment(torch.device("cpu"), rank, 2), step=5, epoch=0,
                              bad_validations=0, elapsed=[59.0, 61.0][rank])
    print(repr(Trainer.should_stop(trainer)), flush=True)
    dist.destroy_process_group()
""")


def test_every_process_takes_the_same_time_limit_decision(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", STOP_DECISION, str(rank), str(tmp_path / "store")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert [out.strip() for out, _ in outputs] == ["'reached max_minutes = 1.0'"] * 2


def build_trainer(tmp_path, **sections):
    cfg = tiny_config(tmp_path, **sections)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = RunLog(run_dir, True)
    tokenizer, train, valid, test = prepare_data(cfg, run_dir, Environment(CPU), log)
    return Trainer(cfg, Environment(CPU), run_dir, log, tokenizer, train, valid, test, amp_dtype=None)


def test_a_skipped_update_logs_no_penalty_and_changes_nothing(tmp_path):
    trainer = build_trainer(tmp_path)
    batch = [collate(trainer.train_pairs, train_batches(trainer.train_pairs, 2000, 1, 0)[0])]
    always_overflows = torch.amp.GradScaler("cpu", init_scale=float("inf"))  # fp16 overflow, every step
    for scaler, skipped in ((always_overflows, True), (torch.amp.GradScaler("cpu", init_scale=1.0), False),
                            (always_overflows, True)):
        trainer.scaler = scaler
        weights = [p.detach().clone() for p in trainer.model.parameters()]
        penalty = trainer.update(batch)["penalty"]
        unchanged = all(torch.equal(w, p) for w, p in zip(weights, trainer.model.parameters()))
        assert unchanged == skipped
        assert torch.isnan(penalty) == skipped  # never the value of an earlier update


def test_an_over_long_validation_line_is_cut_and_counted(tmp_path):
    long_pair = (" ".join(["word"] * 300), " ".join(["wort"] * 300))
    valid = write_corpus(tmp_path, [("a short line", "eine kurze zeile"), long_pair], name="valid")
    run_training(tiny_config(tmp_path, model={"max_positions": 64}, data={"valid": valid, "max_len": 40},
                             train={"max_steps": 1, "valid_every": 1}))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "1 of 2 pairs longer than 63 subword tokens (first at line 2) are cut" in log
    assert "valid step 1" in log


def test_valid_loss_is_the_token_mean_of_the_reference_cross_entropy(tmp_path):
    trainer = build_trainer(tmp_path, train={"max_tokens": 150})  # several batches
    model, pairs = trainer.model.eval(), trainer.valid.pairs
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for src, tgt in zip(pairs.src, pairs.tgt):
            logits = model.output(model(torch.tensor([src + [EOS]]), torch.tensor([[BOS] + tgt]))[0])
            nll += F.cross_entropy(logits.double(), torch.tensor(tgt + [EOS]), reduction="sum").item()
            tokens += len(tgt) + 1
    assert trainer.valid_loss(0) == pytest.approx(nll / tokens, rel=1e-5)
