"""Precision choice: "auto" measures bf16 against float32 on CPUs with native bf16, and the probe
leaves the run it precedes unchanged."""
import pytest
import torch

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt import train
from l2fast.trainer import loop, precision  # noqa: E402
from l2fast.nmt.config import ConfigError  # noqa: E402
from test_nmt_train import losses, tiny_config  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("fp32, bf16, expected", [(2.0, 0.5, torch.bfloat16), (0.5, 2.0, None), (2.0, 1.95, None)])
def test_faster_dtype_needs_a_clear_margin(fp32, bf16, expected, monkeypatch):
    clock = [0.0]  # a step of each dtype advances this fake clock by its cost
    monkeypatch.setattr(precision.time, "perf_counter", lambda: clock[0])

    def step(dtype):
        clock[0] += bf16 if dtype == torch.bfloat16 else fp32

    dtype, seconds = precision.faster_cpu_dtype(step, repeats=2)
    assert dtype == expected
    assert seconds == pytest.approx({"fp32": fp32, "bf16": bf16})


def test_auto_on_cpu_probes_only_with_native_bf16(monkeypatch):
    calls = []

    def probe():
        calls.append(1)
        return torch.bfloat16

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    assert precision.autocast_dtype("auto", CPU, probe) is None and not calls
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    assert precision.autocast_dtype("auto", CPU, probe) == torch.bfloat16 and calls == [1]
    assert precision.autocast_dtype("auto", CPU) is None  # no probe given: float32
    assert precision.autocast_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16' needs a GPU"):
        precision.autocast_dtype("fp16", CPU)


def test_probe_runs_real_steps_and_leaves_the_run_unchanged(tmp_path, monkeypatch):
    """With native bf16 pretended, "auto" times real training steps; the probe's choice is pinned to
    float32 here so that its losses must equal those of a plain float32 run, bit for bit."""
    timed = []

    def measured_but_fp32(step, **kwargs):
        timed.append(precision.faster_cpu_dtype(step, repeats=1)[1])
        return None, timed[-1]

    settings = dict(model={"dropout": 0.3}, train={"max_steps": 3, "valid_every": 3, "valid_max_sentences": 4})
    train.run_training(tiny_config(tmp_path, "fp32", train={**settings["train"], "precision": "fp32"}, model=settings["model"]))
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(loop, "faster_cpu_dtype", measured_but_fp32)
    train.run_training(tiny_config(tmp_path, "auto", model=settings["model"], train={**settings["train"], "precision": "auto"}))
    assert len(timed) == 1 and timed[0]["fp32"] > 0 and timed[0]["bf16"] > 0
    assert "precision auto: this CPU has native bf16" in (tmp_path / "auto" / "train.log").read_text()
    assert losses(tmp_path / "auto") == losses(tmp_path / "fp32")
