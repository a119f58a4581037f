"""Training end to end on tiny data: overfitting, exact resume, atomic checkpoints, penalty schedules."""
import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.nmt.config import ConfigError, build_config  # noqa: E402
from l2fast.nmt.demo_corpus import generate  # noqa: E402
from l2fast.trainer.recipe import learning_rate  # noqa: E402
from l2fast.nmt.train import run_training  # noqa: E402

TINY_MODEL = {"d_model": 64, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff_dim": 128}


def write_corpus(directory, pairs, name="train"):
    (directory / f"{name}.src").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (directory / f"{name}.tgt").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return str(directory / name)


def tiny_config(tmp_path, run="run", pairs=20, **sections):
    corpus = write_corpus(tmp_path, generate(pairs, seed=7))
    settings = {
        "data": {"train": corpus, "valid": corpus, "test": corpus, "vocab_size": 120},
        "model": dict(TINY_MODEL),
        # precision fp32, not "auto": on a CPU with native bf16 its timed probe may choose either dtype.
        "train": {"run_dir": str(tmp_path / run), "max_tokens": 2000, "lr": 3e-3, "warmup": 10, "log_every": 1,
                  "threads": 1, "precision": "fp32"},
        "decode": {"beam": 3},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    return build_config(settings)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_tiny_model_overfits_twenty_pairs(tmp_path):
    cfg = tiny_config(tmp_path, model={"dropout": 0.0}, train={"max_steps": 250, "valid_every": 250, "log_every": 50},
                      penalty={"l2": 1e-5})
    results = run_training(cfg)
    assert results["test_bleu"] > 90, results
    run_dir = tmp_path / "run"
    for name in ("latest.pt", "best.pt", "metrics.jsonl", "metrics.png", "results.json", "test.hyp", "tokenizer/joint.model"):
        assert (run_dir / name).exists(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["penalty"] > 0 and r["tok_per_s"] > 0 for r in rows if "loss" in r)


@pytest.mark.parametrize("average_decay", [0.0, 0.9])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, average_decay):
    common = {"valid_every": 3, "valid_max_sentences": 4, "average_decay": average_decay}
    penalty = {"l2": 1e-3, "penalty_schedule": json.dumps({"type": "Alternating", "every": 2})}
    straight = tiny_config(tmp_path, "straight", model={"dropout": 0.3}, train={"max_steps": 6, **common}, penalty=penalty)
    run_training(straight)
    interrupted = tiny_config(tmp_path, "resumed", model={"dropout": 0.3}, train={"max_steps": 3, **common}, penalty=penalty)
    run_training(interrupted)
    assert checkpoint.load(tmp_path / "resumed" / "latest.pt")["counters"]["step"] == 3
    resumed = tiny_config(tmp_path, "resumed", model={"dropout": 0.3}, train={"max_steps": 6, **common}, penalty=penalty)
    run_training(resumed)
    expected, got = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [got[s] for s in (4, 5, 6)] == [expected[s] for s in (4, 5, 6)]  # bitwise, not approximately
    assert got[4] != got[5]  # the steps differ, so the equality above means something
    final = [checkpoint.inference_weights(checkpoint.load(tmp_path / run / "latest.pt")) for run in ("straight", "resumed")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


KILL_DURING_SAVE = textwrap.dedent("""
    import sys, time, torch
    from l2fast.trainer import checkpoint
    path = sys.argv[1]
    checkpoint.atomic_save({"step": 1, "weights": torch.ones(1000)}, path)

    def slow_save(obj, f):  # writes half of the real bytes, then hangs until killed
        import io
        buffer = io.BytesIO()
        torch.serialization.save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        print("writing", flush=True)
        time.sleep(120)

    torch.save = slow_save
    checkpoint.atomic_save({"step": 2, "weights": torch.zeros(1000)}, path)
""")


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "latest.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = checkpoint.load(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(1000))
    leftovers = list(tmp_path.glob(".latest.pt.*.tmp"))
    assert len(leftovers) == 1  # the half-written file went to a temporary name, never to latest.pt
    checkpoint.remove_stale_temporaries(tmp_path)
    assert not list(tmp_path.glob(".latest.pt.*.tmp"))


def test_learning_rate_schedules():
    cfg = build_config({"train": {"lr": 1e-3, "warmup": 10, "max_steps": 110}})
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 39) == pytest.approx(1e-3 * 0.5)  # sqrt(10 / 40)
    cosine = build_config({"train": {"lr": 1e-3, "warmup": 10, "max_steps": 110, "lr_schedule": "cosine", "min_lr": 1e-5}})
    assert learning_rate(cosine, 60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert learning_rate(cosine, 110) == pytest.approx(1e-5)


def test_config_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="model.d_model .* divisible by model.heads"):
        build_config({"model": {"d_model": 100, "heads": 8}})
    with pytest.raises(ConfigError, match="unknown option train.learning_rate"):
        build_config({"train": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="tie = 'all' .*joint_vocab"):
        build_config({"data": {"joint_vocab": False}})
    with pytest.raises(ConfigError, match="penalty_schedule is not valid JSON"):
        build_config({"penalty": {"penalty_schedule": "{nope"}})
    with pytest.raises(ConfigError, match="train.max_tokens must be of type int"):
        build_config({"train": {"max_tokens": "many"}})
    with pytest.raises(ConfigError, match=r"model.dropout must be in \[0, 1\), got 1.0"):
        build_config({"model": {"dropout": 1.0}})
    cfg = tiny_config(tmp_path, train={"max_steps": 1}, penalty={"penalty_schedule": '{"type": "Sideways"}'})
    with pytest.raises(ConfigError, match="no schedule 'Sideways'"):
        run_training(cfg)
