"""The framework examples run as a user runs them, and print the penalty beside the loss."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# A logged record: the loss and the penalty, as each example prints them.
RECORD = re.compile(r"""loss'?:? '?(?P<loss>[0-9.]+).*penalty'?:? '?(?P<penalty>[0-9.]+)""")


@pytest.mark.parametrize("script, framework", [("hf_trainer.py", "transformers"),
                                               ("accelerate_loop.py", "accelerate"),
                                               ("lightning_module.py", "lightning")])
def test_example_trains_and_logs_the_penalty_beside_the_loss(script, framework):
    pytest.importorskip(framework)
    run = subprocess.run([sys.executable, script, "--steps", "20"], cwd=EXAMPLES, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [m for m in map(RECORD.search, run.stdout.splitlines()) if m]
    assert len(records) == 2, run.stdout
    losses = [float(m["loss"]) for m in records]
    assert losses[1] < losses[0] < 6.0  # learning (uniform over bytes: ln 256 = 5.5)
    assert all(float(m["penalty"]) > 0 for m in records)
