"""scripts/domain_adaptation.py end to end on a tiny labelled corpus (no download): the documents are
dealt into the domains by their source, the pre-training and the fine-tuning runs are made once, and
the table, the JSON and the plot are written. The second test fine-tunes with L2-SP and EWC, which
needs the anchored l2fast.Penalized."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from test_lm_train import STORY  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "domain_adaptation.py"
spec = importlib.util.spec_from_file_location("domain_adaptation", SCRIPT)
domain_adaptation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(domain_adaptation)

CODE = ["def add(x, y): return x + y", "for item in items: print(item)"]
TINY = {"model": {"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 16, "context": 16},
        "train": {"batch_size": 2, "log_every": 1, "valid_max_tokens": 256}}


def labelled_corpus(directory: Path) -> None:
    """Every split: documents of both domains interleaved, each with the package it came from."""
    for split, copies in (("train", 4), ("valid", 1), ("test", 1)):
        docs = [("debian-handbook", STORY[0]), ("python3.11-doc", CODE[0]), ("debian-reference-en", STORY[1]),
                ("python3.11-doc", CODE[1])] * copies
        (directory / f"{split}.txt").write_text("".join(f"{doc}\n\n" for _, doc in docs), encoding="utf-8")
        (directory / f"{split}.sources").write_text("".join(f"{source}\n" for source, _ in docs), encoding="utf-8")


def run(tmp_path: Path, *only: str) -> dict:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    labelled_corpus(corpus)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    domain_adaptation.main(["--root", str(tmp_path / "root"), "--corpus", str(corpus), "--config", str(tmp_path / "tiny.json"),
                            "--pretrain-steps", "2", "--finetune-steps", "1", "--seeds", "1", "--fisher-batches", "1",
                            "--only", *only])
    return json.loads((tmp_path / "root" / "domain_adaptation.json").read_text())


def test_the_experiment_end_to_end(tmp_path):
    numbers = run(tmp_path, "none", "l2-1e-1")
    root = tmp_path / "root"
    assert (root / "data" / "A" / "train.txt").read_text() == "".join(f"{doc}\n\n" for doc in STORY) * 4
    assert (root / "data" / "B" / "valid.txt").read_text() == "".join(f"{doc}\n\n" for doc in CODE)
    assert [s["name"] for s in numbers["settings"]] == ["none", "l2-1e-1"]
    assert all(s["valid_ppl"]["values"] and s["test_ppl"]["values"] for s in numbers["settings"])
    assert numbers["pretrained"]["step"] == 2 and numbers["pretrained"]["B_ppl"] > 0
    table = (root / "domain_adaptation.md").read_text()
    assert "| plain fine-tuning | 1 |" in table and "Pre-trained on A (2 updates)" in table
    assert (root / "domain_adaptation.png").stat().st_size > 0
    config = json.loads((root / "finetune" / "none" / "seed1" / "config.json").read_text())
    assert config["train"]["init_from"] == str(root / "pretrain" / "best.pt")
    assert config["data"]["test"] == str(root / "data" / "A" / "valid.txt")  # what is kept, scored as its test text
    before = (root / "pretrain" / "latest.pt").stat().st_mtime_ns
    run(tmp_path, "none", "l2-1e-1")  # again: nothing is trained twice
    assert (root / "pretrain" / "latest.pt").stat().st_mtime_ns == before
    assert len((root / "finetune" / "results.jsonl").read_text().splitlines()) == 2


def test_l2_sp_and_ewc_settings_end_to_end(tmp_path):
    numbers = run(tmp_path, "l2sp-1e-1", "ewc-1e-1")
    assert [s["name"] for s in numbers["settings"]] == ["l2sp-1e-1", "ewc-1e-1"]
    assert numbers["settings"][1]["penalty"]["fisher_batches"] == 1
    assert "EWC: Fisher of 1 batches of" in (tmp_path / "root" / "finetune" / "ewc-1e-1" / "seed1" / "train.log").read_text()
