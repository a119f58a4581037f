"""Runs every row of the "Tried and refused" table in docs/nmt.md: each documented command must stop
with exit status 2 and the documented one-line error, and no traceback."""
import re
import shlex
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt import cli
from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.nmt.config import build_config  # noqa: E402
from l2fast.trainer.rundir import RUN_STATE_KEYS  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "nmt.md"
ROW = re.compile(r"^\| `(l2fast [^`]+)` \|\s*(.*?)\s*\| `(.+)` \|$")


def documented_rows():
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Tried and refused", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `l2fast")]
    unread = [line for line in rows if not ROW.match(line)]
    assert not unread, f"rows of the table this test cannot read: {unread}"
    return [ROW.match(line).groups() for line in rows]


ROWS = documented_rows()


def test_the_table_is_there():
    assert len(ROWS) >= 30


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
    return tmp_path


@pytest.mark.parametrize("command, needs, excerpt", ROWS, ids=[row[0] for row in ROWS])
def test_documented_refusal(command, needs, excerpt, workdir, capsys):
    if needs == "a CPU" and torch.cuda.is_available():
        pytest.skip("the row is about a machine without a GPU")
    before = set(workdir.rglob("*"))
    try:
        status = cli.main(shlex.split(command)[1:])
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines, stderr
    subcommand = command.split()[1]
    assert lines[-1].startswith(f"l2fast {subcommand}: error: ") and excerpt in lines[-1]
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1])  # above it, argparse's usage at most
    created = {str(p.relative_to(workdir)) for p in set(workdir.rglob("*")) - before}
    if "--run-dir new-run" not in command:  # the one row whose refusal comes from reading data
        assert not created, created  # refused before anything was written
