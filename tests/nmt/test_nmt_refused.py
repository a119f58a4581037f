"""Runs every row of the "Tried and refused" table in docs/nmt.md: each documented command must stop
with exit status 2 and the documented one-line error, and no traceback."""
import json

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt import cli  # noqa: E402
from l2fast.lm.config import build_config as build_language_model_config  # noqa: E402
from l2fast.nmt.config import build_config  # noqa: E402
from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.trainer.rundir import RUN_STATE_KEYS  # noqa: E402
from refusal_table import check_row, documented_rows, uncovered_commands  # noqa: E402

ROWS = documented_rows("nmt.md")


def test_the_table_covers_every_command():
    assert uncovered_commands(cli.build_parser(), ROWS, "l2fast") == set()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The files the table's commands name, in the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "corpus.tsv").mkdir()
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad-section.json").write_text('{"model": [64]}')
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "old-run").mkdir()
    for name in ("best.pt", "metrics.jsonl", "train.log"):
        (tmp_path / "old-run" / name).write_text("earlier work\n")
    state = {**{key: {} for key in RUN_STATE_KEYS}, "config": build_config({}).to_dict()}
    for run in ("resumable-run", "broken-run"):
        (tmp_path / run).mkdir()
        checkpoint.atomic_save(state, tmp_path / run / "latest.pt")
    torn = tmp_path / "broken-run" / "latest.pt"
    torn.write_bytes(torn.read_bytes()[:100])
    # The language-model trainer's files, which this trainer must refuse by naming that trainer's commands.
    lm_config = build_language_model_config({}).to_dict()
    checkpoint.atomic_save({**state, "config": lm_config}, tmp_path / "lm.pt")
    (tmp_path / "lm-run").mkdir()
    checkpoint.atomic_save({**state, "config": lm_config}, tmp_path / "lm-run" / "latest.pt")
    (tmp_path / "lm-config.json").write_text(json.dumps(lm_config))
    return tmp_path


@pytest.mark.parametrize("command, needs, excerpt", ROWS, ids=[row[0] for row in ROWS])
def test_documented_refusal(command, needs, excerpt, workdir, capsys):
    check_row(cli.main, "l2fast", command, needs, excerpt, workdir, capsys)
