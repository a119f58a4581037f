"""What the train commands of both trainers leave behind when they refuse, fail or are stopped: a
refused resume writes nothing, a resumed run uses the coefficients it is given, Ctrl-C and a failed
allocation are one line each, a run that took no step does not block its own directory, and
schedules that would fail mid-run are refused up front (or named where they fail). The refusals
that are one command and one line are rows of the tables in docs/nmt.md and docs/lm.md."""
import json
import shutil
import signal

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from l2fast.lm import cli as lm_cli  # noqa: E402
from l2fast.lm import train as lm_train  # noqa: E402
from l2fast.lm.config import check_resumable  # noqa: E402
from l2fast.lm.train import run_training  # noqa: E402
from l2fast.nmt.train import run_training as run_nmt_training  # noqa: E402
from l2fast.trainer import checkpoint  # noqa: E402
from l2fast.trainer.config import ConfigError  # noqa: E402
from refusal_table import check_refusal  # noqa: E402
from test_lm_train import STORY, TINY_MODEL, tiny_config, write_text  # noqa: E402
from test_nmt_train import tiny_config as nmt_tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(directory):
    """Every file under directory with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def lm_command(tmp_path, run: str, *extra: str) -> list[str]:
    """`l2fast lm train` of a tiny model on a short text (two updates, a checkpoint after each)."""
    train = write_text(tmp_path, STORY * 2, "train.txt")
    valid = write_text(tmp_path, STORY, "valid.txt")
    model = [arg for name, value in TINY_MODEL.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
    return ["train", "--train", train, "--valid", valid, "--run-dir", str(tmp_path / run), *model, "--batch-size", "4",
            "--max-steps", "2", "--max-minutes", "0", "--valid-every", "1", "--log-every", "1", "--warmup", "1",
            "--precision", "fp32", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished two-step run of the tiny language model, copied by the tests that resume it."""
    root = tmp_path_factory.mktemp("trained")
    run_training(tiny_config(root, "run", train={"max_steps": 2, "valid_every": 1}))
    return root / "run"


def main_after_ctrl_c(command: list[str]) -> int:
    """The exit status of `l2fast lm` where the command meets Ctrl-C; a KeyboardInterrupt that escapes
    it (which would print a traceback) fails the test instead of stopping the test session."""
    try:
        return lm_cli.main(command)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command: a traceback, not one line")


def copy_of(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


# ---- 11: a resumed run cannot change what its optimizer state depends on, and writes nothing --

@pytest.mark.parametrize("change, option", [
    ({"penalty_schedule": '{"type": "Alternating", "every": 2}'}, "penalty.penalty_schedule = ''"),
    ({"decay_norms_and_biases": True}, "penalty.decay_norms_and_biases = False"),
    ({"decay_embeddings": False}, "penalty.decay_embeddings = True"),
])
def test_a_refused_resume_names_the_option_and_writes_nothing(trained_run, tmp_path, change, option):
    """Before: the schedule's or the optimizer groups' state failed to load with a traceback, after
    config.json had been rewritten with the configuration that never ran."""
    run = copy_of(trained_run, tmp_path)
    before = snapshot(run)
    with pytest.raises(ConfigError, match=f"trained with {option}, but this run asks for .* which a resumed run cannot change"):
        run_training(tiny_config(tmp_path, "run", train={"max_steps": 4, "valid_every": 1}, penalty=change))
    assert snapshot(run) == before


def test_a_schedule_written_differently_is_the_same_schedule(tmp_path):
    saved = tiny_config(tmp_path, penalty={"penalty_schedule": '{"type": "Alternating", "every": 2}'}).to_dict()
    spaced = tiny_config(tmp_path, penalty={"penalty_schedule": '{ "every":2,  "type":"Alternating" }'})
    check_resumable(saved, spaced, tmp_path / "latest.pt")  # no refusal
    with pytest.raises(ConfigError, match="penalty.penalty_schedule"):
        check_resumable(saved, tiny_config(tmp_path, penalty={"penalty_schedule": '{"type": "Alternating", "every": 3}'}),
                        tmp_path / "latest.pt")


def test_a_resumed_run_applies_the_coefficients_it_is_given(trained_run, tmp_path):
    """Before: torch's load_state_dict brought back the checkpoint's l2 and eps, while config.json
    recorded the new ones."""
    run = copy_of(trained_run, tmp_path)
    cfg = tiny_config(tmp_path, "run", train={"max_steps": 3, "valid_every": 1, "adam_eps": 1e-6}, penalty={"l2": 0.3})
    run_training(cfg)
    groups = checkpoint.load(run / checkpoint.LATEST)["optimizer"]["param_groups"]
    assert sorted(g["l2"] for g in groups) == [0.0, 0.3] and {g["eps"] for g in groups} == {1e-6}
    assert json.loads((run / "config.json").read_text())["penalty"]["l2"] == 0.3


# ---- 12: schedules that fail mid-run are refused up front, or named where they fail -----------

def nested_products(depth: int) -> str:
    spec = '{"type": "Constant"}'
    for _ in range(depth - 1):
        spec = '{"type": "Product", "args": [' + spec + ']}'
    return spec


@pytest.mark.parametrize("depth, excerpt", [
    (500, "penalty.penalty_schedule nests schedules more than 32 levels deep"),
    (40, "penalty.penalty_schedule nests schedules more than 32 levels deep"),
])
def test_a_deeply_nested_schedule_is_one_line(tmp_path, monkeypatch, capsys, depth, excerpt):
    """Before: RecursionError (500 levels overflow the JSON parser; 40 levels parse, then the nest is built)."""
    monkeypatch.chdir(tmp_path)
    command = f"l2fast lm train --max-steps 1 --penalty-schedule '{nested_products(depth)}'"
    check_refusal(lm_cli.main, "l2fast lm", command, excerpt, tmp_path, capsys)


def test_a_schedule_counted_in_epochs_that_leaves_float_range_is_named_where_it_fails(tmp_path):
    """The run's steps are checked up front, its epochs cannot be (their length depends on the data): a
    Step counted in epochs with gamma = 1e300 overflows at epoch 2, which the trainer reports as a
    configuration error, not as the OverflowError of a float power."""
    schedule = '{"type": "Step", "every": 1, "gamma": 1e300, "unit": "epoch"}'
    cfg = tiny_config(tmp_path, train={"max_steps": 40, "valid_every": 40},
                      penalty={"l2": 0.0, "penalty_schedule": schedule})  # l2 = 0: the loss stays finite, only the schedule fails
    with pytest.raises(ConfigError, match=r"penalty.penalty_schedule fails at step \d+ \(epoch 2\): .*gamma \*\* 2"):
        run_training(cfg)


# ---- 13: Ctrl-C is one line that says where the run can be resumed from ----------------------

@pytest.fixture
def sigint_raises_keyboard_interrupt():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_says_where_to_resume_and_the_same_command_resumes(tmp_path, monkeypatch, capsys,
                                                                  sigint_raises_keyboard_interrupt):
    """A real SIGINT after the update of step 2 (checkpointed at steps 1 and 2): before, a full
    KeyboardInterrupt traceback."""
    update = lm_train.Trainer.update

    def update_then_ctrl_c(self, batches):
        result = update(self, batches)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(lm_train.Trainer, "update", update_then_ctrl_c)
    command = lm_command(tmp_path, "run", "--max-steps", "4", "--valid-every", "2")
    assert main_after_ctrl_c(command) == 130
    err = capsys.readouterr().err
    latest = tmp_path / "run" / checkpoint.LATEST
    assert "Traceback" not in err
    assert err.strip() == (f"l2fast lm train: interrupted at step 3; {latest} (step 2) is intact: run the same command "
                           "again to resume from it")
    assert checkpoint.load(latest)["counters"]["step"] == 2
    monkeypatch.setattr(lm_train.Trainer, "update", update)
    assert lm_cli.main(command) == 0
    assert f"resumed from {latest} at step 2" in (tmp_path / "run" / "train.log").read_text()


def test_ctrl_c_before_the_first_step_leaves_no_run_behind(tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(lm_train, "check_trainable", interrupted)  # while the data is being prepared
    assert main_after_ctrl_c(lm_command(tmp_path, "run")) == 130
    err = capsys.readouterr().err
    assert err.strip() == (f"l2fast lm train: interrupted before the first step; the run took no step, so nothing of it "
                           f"was kept in {tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()


# ---- 14: a run that never took a step does not block its own directory ------------------------

@pytest.mark.parametrize("existed", [False, True])
def test_a_model_too_large_to_allocate_is_one_line_and_leaves_the_directory_as_it_was(tmp_path, capsys, existed):
    """A feed-forward layer of 2**62 bytes, beyond any machine's address space, so the allocation fails
    at once whatever the kernel's overcommit policy. Before: a RuntimeError traceback, and config.json,
    train.log and (with a tokenizer) the tokenizer left behind, so that the corrected command was refused
    as "holds an earlier run"."""
    if existed:
        (tmp_path / "run").mkdir()
    command = lm_command(tmp_path, "run", "--tokenizer", "spm", "--vocab-size", "300")
    assert lm_cli.main([*command, "--ff-dim", str(2**55)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("l2fast lm train: error: out of memory before the first step (DefaultCPUAllocator: ")
    assert err.endswith("make the model or the batch smaller (model.d_model, model.ff_dim, model.layers, model.context, "
                        f"train.batch_size); the run took no step, so nothing of it was kept in {tmp_path / 'run'}")
    if existed:
        assert list((tmp_path / "run").iterdir()) == []  # a directory that was there stays, empty as it was
    else:
        assert not (tmp_path / "run").exists()
    assert lm_cli.main(command) == 0  # the corrected command uses the directory
    assert (tmp_path / "run" / checkpoint.LATEST).exists()


def test_the_translation_trainer_leaves_no_tokenizer_behind_either(tmp_path):
    """The same session code runs `l2fast train`: its tokenizer (trained before the model is built) and
    log go too, so the corrected command is not refused as "holds an earlier run"."""
    cfg = nmt_tiny_config(tmp_path, model={"ff_dim": 2**54}, train={"max_steps": 1})  # 2**62 bytes, as above
    with pytest.raises(ConfigError, match=r"^out of memory before the first step \(DefaultCPUAllocator: .*\): make the model or the batch "
                                          r"smaller \(model.d_model, model.ff_dim, model.encoder_layers, "
                                          r"model.decoder_layers, train.max_tokens\); the run took no step"):
        run_nmt_training(cfg)
    assert not (tmp_path / "run").exists()


def test_a_failure_after_the_first_step_keeps_the_run(tmp_path, monkeypatch):
    """Only a run that took no step is removed: one that failed later keeps its checkpoint and log."""
    def fails(self, test):
        raise RuntimeError("a failure after training")

    monkeypatch.setattr(lm_train.Trainer, "finish", fails)
    with pytest.raises(RuntimeError, match="a failure after training"):
        run_training(tiny_config(tmp_path, train={"max_steps": 2, "valid_every": 1}))
    run = tmp_path / "run"
    assert checkpoint.load(run / checkpoint.LATEST)["counters"]["step"] == 2
    assert (run / "config.json").exists() and (run / "train.log").exists()
