"""Two processes under torchrun (gloo, CPU) train like one process accumulating two batches."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt.demo_corpus import generate  # noqa: E402


def train_args(corpus, run_dir, extra=()):
    return ["train", "--train", corpus, "--valid", corpus, "--vocab-size", "100", "--d-model", "32", "--heads", "2",
            "--encoder-layers", "1", "--decoder-layers", "1", "--ff-dim", "64", "--dropout", "0", "--max-tokens", "300",
            "--max-steps", "3", "--log-every", "1", "--valid-every", "3", "--valid-max-sentences", "8", "--l2", "1e-3",
            "--precision", "fp32",  # not "auto": its timed probe could choose bf16 in one run and not the other
            "--run-dir", str(run_dir), *extra]


def step_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process_accumulation(tmp_path):
    pairs = generate(80, seed=5)
    (tmp_path / "c.src").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "c.tgt").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    corpus = str(tmp_path / "c")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "l2fast", *train_args(corpus, single, ["--accumulate", "2", "--threads", "1"])],
                   check=True, env=env, capture_output=True)
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "l2fast",
         *train_args(corpus, ddp, ["--tokenizer", str(single / "tokenizer")])],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es) on cpu" in (ddp / "train.log").read_text()
    assert step_losses(ddp) == pytest.approx(step_losses(single), rel=1e-5)
    assert len(step_losses(ddp)) == 3


@pytest.mark.slow
def test_two_processes_stop_together_at_the_time_limit(tmp_path):
    """Validation every step makes rank 0 (which also writes checkpoints and the plot) spend more
    time than rank 1, so their clocks pass --max-minutes at different steps; they must stop at one."""
    pairs = generate(80, seed=5)
    (tmp_path / "c.src").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "c.tgt").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = train_args(str(tmp_path / "c"), tmp_path / "run", ["--max-steps", "0", "--max-minutes", "0.02",
                                                             "--valid-every", "1", "--valid-max-sentences", "2"])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "l2fast", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "reached max_minutes = 0.02" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_resume_under_torchrun_with_dropout_continues_as_uninterrupted(tmp_path):
    """Each process draws its own dropout masks (its batches differ in shape), so a checkpoint must
    keep every process's random state, not rank 0's for all."""
    pairs = generate(80, seed=5)
    (tmp_path / "c.src").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "c.tgt").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def torchrun(run_dir, steps):
        args = train_args(str(tmp_path / "c"), run_dir, ["--dropout", "0.3", "--max-steps", str(steps),
                                                         "--valid-every", "2"])
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "l2fast", *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    torchrun(tmp_path / "whole", 4)
    torchrun(tmp_path / "resumed", 2)
    torchrun(tmp_path / "resumed", 4)
    whole, resumed = step_losses(tmp_path / "whole"), step_losses(tmp_path / "resumed")
    assert len(whole) == 4 and resumed[-2:] == whole[-2:]
