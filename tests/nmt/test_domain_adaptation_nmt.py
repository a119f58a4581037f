"""scripts/domain_adaptation.py --task nmt: the options it fills in, sentence pairs dealt into the
domains by their package, the record written only for a whole grid, and (slow) the experiment end to
end on a tiny labelled parallel corpus (no download)."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")
pytest.importorskip("matplotlib")

from l2fast.nmt.demo_corpus import generate  # noqa: E402
from l2fast.trainer.ablation import Ablation, finetune_settings  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "domain_adaptation.py"
spec = importlib.util.spec_from_file_location("domain_adaptation", SCRIPT)
domain_adaptation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(domain_adaptation)

TINY = {"data": {"vocab_size": 120}, "model": {"d_model": 32, "heads": 4, "encoder_layers": 1, "decoder_layers": 1,
                                                "ff_dim": 32, "dropout": 0.0},
        "train": {"log_every": 1}}


def labelled_corpus(directory: Path) -> dict[str, list[tuple[str, str]]]:
    """Every split: pairs of an A package, a B package and a package of neither, interleaved, each
    labelled with its package; returns {split: the pairs of A}."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs = generate(30, seed=3)
    labels = ["gimp-data", "git", "unlisted-package"]
    a = {}
    for split, part in (("train", pairs[:18]), ("valid", pairs[18:24]), ("test", pairs[24:])):
        sources = [labels[i % 3] for i in range(len(part))]
        (directory / f"{split}.de").write_text("".join(s + "\n" for s, _ in part), encoding="utf-8")
        (directory / f"{split}.en").write_text("".join(t + "\n" for _, t in part), encoding="utf-8")
        (directory / f"{split}.sources").write_text("".join(p + "\n" for p in sources), encoding="utf-8")
        a[split] = [pair for pair, p in zip(part, sources) if p == "gimp-data"]
    return a


def test_nmt_defaults_and_overrides():
    args = domain_adaptation.parse_args(["--task", "nmt"])
    assert (args.root, args.corpus, args.pretrain_steps, args.finetune_steps) == (
        Path("runs/domain-adaptation-nmt"), Path("data/l10n"), 3000, 300)
    args = domain_adaptation.parse_args(["--task", "nmt", "--root", "r", "--finetune-steps", "7", "--finetune-lr", "0"])
    assert (args.root, args.finetune_steps, args.finetune_lr) == (Path("r"), 7, 0.0)
    lm = domain_adaptation.parse_args([])
    assert (lm.task, lm.root, lm.corpus, lm.pretrain_steps, lm.finetune_steps) == (
        "lm", Path("runs/domain-adaptation"), Path("data/english"), 2000, 400)


def test_the_domains_of_nmt_share_no_package():
    domains = domain_adaptation.TASKS["nmt"].domains
    assert not set(domains["A"]) & set(domains["B"])
    assert {"gcc-12-locales", "git", "dpkg"} <= set(domains["B"]) and {"gimp-data", "inkscape"} <= set(domains["A"])


def test_pairs_are_dealt_into_the_domains_by_package(tmp_path):
    a = labelled_corpus(tmp_path / "corpus")
    task = domain_adaptation.TASKS["nmt"]
    paths, counts = domain_adaptation.write_domains(task, tmp_path / "corpus", tmp_path / "out")
    assert counts == {"A": {"train": 6, "valid": 2, "test": 2}, "B": {"train": 6, "valid": 2, "test": 2}}
    assert paths["A"]["valid"] == str(tmp_path / "out" / "A" / "valid")  # a prefix: the trainer adds .de / .en
    for split, pairs in a.items():
        assert Path(paths["A"][split] + ".de").read_text(encoding="utf-8") == "".join(s + "\n" for s, _ in pairs)
        assert Path(paths["A"][split] + ".en").read_text(encoding="utf-8") == "".join(t + "\n" for _, t in pairs)
    assert len(Path(paths["B"]["train"] + ".en").read_text(encoding="utf-8").splitlines()) == 6  # the unlisted package in neither
    (tmp_path / "corpus" / "valid.sources").write_text("git\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="names 1 sources for 6 pairs"):
        domain_adaptation.write_domains(task, tmp_path / "corpus", tmp_path / "out")


def test_a_record_only_for_a_whole_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L2FAST_BENCH_RESULTS", str(tmp_path))
    task = domain_adaptation.TASKS["nmt"]
    ablation = Ablation(task.title, finetune_settings(), task.metrics, task.build_config, task.train)
    args = domain_adaptation.parse_args(["--task", "nmt", "--seeds", "2", "--only", "none", "l2sp-1e-1"])
    stats = {"mean": 1.0, "std": 0.0, "values": [1.0, 1.0]}
    numbers = {"pretrained": {"A_bleu": 20.0, "B_bleu": 2.0, "step": 3}, "settings": [
        {"name": "none", "label": "plain fine-tuning", "seeds": [1, 2], "best_valid_bleu": stats, "test_bleu": stats}]}
    rows = [{"setting": name, "seed": seed} for name in ("none", "l2sp-1e-1") for seed in (1, 2)]
    domain_adaptation.record_run(task, args, ablation, rows[:3], numbers)
    assert "not recorded" in capsys.readouterr().out and not (tmp_path / "domain_adaptation_nmt.jsonl").exists()
    domain_adaptation.record_run(task, args, ablation, rows, numbers)
    line = json.loads((tmp_path / "domain_adaptation_nmt.jsonl").read_text())
    assert line["bench"] == "domain_adaptation_nmt" and line["results"]["pretrained"]["A_bleu"] == 20.0
    assert "| pre-trained on A, before fine-tuning | 2.00 | 20.00 |" in line["results"]["table"]
    assert "| plain fine-tuning | 1.00 ± 0.00 | 1.00 ± 0.00 |" in line["results"]["table"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_translation_experiment_end_to_end(tmp_path):
    labelled_corpus(tmp_path / "corpus")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    root = tmp_path / "root"
    argv = ["--task", "nmt", "--root", str(root), "--corpus", str(tmp_path / "corpus"), "--config", str(tmp_path / "tiny.json"),
            "--pretrain-steps", "2", "--finetune-steps", "1", "--seeds", "1", "--fisher-batches", "1",
            "--only", "none", "ewc-1e-1"]
    domain_adaptation.main(argv)
    numbers = json.loads((root / "domain_adaptation.json").read_text())
    assert [s["name"] for s in numbers["settings"]] == ["none", "ewc-1e-1"]
    assert all(len(s["best_valid_bleu"]["values"]) == 1 and len(s["test_bleu"]["values"]) == 1 for s in numbers["settings"])
    pretrained = json.loads((root / "pretrain" / "results.json").read_text())
    assert numbers["pretrained"] == {"A_bleu": pretrained["best_valid_bleu"], "B_bleu": pretrained["test_bleu"],
                                     "B_chrf": pretrained["test_chrf"], "step": 2}
    config = json.loads((root / "finetune" / "ewc-1e-1" / "seed1" / "config.json").read_text())
    assert config["train"]["init_from"] == str(root / "pretrain" / "best.pt")
    assert (config["data"]["train"], config["data"]["valid"], config["data"]["test"]) == tuple(
        str(root / "data" / d / s) for d, s in (("B", "train"), ("B", "valid"), ("A", "valid")))
    assert config["penalty"]["fisher_data"] == str(root / "data" / "A" / "train")
    assert config["decode"]["beam"] == 1 and config["train"]["valid_every"] == 1
    assert "EWC: Fisher of 1 batches of" in (root / "finetune" / "ewc-1e-1" / "seed1" / "train.log").read_text()
    text = (root / "domain_adaptation.md").read_text()
    assert "Pre-trained on A (2 updates): A BLEU" in text and "| plain fine-tuning | 1 |" in text
    assert "Pairs (train / valid / test): A 6 / 2 / 2; B 6 / 2 / 2." in text and numbers["items"]["B"]["train"] == 6
    assert "| penalty | B BLEU (learned) | A BLEU (kept) |" in text
    assert (root / "domain_adaptation.png").stat().st_size > 0
    before = (root / "pretrain" / "latest.pt").stat().st_mtime_ns
    domain_adaptation.main(argv)  # again: nothing is trained twice
    assert (root / "pretrain" / "latest.pt").stat().st_mtime_ns == before
    assert len((root / "finetune" / "results.jsonl").read_text().splitlines()) == 2


def test_the_records_of_both_tasks_side_by_side(tmp_path):
    def line(bench, pretrained, settings):
        return json.dumps({"bench": bench, "date": "2026-12-05T09:00:00+00:00", "command": f"python {bench}",
                           "commit": "abc", "local_changes": False, "machine": {"cpu": "CPU", "isa_level": "x86-64-v4"},
                           "results": {"pretrained": pretrained, "settings": settings}}) + "\n"

    one = {"mean": 4.0, "std": 0.5, "values": [3.5, 4.0, 4.5]}
    (tmp_path / "domain_adaptation.jsonl").write_text(line("domain_adaptation", {"A_ppl": 3.0, "B_ppl": 5.0}, [
        {"name": "none", "label": "plain fine-tuning", "valid_ppl": one, "test_ppl": one},
        {"name": "ewc-1e0", "label": "EWC 1e0", "valid_ppl": one, "test_ppl": one}]))
    older = line("domain_adaptation_nmt", {"A_bleu": 1.0, "B_bleu": 1.0}, [])
    newest = line("domain_adaptation_nmt", {"A_bleu": 20.0, "B_bleu": 10.0}, [
        {"name": "none", "label": "plain fine-tuning", "best_valid_bleu": {"mean": 25.0, "std": None, "values": [25.0]},
         "test_bleu": {"mean": 12.5, "std": None, "values": [12.5]}}])
    (tmp_path / "domain_adaptation_nmt.jsonl").write_text(older + newest)
    text = domain_adaptation.records_table(tmp_path)
    assert "nmt: 2026-12-05, commit abc, CPU (x86-64-v4), `python domain_adaptation_nmt`" in text
    assert "| penalty | lm: B ppl (learned) | lm: A ppl (kept) | nmt: B BLEU (learned) | nmt: A BLEU (kept) |" in text
    assert "| pre-trained on A, before fine-tuning | 5.000 | 3.000 | 10.00 | 20.00 |" in text  # the newest nmt record
    assert "| plain fine-tuning | 4.000 ± 0.500 | 4.000 ± 0.500 | 25.00 | 12.50 |" in text
    assert "| EWC 1e0 | 4.000 ± 0.500 | 4.000 ± 0.500 | – | – |" in text
    with pytest.raises(SystemExit, match="no record"):
        domain_adaptation.records_table(tmp_path / "empty")
