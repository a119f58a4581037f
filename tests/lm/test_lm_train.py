"""Language-model training end to end on tiny models: a short text is learned to near-zero loss, a
resumed run continues exactly, the penalty follows the shared recipe, and the CLI's train,
generate and evaluate work together."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from l2fast.lm import cli  # noqa: E402
from l2fast.lm.config import build_config  # noqa: E402
from l2fast.lm.data import Documents, collate_blocks, token_stream  # noqa: E402
from l2fast.lm.generate import Sampling, generate  # noqa: E402
from l2fast.lm.model import DecoderLM  # noqa: E402
from l2fast.lm.tokenizer import ByteTokenizer  # noqa: E402
from l2fast.lm.train import run_training  # noqa: E402
from l2fast.trainer.config import ConfigError  # noqa: E402
from l2fast.trainer.recipe import build_optimizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
STORY = ["the cat sat on the mat and looked at the moon.", "a dog ran to the river, drank, and ran back home."]
TINY_MODEL = {"d_model": 32, "heads": 2, "layers": 2, "ff_dim": 64, "context": 16}


def write_text(directory: Path, lines: list[str], name: str) -> str:
    path = directory / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def tiny_config(tmp_path: Path, run: str = "run", **sections):
    data = {"train": write_text(tmp_path, STORY * 2, "train.txt"), "valid": write_text(tmp_path, STORY, "valid.txt"),
            **sections.pop("data", {})}
    train = {"batch_size": 4, "max_steps": 6, "max_minutes": 0, "log_every": 1, "valid_every": 3, "threads": 1,
             "precision": "fp32", "run_dir": str(tmp_path / run), "warmup": 2, **sections.pop("train", {})}
    return build_config({"data": data, "model": {**TINY_MODEL, **sections.pop("model", {})}, "train": train,
                         "penalty": sections.pop("penalty", {})})


def test_a_tiny_model_learns_a_short_text_by_heart():
    """The shared recipe (Adam in l2fast.Penalized) drives a tiny model to near-zero loss on two
    sentences, and greedy generation then recites them."""
    torch.manual_seed(0)
    cfg = build_config({"model": {"d_model": 64, "heads": 4, "layers": 2, "ff_dim": 128, "context": 48},
                        "train": {"lr": 3e-3, "warmup": 10, "max_steps": 150, "lr_schedule": "constant"},
                        "penalty": {"l2": 0.0}})
    tokenizer = ByteTokenizer()
    stream = token_stream(tokenizer, Documents("story", STORY))
    model = DecoderLM(cfg.model, tokenizer.vocab_size)
    optimizer = build_optimizer(model, cfg)
    inputs, targets = collate_blocks(stream, list(range(len(stream) // 48)), 48)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    prompts = ["the cat sat", "a dog ran"]
    new = generate(model, tokenizer.encode(prompts), 40, tokenizer.eod, Sampling(temperature=0.0), 0, torch.device("cpu"))
    recited = [prompt + text for prompt, text in zip(prompts, tokenizer.decode(new))]
    assert recited[0] == STORY[0][:len(recited[0])] and len(recited[0]) >= 40
    assert recited[1] == STORY[1][:len(recited[1])] and len(recited[1]) >= 40


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_gives_the_same_next_steps(tmp_path):
    """Three steps, stop, resume to six: the same losses, penalties and weights as six steps in one go,
    with dropout on (RNG restored) and epochs rolling over (data position restored)."""
    common = {"lr_schedule": "constant", "max_steps": 6}
    model = {"dropout": 0.2}
    penalty = {"l2": 0.01, "penalty_schedule": '{"type": "Alternating", "every": 2}'}
    run_training(tiny_config(tmp_path, "straight", train=common, model=model, penalty=penalty))
    run_training(tiny_config(tmp_path, "resumed", train={**common, "max_steps": 3}, model=model, penalty=penalty))
    run_training(tiny_config(tmp_path, "resumed", train=common, model=model, penalty=penalty))
    rows = lambda run: [(r["step"], r["loss"], r["penalty"]) for r in metrics(tmp_path / run) if "loss" in r]  # noqa: E731
    straight, resumed = rows("straight"), rows("resumed")
    assert [r[0] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert straight == resumed
    a = torch.load(tmp_path / "straight" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "latest.pt", weights_only=True)
    assert a["counters"]["epoch"] >= 1  # the data ran out at least once
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "resumed from" in (tmp_path / "resumed" / "train.log").read_text()


def test_a_run_writes_its_directory_and_refuses_to_reuse_it(tmp_path):
    results = run_training(tiny_config(tmp_path))
    run = tmp_path / "run"
    for name in ("latest.pt", "best.pt", "metrics.jsonl", "metrics.png", "train.log", "config.json", "results.json"):
        assert (run / name).exists(), name
    assert set(results) >= {"valid_loss", "valid_ppl", "valid_bpb"}
    log = (run / "train.log").read_text()
    assert "sample (temperature 0.8, top-k 40)" in log and "bits/byte" in log
    valid = [r for r in metrics(run) if "valid_bpb" in r]
    assert [r["step"] for r in valid] == [3, 6]

    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="holds an earlier run .* --no-resume was given: pass --overwrite"):
        run_training(tiny_config(tmp_path, train={"resume": False}))
    with pytest.raises(ConfigError, match="trained with model.d_model = 32, but this run asks for 64"):
        run_training(tiny_config(tmp_path, model={"d_model": 64}))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched


def test_the_penalty_exempts_what_the_options_say(tmp_path):
    """Every matrix is decayed, biases and norm weights are not; the embeddings (the token table, which
    is also the output layer, and a learned position table) as --decay-embeddings says."""
    model = DecoderLM(tiny_config(tmp_path, model={"positions": "learned"}).model, 257)
    def decayed(**penalty):
        groups = build_optimizer(model, tiny_config(tmp_path, penalty=penalty)).param_groups
        return {names[id(p)] for g in groups if g["l2"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2}
    assert decayed() == matrices and {"embed.weight", "positions.weight", "blocks.0.attn.qkv.weight"} <= matrices
    assert decayed(decay_embeddings=False) == matrices - {"embed.weight", "positions.weight"}
    assert decayed(decay_norms_and_biases=True) == set(names.values())


def test_cli_train_generate_evaluate(tmp_path, capsys):
    train = write_text(tmp_path, STORY * 4, "train.txt")
    valid = write_text(tmp_path, STORY, "valid.txt")
    run = tmp_path / "run"
    assert cli.main(["train", "--train", train, "--valid", valid, "--test", valid, "--run-dir", str(run), "--max-steps", "4",
                     "--valid-every", "2", "--batch-size", "2", "--d-model", "32", "--heads", "2", "--layers", "1",
                     "--ff-dim", "32", "--context", "16", "--precision", "fp32", "--threads", "1",
                     "--tokenizer", "spm", "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("test loss ") and "bits/byte" in out
    assert (run / "tokenizer.model").exists()

    assert cli.main(["generate", "--checkpoint", str(run / "best.pt"), "--prompt", "the cat", "--prompt", "a dog",
                     "--greedy", "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("the cat") and lines[1].startswith("a dog")

    scores = tmp_path / "scores.json"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best.pt"), "--text", valid, "--json", str(scores)]) == 0
    assert "bits/byte" in capsys.readouterr().out
    result = json.loads(scores.read_text())
    final = json.loads((run / "results.json").read_text())
    assert result["text_bpb"] == pytest.approx(final["test_bpb"], rel=1e-6)  # the same text, the same weights


@pytest.mark.slow
def test_python_dash_m_routes_lm(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "l2fast", "lm", "train", "--print-config", "--context", "64"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"]["context"] == 64
    proc = subprocess.run([sys.executable, "-m", "l2fast", "lm", "generate", "--checkpoint", str(tmp_path / "none.pt")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip() == f"l2fast lm generate: error: checkpoint {tmp_path / 'none.pt'} does not exist"


@pytest.mark.slow
def test_two_processes_score_their_share_and_report_once(tmp_path):
    """Under torchrun the final scores are shared out between the processes and summed; they are the
    whole text's (as one process scores the saved model) and printed by the main process only."""
    train = write_text(tmp_path, STORY * 4, "train.txt")
    valid = write_text(tmp_path, STORY, "valid.txt")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "l2fast", "lm",
         "train", "--train", train, "--valid", valid, "--test", valid, "--run-dir", str(run), "--max-steps", "2",
         "--valid-every", "2", "--batch-size", "2", "--d-model", "32", "--heads", "2", "--layers", "1", "--ff-dim", "32",
         "--context", "16", "--precision", "fp32"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("test loss ")]) == 1
    scores = tmp_path / "scores.json"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best.pt"), "--text", valid, "--json", str(scores)]) == 0
    final = json.loads((run / "results.json").read_text())
    assert json.loads(scores.read_text())["text_loss"] == pytest.approx(final["test_loss"], rel=1e-9)
