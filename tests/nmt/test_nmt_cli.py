"""The l2fast command, run as a user runs it: train a few steps, translate, evaluate, bad input."""
import json
import re
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from l2fast.nmt.config import section_fields  # noqa: E402
from l2fast.nmt.demo_corpus import generate  # noqa: E402


def l2fast(*args, stdin=None, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "l2fast", *args], input=stdin, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"l2fast {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of a few steps on a small TSV corpus, trained through the command line."""
    directory = tmp_path_factory.mktemp("cli")
    pairs = generate(60, seed=3)
    (directory / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs[:50]), encoding="utf-8")
    (directory / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs[50:]), encoding="utf-8")
    config = {"model": {"d_model": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 64}}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    run_dir = directory / "run"
    proc = l2fast("train", "--config", str(directory / "config.json"), "--train", str(directory / "train.tsv"),
                  "--valid", str(directory / "test.tsv"), "--test", str(directory / "test.tsv"), "--vocab-size", "100",
                  "--max-steps", "4", "--valid-every", "2", "--log-every", "2", "--beam", "2", "--l2", "1e-4",
                  "--run-dir", str(run_dir), "--threads", "1")
    return directory, run_dir, proc


@pytest.mark.slow
def test_train_prints_test_bleu_and_writes_the_run_directory(trained):
    _, run_dir, proc = trained
    assert "test BLEU" in proc.stdout and "nrefs:1|case:mixed" in proc.stdout
    log = (run_dir / "train.log").read_text()
    assert "tok/s" in log and "valid step 4" in log
    assert "optimizer step: one pass (penalty, clipping and update fused), gradient norm clipped to 1.0" in log
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["train"]["max_steps"] == 4  # file and flags both applied
    assert json.loads((run_dir / "results.json").read_text())["step"] == 4
    assert (run_dir / "metrics.png").stat().st_size > 0


@pytest.mark.slow
def test_translate_from_stdin_and_file(trained):
    directory, run_dir, _ = trained
    lines = [s for s, _ in generate(60, seed=3)[50:53]]
    out = l2fast("translate", "--checkpoint", str(run_dir / "best.pt"), "--beam", "1", stdin="\n".join(lines) + "\n")
    assert len(out.stdout.splitlines()) == 3
    (directory / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    l2fast("translate", "--checkpoint", str(run_dir / "best.pt"), "--beam", "1", "--input", str(directory / "in.txt"),
           "--output", str(directory / "out.txt"))
    assert (directory / "out.txt").read_text().splitlines() == out.stdout.splitlines()


@pytest.mark.slow
def test_evaluate_matches_sacrebleu_on_its_own_output(trained):
    import sacrebleu

    directory, run_dir, _ = trained
    proc = l2fast("evaluate", "--checkpoint", str(run_dir / "latest.pt"), "--test", str(directory / "test.tsv"),
                  "--hyp", str(directory / "hyp.txt"), "--json", str(directory / "scores.json"))
    assert "BLEU signature: nrefs:1" in proc.stdout
    hyps = (directory / "hyp.txt").read_text(encoding="utf-8").splitlines()
    refs = [line.split("\t")[1] for line in (directory / "test.tsv").read_text(encoding="utf-8").splitlines()]
    scores = json.loads((directory / "scores.json").read_text())
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)


@pytest.mark.slow
def test_help_documents_every_option():
    text = l2fast("train", "--help").stdout
    for _, f in section_fields():
        assert "--" + f.name.replace("_", "-") in text, f.name
    for command in ("translate", "evaluate", "bench", "ablation"):
        assert "usage: l2fast " + command in l2fast(command, "--help").stdout


@pytest.mark.slow
def test_bad_data_is_a_clear_error(tmp_path):
    (tmp_path / "bad.src").write_text("one\ntwo\n")
    (tmp_path / "bad.tgt").write_text("eins\n")
    proc = l2fast("train", "--train", str(tmp_path / "bad"), "--valid", str(tmp_path / "bad"),
                  "--run-dir", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert "bad.src has 2 lines but" in proc.stderr and "Traceback" not in proc.stderr
    proc = l2fast("train", "--heads", "3", check=False)
    assert proc.returncode == 2 and "divisible by model.heads" in proc.stderr


@pytest.mark.slow
def test_translate_splits_lines_on_newline_only(trained):
    _, run_dir, _ = trained
    lines = ["a\x0cb", "c\x85d", "e\u2028f", "g\u2029h", "i\x1cj", "plain"]
    out = l2fast("translate", "--checkpoint", str(run_dir / "best.pt"), "--beam", "1", stdin="\n".join(lines) + "\n")
    assert out.stdout.count("\n") == len(lines)


@pytest.mark.slow
def test_translate_streams_each_line_as_it_arrives(trained):
    """The first translation comes out while stdin is still open: no waiting for the end of input."""
    _, run_dir, _ = trained
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "l2fast", "translate", "--checkpoint", str(run_dir / "best.pt"),
                             "--beam", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(b"the first line\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 120)  # stdin stays open meanwhile
        assert ready, "no translation while the input was still open"
        first = proc.stdout.readline()
        assert first.endswith(b"\n") and proc.poll() is None
        proc.stdin.write(b"the second line\n")
        proc.stdin.close()
        assert len(proc.stdout.read().splitlines()) == 1
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_invalid_utf8_on_stdin_is_an_error_naming_the_line(trained):
    _, run_dir, _ = trained
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "l2fast", "translate", "--checkpoint", str(run_dir / "best.pt")],
                          input=b"fine\nbad \xff byte\n", capture_output=True, env=env)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2 and "stdin:2: invalid UTF-8 at byte 4" in stderr and "Traceback" not in stderr


def test_every_config_the_help_texts_name_exists():
    from l2fast.lm import cli as lm_cli
    from l2fast.nmt import cli as nmt_cli

    root = Path(__file__).resolve().parents[2]
    named = re.findall(r"configs/[\w.-]+\.json", lm_cli.DESCRIPTION + nmt_cli.DESCRIPTION)
    assert len(named) >= 3
    assert [name for name in named if not (root / name).is_file()] == []
