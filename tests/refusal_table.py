"""Machinery for the "Tried and refused" tables of docs/*.md: read a table's rows, and run one row's
command expecting exit status 2, the documented one-line error and no traceback."""
import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROW = re.compile(r"^\| `(l2fast [^`]+)` \|\s*(.*?)\s*\| `(.+)` \|$")


def documented_rows(doc: str) -> list[tuple[str, str, str]]:
    """(command, needs, error excerpt) of every row of the "Tried and refused" section of docs/<doc>."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    section = text.split("## Tried and refused", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `l2fast")]
    unread = [line for line in rows if not ROW.match(line)]
    assert not unread, f"rows of the table this test cannot read: {unread}"
    return [ROW.match(line).groups() for line in rows]


def uncovered_commands(parser: argparse.ArgumentParser, rows, prog: str) -> set[str]:
    """The CLI's commands no row runs, and the commands rows run that the CLI does not have."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    documented = {shlex.split(command)[len(prog.split())] for command, _, _ in rows}
    return set(commands) ^ documented


def check_refusal(main, prog: str, command: str, excerpt: str, workdir: Path, capsys, may_write: bool = False) -> None:
    """Runs command (which starts with prog, e.g. "l2fast lm") through main and checks the refusal."""
    assert command.startswith(prog + " "), command
    before = set(workdir.rglob("*"))
    args = shlex.split(command)[len(prog.split()):]
    try:
        status = main(args)
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines, stderr
    assert lines[-1].startswith(f"{prog} {args[0]}: error: ") and excerpt in lines[-1], lines[-1]
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1])  # above it, argparse's usage at most
    created = {str(p.relative_to(workdir)) for p in set(workdir.rglob("*")) - before}
    if not may_write:
        assert not created, created  # refused before anything was written


def check_row(main, prog: str, command: str, needs: str, excerpt: str, workdir: Path, capsys) -> None:
    """One row of a table: skipped where it needs a machine without a GPU and this one has one; a row whose
    refusal comes from reading data (it names --run-dir new-run) may write the run directory first."""
    if needs == "a CPU" and torch.cuda.is_available():
        pytest.skip("the row is about a machine without a GPU")
    check_refusal(main, prog, command, excerpt, workdir, capsys, may_write="--run-dir new-run" in command)
