"""Runs every row of the "Tried and refused" table in docs/lm.md: each documented command must stop
with exit status 2 and the documented one-line error, and no traceback."""
import json

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("tqdm")

from l2fast.lm import cli  # noqa: E402
from l2fast.lm.config import build_config  # noqa: E402
from l2fast.nmt.config import build_config as build_translation_config  # noqa: E402
from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.trainer.rundir import RUN_STATE_KEYS  # noqa: E402
from refusal_table import check_row, documented_rows, uncovered_commands  # noqa: E402

ROWS = documented_rows("lm.md")


def test_the_table_covers_every_command():
    assert uncovered_commands(cli.build_parser(), ROWS, "l2fast lm") == set()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The files the table's commands name, in the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "tiny.txt").write_text("hello world\n")
    (tmp_path / "bad-utf8.txt").write_bytes(b"good\nbad \xff byte\n")
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    empty_state = {key: {} for key in RUN_STATE_KEYS}
    translation_config = build_translation_config({}).to_dict()
    checkpoint.atomic_save({**empty_state, "config": translation_config}, tmp_path / "translation.pt")
    (tmp_path / "translation-run").mkdir()
    checkpoint.atomic_save({**empty_state, "config": translation_config}, tmp_path / "translation-run" / "latest.pt")
    (tmp_path / "translation-config.json").write_text(json.dumps(translation_config))
    (tmp_path / "lm-run").mkdir()
    checkpoint.atomic_save({**empty_state, "config": build_config({}).to_dict()}, tmp_path / "lm-run" / "latest.pt")
    return tmp_path


@pytest.mark.parametrize("command, needs, excerpt", ROWS, ids=[row[0] for row in ROWS])
def test_documented_refusal(command, needs, excerpt, workdir, capsys):
    check_row(cli.main, "l2fast lm", command, needs, excerpt, workdir, capsys)
