"""docs/refusals.md is kept in step with the code: every row's call is run here and must raise the
documented error (type and first line of the message, word for word)."""
import pathlib
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import l2fast

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "refusals.md"
ROW = re.compile(r"^\| (?P<what>[^|]+) \| `(?P<call>.+)` \| `(?P<error>\w+): (?P<message>.+)` \|$")


def rows(section: str = "") -> list:
    """The rows of every table, or of the one under the heading `section`."""
    found, heading = [], ""
    for line in DOC.read_text().splitlines():
        heading = line[3:] if line.startswith("## ") else heading
        match = ROW.match(line)
        if match and section in ("", heading):
            found.append(match.groupdict())
    assert found, f"docs/refusals.md: no rows found under {section!r} (table format changed?)"
    return found


def namespace(mode=None) -> dict:
    """What the calls in the table may use (fresh for each row); w and g fake under a FakeTensorMode."""
    model = torch.nn.Linear(2, 2)
    fake = mode.from_tensor if mode is not None else lambda t: t
    return {
        "torch": torch,
        "l2fast": l2fast,
        "ops": torch.ops.l2fast,
        "w": fake(torch.randn(4)),
        "g": fake(torch.randn(4)),
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


@pytest.mark.parametrize("row", rows("Ops"), ids=lambda row: row["what"])
def test_documented_refusal_of_a_fake_call(row):
    """The ops' fake kernels (torch.compile's; their meta kernels too) refuse alike, tensors on two devices
    included."""
    with FakeTensorMode() as mode:
        with pytest.raises(Exception) as caught:
            eval(row["call"], namespace(mode))
    assert type(caught.value).__name__ == row["error"]
    assert first_line(caught.value) == row["message"]


def first_line(error: Exception) -> str:
    """The message's first line, with object addresses (which change from run to run) as 0x..."""
    return re.sub(r"0x[0-9a-f]+", "0x...", str(error).splitlines()[0])
