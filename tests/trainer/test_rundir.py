"""The run directory: an earlier run is never deleted, broken files give errors that say what to do,
and a resumed run cannot change what its checkpoint fixed. All of it is decided before data is read."""
import json
import re

import pytest
import torch

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.trainer.checkpoint import CheckpointError  # noqa: E402
from l2fast.nmt.config import ConfigError  # noqa: E402
from l2fast.trainer.rundir import RUN_STATE_KEYS  # noqa: E402
from l2fast.trainer.runtime import RunLog  # noqa: E402
from l2fast.nmt.train import run_training  # noqa: E402
from test_nmt_train import tiny_config  # noqa: E402

EARLIER = {"best.pt": b"the best weights of an earlier run", "metrics.jsonl": b'{"step": 1, "loss": 2.0}\n',
           "train.log": b"an earlier log\n"}


def earlier_run(run_dir, files=EARLIER):
    run_dir.mkdir(parents=True)
    for name, content in files.items():
        (run_dir / name).write_bytes(content)


def contents(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.parametrize("resume", [True, False])
def test_a_run_dir_without_a_resumable_checkpoint_is_refused_and_left_alone(tmp_path, resume):
    earlier_run(tmp_path / "run", {**EARLIER, **({} if resume else {"latest.pt": b"a checkpoint"})})
    before = contents(tmp_path / "run")
    cfg = tiny_config(tmp_path, train={"max_steps": 1, "resume": resume})
    why = "it has no latest.pt to resume from" if resume else "--no-resume was given"
    with pytest.raises(ConfigError, match=f"holds an earlier run .*{why}: pass --overwrite"):
        run_training(cfg)
    assert contents(tmp_path / "run") == before


def test_overwrite_moves_the_earlier_run_aside(tmp_path):
    earlier_run(tmp_path / "run")
    run_training(tiny_config(tmp_path, train={"max_steps": 1, "valid_every": 1, "valid_max_sentences": 2, "overwrite": True}))
    asides = [p for p in tmp_path.iterdir() if re.fullmatch(r"run\.old-\d{8}-\d{6}", p.name)]
    assert len(asides) == 1 and contents(asides[0]) == EARLIER
    assert "moved to" in (tmp_path / "run" / "train.log").read_text()
    assert checkpoint.load(tmp_path / "run" / "best.pt")["counters"]["step"] == 1


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "cannot be read, it is truncated or corrupt"),
    (lambda data: b"", "cannot be read, it is truncated or corrupt"),
    (lambda data: b"\x00" * 64 + data[64:], "cannot be read, it is truncated or corrupt"),
])
def test_a_corrupt_latest_checkpoint_names_the_file_and_the_way_out(tmp_path, damage, message):
    path = tmp_path / "run" / "latest.pt"
    path.parent.mkdir()
    checkpoint.atomic_save({key: {} for key in RUN_STATE_KEYS}, path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} {message}.*best.pt is untouched.*--overwrite"):
        run_training(tiny_config(tmp_path))


def test_a_text_file_as_checkpoint_gets_a_short_reason(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")  # torch's own message here is many lines of pickle advice
    with pytest.raises(CheckpointError, match=r"^checkpoint \S+notes.txt cannot be read, it is truncated or corrupt \(not a zip archive\)$"):
        checkpoint.load(tmp_path / "notes.txt")


def test_a_file_that_is_not_a_run_checkpoint_is_named(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a checkpoint of this trainer .*'config'"):
        checkpoint.load(tmp_path / "other.pt", require=RUN_STATE_KEYS)


@pytest.mark.parametrize("change, message", [
    ({"model": {"d_model": 32, "heads": 4}}, "model.d_model = 64, but this run asks for 32"),
    ({"penalty": {"decoupled": True}}, "penalty.decoupled = False, but this run asks for True"),
    ({"train": {"average_decay": 0.9}}, "cannot switch the weight average on"),
])
def test_resuming_cannot_change_what_the_checkpoint_fixed(tmp_path, change, message):
    saved = tiny_config(tmp_path)
    path = tmp_path / "run" / "latest.pt"
    path.parent.mkdir()
    checkpoint.atomic_save({**{key: {} for key in RUN_STATE_KEYS}, "config": saved.to_dict()}, path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_training(tiny_config(tmp_path, **change))


def test_a_run_dir_below_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="notes.txt is a file, not a directory"):
        run_training(tiny_config(tmp_path, train={"run_dir": str(tmp_path / "notes.txt" / "run")}))


def test_a_torn_metrics_line_is_dropped_when_resuming(tmp_path):
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 3, "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo',
                                            encoding="utf-8")
    RunLog(tmp_path, True).truncate_metrics(step=2)
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == rows[:2]
    assert "dropped 1 unreadable line(s) (line 4)" in (tmp_path / "train.log").read_text()


def test_log_lines_carry_a_timestamp(tmp_path):
    RunLog(tmp_path, True)("valid step 200: BLEU 9.85")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| valid step 200: BLEU 9\.85\n", (tmp_path / "train.log").read_text())
