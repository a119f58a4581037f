"""The multi-seed penalty ablation both trainers share: its statistics against a hand-worked example,
resuming (finished runs skipped, a torn results line run again), runs held by another process
skipped, refusals, seeds that change the run and only the run, and both commands end to end."""
import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

import torch  # noqa: E402

from l2fast.lm.config import build_config  # noqa: E402
from l2fast.lm.data import Documents, token_stream  # noqa: E402
from l2fast.lm.tokenizer import ByteTokenizer  # noqa: E402
from l2fast.lm.train import Split, Trainer  # noqa: E402
from l2fast.nmt.data import TokenizedPairs, train_batches as nmt_batches  # noqa: E402
from l2fast.nmt.demo_corpus import generate  # noqa: E402
from l2fast.lm import ablation as lm_ablation  # noqa: E402
from l2fast.trainer.ablation import (RESULTS, Ablation, Metric, Setting, Stats, beyond_spread, choose,  # noqa: E402
                                     finetune_settings, penalty_settings, run_ablation, summarize, table)
from l2fast.trainer.config import ConfigError, merge  # noqa: E402
from l2fast.trainer.runtime import Environment, RunLog  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = (Setting("none", "no penalty", {"l2": 0.0}), Setting("l2", "L2 1e-2", {"l2": 1e-2}),
            Setting("wd", "decoupled 0.1", {"l2": 0.1, "decoupled": True}))
METRICS = (Metric("bpb", "bits/byte", 2), Metric("train_seconds", "train s", 0, compare=False))
TINY_LM = {"model": {"d_model": 32, "heads": 2, "layers": 2, "ff_dim": 64, "context": 16},
           "train": {"batch_size": 4, "max_steps": 4, "warmup": 2, "log_every": 1, "valid_every": 2, "threads": 1}}


def fake_ablation(calls: list, fail_at: int | None = None) -> Ablation:
    """An ablation of the language model's configuration whose runs are not trained: each returns a
    result computed from its seed and penalty, and is recorded in calls."""
    def train(cfg):
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt  # as a process cut off mid-run
        calls.append((cfg.train.seed, cfg.penalty.l2, cfg.penalty.decoupled, cfg.train.max_minutes, cfg.train.run_dir))
        return {"bpb": cfg.train.seed + cfg.penalty.l2, "train_seconds": 1.0}

    return Ablation(lambda config: "Test ablation", SETTINGS, METRICS, build_config, train)


def test_statistics_against_a_hand_worked_example():
    # [1, 2, 4]: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2: variance 7/3.
    row = summarize([1.0, 2.0, 4.0])
    assert row.n == 3 and row.mean == pytest.approx(7 / 3) and row.std == pytest.approx(math.sqrt(7 / 3))
    baseline = summarize([10.0, 12.0])  # mean 11, variance (1 + 1) / 1 = 2
    assert baseline.std == pytest.approx(math.sqrt(2))
    assert beyond_spread(row, baseline) is True  # |7/3 - 11| = 8.67 > 1.53 + 1.41
    assert beyond_spread(summarize([10.5, 13.5]), baseline) is False  # |12 - 11| = 1 < 2.12 + 1.41
    assert beyond_spread(Stats(2, 11.0, 0.0), Stats(2, 11.0, 0.0)) is False  # equal means never differ
    assert summarize([5.0]).std is None and beyond_spread(summarize([5.0]), baseline) is None


def test_table_lines_against_a_hand_worked_example():
    def rows(setting, values):
        return [{"setting": setting, "seed": i, "results": {"bpb": v, "train_seconds": 10.0 * i}}
                for i, v in enumerate(values, 1)]

    text = table(Ablation(lambda config: f"Test ablation of {config['data']['train']}", SETTINGS, METRICS, None, None),
                 rows("none", [10.0, 12.0]) + rows("l2", [1.0, 2.0, 4.0]) + rows("wd", [11.5]),
                 {"data": {"train": "x.txt"}, "train": {"max_steps": 300, "precision": "fp32"}})
    lines = text.splitlines()
    assert lines[0].startswith("Test ablation of x.txt: 300 steps per run, precision fp32. Each cell is the mean ± sample "
                               "standard deviation over n seeds")
    assert "|difference of the means| > s + s0, the sum of the two sample standard deviations" in lines[0]
    assert lines[2] == "| penalty | n | bits/byte | vs no penalty | train s |"
    assert lines[4] == "| no penalty | 2 | 11.00 ± 1.41 | – | 15 ± 7 |"
    assert lines[5] == "| L2 1e-2 | 3 | 2.33 ± 1.53 | -8.67 (beyond spread) | 20 ± 10 |"
    assert lines[6] == "| decoupled 0.1 | 1 | 11.50 | +0.50 (n < 2) | 10 |"


def test_penalty_settings_and_bad_names():
    settings = penalty_settings((1e-5, 1e-4, 1e-3), 300, 100, decoupled=0.1)
    assert [s.name for s in settings] == ["none", "l2-1e-5", "l2-1e-4", "l2-1e-3", "decoupled", "decayed", "alternating"]
    assert settings[5].penalty_options() == {"l1": 0.0, "decoupled": False, "l2": 1e-4, "l2_sp": 0.0, "fisher_batches": 0,
                                             "penalty_schedule": '{"type": "Cosine", "total": 300}'}
    assert settings[4].penalty_options()["decoupled"] is True
    assert [s.name for s in choose(settings, ["decayed", "none"])] == ["none", "decayed"]  # the ablation's order
    with pytest.raises(ConfigError, match="unknown ablation setting 'l2-5'; choose from none, l2-1e-5, l2-1e-4"):
        choose(settings, ["none", "l2-5"])


def test_a_fine_tuning_configuration_gets_the_fine_tuning_settings():
    """Plain, L2 toward zero at the smallest and middle strengths, L2-SP at three, EWC at two where there is text to
    estimate the Fisher on; all coupled."""
    settings = finetune_settings((1e-2, 1e-1, 1.0), (1e-1, 1.0), fisher_batches=8)
    assert [s.name for s in settings] == ["none", "l2-1e-2", "l2-1e-1", "l2sp-1e-2", "l2sp-1e-1", "l2sp-1e0", "ewc-1e-1", "ewc-1e0"]
    assert settings[1].penalty_options()["l2"] == 0.01 and settings[2].penalty_options()["l2"] == 0.1
    assert settings[3].penalty_options()["l2"] == 0.0
    assert settings[6].penalty_options() == {"l1": 0.0, "decoupled": False, "penalty_schedule": "", "l2": 0.0,
                                             "l2_sp": 0.1, "fisher_batches": 8}
    base = {**TINY_LM, "train": {**TINY_LM["train"], "init_from": "pre.pt"}}
    assert [s.name for s in lm_ablation.make(build_config(base)).settings] == [s.name for s in settings[:6]]
    with_fisher = build_config(merge(base, {"penalty": {"fisher_data": "a.txt"}}))
    assert [s.name for s in lm_ablation.make(with_fisher).settings] == lm_ablation.FINETUNE_SETTING_NAMES
    assert lm_ablation.make(with_fisher).title(with_fisher.to_dict()).startswith(
        "Fine-tuning ablation of the language model from pre.pt on the demo text")
    assert [s.name for s in lm_ablation.make(build_config(TINY_LM)).settings] == lm_ablation.SETTING_NAMES


def test_resume_runs_only_what_is_missing(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_ablation(fake_ablation(calls, fail_at=3), TINY_LM, [1, 2], tmp_path, log=lambda _: None)
    assert [(seed, l2) for seed, l2, *_ in calls] == [(1, 0.0), (1, 1e-2), (1, 0.1)]  # seed by seed
    assert len((tmp_path / RESULTS).read_text().splitlines()) == 3
    # Every run: the setting's penalty (not the base's decoupled 0.1), no wall-clock cap, its own directory.
    assert calls[0][2] is False and calls[2][2] is True and {c[3] for c in calls} == {0.0}
    assert calls[0][4] == str(tmp_path / "none" / "seed1")

    calls.clear()
    text = run_ablation(fake_ablation(calls), TINY_LM, [1, 2], tmp_path, log=lambda _: None)
    assert [(seed, l2) for seed, l2, *_ in calls] == [(2, 0.0), (2, 1e-2), (2, 0.1)]
    assert "| no penalty | 2 | 1.50 ± 0.71 | – |" in text and (tmp_path / "ablation.md").read_text() == text + "\n"

    calls.clear()
    assert run_ablation(fake_ablation(calls), TINY_LM, [1, 2], tmp_path, log=lambda _: None) == text and not calls

    # A line torn by a process killed while writing it: its run counts as not done and runs again, and
    # the next row starts on a line of its own.
    with open(tmp_path / RESULTS, "a") as f:
        f.write('{"setting": "none", "seed": 3, "pen')
    run_ablation(fake_ablation(calls), TINY_LM, [3], tmp_path, only=["none"], log=lambda _: None)
    assert [(seed, l2) for seed, l2, *_ in calls] == [(3, 0.0)]
    assert json.loads((tmp_path / RESULTS).read_text().splitlines()[-1])["seed"] == 3


def test_a_run_another_process_holds_is_skipped(tmp_path):
    (tmp_path / "l2").mkdir(parents=True)
    with open(tmp_path / "l2" / "seed1.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file: conflicts as another process's lock would
        calls = []
        run_ablation(fake_ablation(calls), TINY_LM, [1], tmp_path, log=lambda _: None)
    assert [l2 for _, l2, *_ in calls] == [0.0, 0.1]


def test_results_of_another_configuration_are_refused(tmp_path):
    run_ablation(fake_ablation([]), TINY_LM, [1], tmp_path, only=["none"], log=lambda _: None)
    other = {**TINY_LM, "train": {**TINY_LM["train"], "max_steps": 8}}
    with pytest.raises(ConfigError, match=r"holds runs of another configuration \(train.max_steps = 4 there, 8 here\)"):
        run_ablation(fake_ablation([]), other, [2], tmp_path, log=lambda _: None)
    # Threads and run directories say where a run executes, not what it computes: not a difference.
    faster = {**TINY_LM, "train": {**TINY_LM["train"], "threads": 2}}
    run_ablation(fake_ablation([]), faster, [2], tmp_path, only=["none"], log=lambda _: None)
    changed = (Setting("none", "no penalty", {"l2": 1e-9}),) + SETTINGS[1:]
    with pytest.raises(ConfigError, match="its runs of 'none' had the penalty"):
        run_ablation(Ablation(lambda config: "x", changed, METRICS, build_config, None), TINY_LM, [3], tmp_path, log=lambda _: None)
    with pytest.raises(ConfigError, match="set train.max_steps"):
        run_ablation(fake_ablation([]), {"train": {"max_steps": 0, "lr_schedule": "constant"}}, [1], tmp_path / "new")


def test_a_seed_sets_the_initialisation_and_the_data_order(tmp_path):
    docs = Documents("text", ["the cat sat on the mat and looked at the moon."] * 20)
    stream = token_stream(ByteTokenizer(), docs)

    def trainer(seed):
        cfg = build_config({**TINY_LM, "train": {**TINY_LM["train"], "seed": seed, "run_dir": str(tmp_path)}})
        return Trainer(cfg, Environment(torch.device("cpu")), tmp_path, RunLog(tmp_path, False), ByteTokenizer(), stream,
                       Split(docs, stream), None)

    def weights(t):
        return torch.cat([p.detach().flatten() for p in t.model.parameters()])

    one, two, again = trainer(1), trainer(2), trainer(1)
    assert not torch.equal(weights(one), weights(two)) and torch.equal(weights(one), weights(again))
    assert one.epoch_batches() != two.epoch_batches() and one.epoch_batches() == again.epoch_batches()
    pairs = TokenizedPairs([[5] * (i % 7 + 1) for i in range(60)], [[6] * (i % 5 + 1) for i in range(60)])
    assert nmt_batches(pairs, 40, 1, 0) != nmt_batches(pairs, 40, 2, 0)
    assert nmt_batches(pairs, 40, 1, 0) == nmt_batches(pairs, 40, 1, 0)


def cli(*args, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "l2fast", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"l2fast {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in (row := json.loads(line))]


@pytest.mark.slow
def test_lm_ablation_command(tmp_path):
    """Two seeds of one setting and one seed of another, trained for real: the seeds give different
    losses; the same seed in another ablation directory gives the same ones; a second call trains nothing."""
    text = "".join(f"story {i}: the cat sat on the mat and looked at the moon number {i}.\n" for i in range(40))
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text(text, encoding="utf-8")
    config = {**TINY_LM, "data": {split: str(tmp_path / f"{split}.txt") for split in ("train", "valid", "test")}}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    common = ("lm", "ablation", "--config", str(tmp_path / "config.json"), "--threads", "1")
    out = cli(*common, "--seeds", "2", "--only", "none", "l2-1e-4", "--run-dir", str(tmp_path / "a")).stdout
    assert "| no penalty | 2 |" in out and "| L2 1e-4 | 2 |" in out and "valid bits/byte" in out
    a = tmp_path / "a"
    assert losses(a / "none" / "seed1") != losses(a / "none" / "seed2")
    cli(*common, "--seeds", "1", "--only", "none", "--run-dir", str(tmp_path / "b"))
    assert losses(tmp_path / "b" / "none" / "seed1") == losses(a / "none" / "seed1")
    again = cli(*common, "--seeds", "2", "--only", "none", "--run-dir", str(a))
    assert "ablation:" not in again.stdout and len((a / RESULTS).read_text().splitlines()) == 4
    assert cli("lm", "ablation", "--table", "--run-dir", str(a)).stdout == out[out.index("Penalty ablation"):]
    bad = cli(*common, "--only", "l2-5", "--run-dir", str(tmp_path / "c"), check=False)
    assert bad.returncode == 2 and "unknown ablation setting 'l2-5'; choose from none, l2-1e-5" in bad.stderr


@pytest.mark.slow
def test_translation_ablation_command(tmp_path):
    pairs = generate(60, seed=3)
    (tmp_path / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs[:50]), encoding="utf-8")
    (tmp_path / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs[50:]), encoding="utf-8")
    config = {"data": {"train": str(tmp_path / "train.tsv"), "valid": str(tmp_path / "test.tsv"),
                       "test": str(tmp_path / "test.tsv"), "vocab_size": 100},
              "model": {"d_model": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 64},
              "train": {"valid_every": 2, "log_every": 1}, "decode": {"beam": 2}}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    run_dir = tmp_path / "abl"
    out = cli("ablation", "--config", str(tmp_path / "config.json"), "--seeds", "2", "--max-steps", "2", "--threads", "1",
              "--only", "none", "--run-dir", str(run_dir)).stdout
    assert "| no penalty | 2 |" in out and "test BLEU" in out and "2 steps per run, precision fp32" in out
    assert losses(run_dir / "none" / "seed1") != losses(run_dir / "none" / "seed2")
    assert (run_dir / "tokenizer" / "joint.model").exists()  # one tokenizer, shared by every run
    assert "tokenizer: copied from" in (run_dir / "none" / "seed2" / "train.log").read_text()
    assert cli("ablation", "--table", "--run-dir", str(run_dir)).stdout == out[out.index("Penalty ablation"):]
    empty = cli("ablation", "--table", "--run-dir", str(tmp_path / "none-yet"), check=False)
    assert empty.returncode == 2 and "holds no finished runs" in empty.stderr
