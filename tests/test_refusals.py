"""docs/refusals.md is kept in step with the code: every row's call is run here and must raise the
documented error (type and first line of the message, word for word)."""
import pathlib
import re

import pytest
import torch

import l2fast

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "refusals.md"
ROW = re.compile(r"^\| (?P<what>[^|]+) \| `(?P<call>.+)` \| `(?P<error>\w+): (?P<message>.+)` \|$")


def rows():
    found = [m.groupdict() for m in map(ROW.match, DOC.read_text().splitlines()) if m]
    assert len(found) >= 30, "docs/refusals.md: rows not found (table format changed?)"
    return found


def namespace() -> dict:
    """What the calls in the table may use (fresh for each row)."""
    model = torch.nn.Linear(2, 2)
    return {
        "torch": torch,
        "l2fast": l2fast,
        "ops": torch.ops.l2fast,
        "w": torch.randn(4),
        "g": torch.randn(4),
        "meta": torch.ones(4, device="meta"),
        "model": model,
        "sgd": lambda **kwargs: torch.optim.SGD(model.parameters(), lr=0.1, **kwargs),
    }


@pytest.mark.parametrize("row", rows(), ids=lambda row: row["what"])
def test_documented_refusal(row):
    with pytest.raises(Exception) as caught:
        eval(row["call"], namespace())
    assert type(caught.value).__name__ == row["error"]
    assert first_line(caught.value) == row["message"]


def first_line(error: Exception) -> str:
    """The message's first line, with object addresses (which change from run to run) as 0x..."""
    return re.sub(r"0x[0-9a-f]+", "0x...", str(error).splitlines()[0])
