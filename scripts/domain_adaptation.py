"""Fine-tuning without forgetting, measured: a language model pre-trained on one domain (A) is
fine-tuned on another (B) with each anchored penalty, and scored on B (what it learned) and on A (what
it kept).

The domains are the English documentation corpus of ``scripts/english_corpus.py`` cut by source:
A = the Debian Administrator's Handbook and the Debian Reference (administering a system),
B = the Python 3.11 documentation (programming). Each keeps the corpus's own train / valid / test
split. The steps, each picked up where it stopped when the command is run again:

1. the corpus with its source labels (``english_corpus.py --sources``), unless --corpus holds it;
2. ROOT/data/{A,B}/{train,valid,test}.txt;
3. pre-training on A (ROOT/pretrain, `l2fast lm train`), test text B's validation text, so that its
   results say how well the pre-trained model knew B before fine-tuning;
4. fine-tuning on B from the pre-trained best.pt, as `l2fast lm ablation` runs a fine-tuning
   ablation (ROOT/finetune): plain fine-tuning, L2 toward zero at two strengths, L2-SP at three, EWC
   at two (Fisher on A's training text), every setting at --seeds seeds. Each run ends by scoring
   B's whole validation text (in-domain) and, as its test text, A's whole validation text (kept);
5. ROOT/domain_adaptation.md / .json / .png: the table (mean ± sample standard deviation over the
   seeds), the same numbers as JSON, and the trade-off: A perplexity against B perplexity per
   setting, from the pre-trained model's point.

The defaults are sized for a 2-core CPU shared with other work: a 0.43 M-parameter byte-level model
(2 layers of width 128), 2,000 pre-training and 400 fine-tuning updates of 16 blocks of 64 bytes, one
thread per run: the pre-training and the 24 fine-tuning runs with their scoring took 24 minutes on
this project's 2-core machine while other work shared it (2026-12-05).
A second process started with the same command waits for the pre-training and then shares the
fine-tuning runs (one per core). --pretrain-steps, --finetune-steps and --config (options of
`l2fast lm train`, e.g. a larger model) scale it up.

    python scripts/domain_adaptation.py                       # everything, into runs/domain-adaptation
    python scripts/domain_adaptation.py --only none l2sp-1e-1 --seeds 1     # a part of the grid
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from l2fast.lm.config import Config, build_config
from l2fast.lm.data import read_documents
from l2fast.lm.train import run_training
from l2fast.trainer.ablation import (Ablation, Metric, base_options, choose, finetune_settings, read_results,
                                     run_ablation, summarize)
from l2fast.trainer.cli import NOT_NEGATIVE, NOT_NEGATIVE_FLOAT, POSITIVE, USER_ERRORS
from l2fast.trainer.config import merge, read_config_file

DOMAINS = {"A": ("debian-handbook", "debian-reference-en"), "B": ("python3.11-doc",)}
SPLITS = ("train", "valid", "test")
# The model and recipe both phases share (--config overrides them): small enough that the pre-training
# and 24 fine-tuning runs take well under 40 minutes on a busy two-core machine.
SHARED = {
    "data": {"documents": "paragraphs", "tokenizer": "bytes"},
    "model": {"d_model": 128, "heads": 4, "layers": 2, "ff_dim": 512, "context": 64},
    "train": {"batch_size": 16, "lr_schedule": "cosine", "min_lr": 1e-4, "log_every": 100, "valid_max_tokens": 32768},
}
METRICS = (Metric("valid_ppl", "B ppl (learned)", 3), Metric("test_ppl", "A ppl (kept)", 3),
           Metric("valid_bpb", "B bits/byte", 4, compare=False), Metric("test_bpb", "A bits/byte", 4, compare=False),
           Metric("train_seconds", "train s", 0, compare=False))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/domain-adaptation"), help="where everything goes")
    parser.add_argument("--corpus", type=Path, default=Path("data/english"),
                        help="the output of english_corpus.py --sources (made there when missing)")
    parser.add_argument("--config", help="JSON or TOML options of `l2fast lm train` over the built-in model and recipe")
    parser.add_argument("--pretrain-steps", type=POSITIVE, default=2000, help="updates of the pre-training on A")
    parser.add_argument("--finetune-steps", type=POSITIVE, default=400, help="updates of each fine-tuning run on B")
    parser.add_argument("--pretrain-lr", type=NOT_NEGATIVE_FLOAT, default=2e-3, help="peak learning rate of the pre-training")
    parser.add_argument("--finetune-lr", type=NOT_NEGATIVE_FLOAT, default=1e-3, help="peak learning rate of the fine-tuning")
    parser.add_argument("--l2-sp", type=NOT_NEGATIVE_FLOAT, nargs=3, default=(1e-2, 1e-1, 1.0), metavar="S",
                        help="the three L2-SP strengths (coupled; the middle one is also L2 toward zero's)")
    parser.add_argument("--ewc", type=NOT_NEGATIVE_FLOAT, nargs="+", default=(1e-1, 1.0), metavar="S", help="the EWC strengths")
    parser.add_argument("--fisher-batches", type=NOT_NEGATIVE, default=8, help="batches of A's training text the Fisher averages")
    parser.add_argument("--seeds", type=POSITIVE, default=3, help="seeds 1..N of every fine-tuning setting")
    parser.add_argument("--only", nargs="+", metavar="SETTING", help="fine-tune with these settings only (default: all)")
    parser.add_argument("--threads", type=NOT_NEGATIVE, default=1, help="CPU threads per run (0 = all cores; a model this "
                                                               "small gains little from a second one)")
    return parser.parse_args(argv)


def ensure_corpus(corpus: Path) -> None:
    """The labelled corpus in corpus, made by english_corpus.py where its labels are missing."""
    if not all((corpus / f"{split}.sources").exists() for split in SPLITS):
        script = Path(__file__).with_name("english_corpus.py")
        subprocess.run([sys.executable, str(script), str(corpus), "--sources"], check=True)


def write_domains(corpus: Path, out: Path) -> dict[str, dict[str, str]]:
    """{domain: {split: path}}: each split's documents dealt into the domains by their source, in order."""
    paths = {domain: {split: str(out / domain / f"{split}.txt") for split in SPLITS} for domain in DOMAINS}
    for split in SPLITS:
        docs = read_documents(corpus / f"{split}.txt", "paragraphs").texts
        sources = (corpus / f"{split}.sources").read_text(encoding="utf-8").split()
        if len(sources) != len(docs):
            raise SystemExit(f"{corpus / split}.sources names {len(sources)} sources for {len(docs)} documents: "
                             "make the corpus again with english_corpus.py --sources")
        for domain, packages in DOMAINS.items():
            path = Path(paths[domain][split])
            path.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(doc + "\n\n" for doc, source in zip(docs, sources) if source in packages)
            partial = path.with_suffix(".partial")  # renamed when whole: a killed process leaves no half file
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, path)
    return paths


def shared_options(args) -> dict:
    options = merge(SHARED, read_config_file(args.config, Config) if args.config else {})
    return merge(options, {"train": {"threads": args.threads}})


def pretrain(args, options: dict, domains: dict) -> dict:
    """The results of the pre-training on A (valid: A, test: B), trained (or resumed) unless they are there;
    a second process waits for the first's."""
    run_dir = args.root / "pretrain"
    with open(args.root / "pretrain.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process ends however it ends
        if not (run_dir / "results.json").exists():
            train_pretrain(args, options, domains, run_dir)
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def train_pretrain(args, options: dict, domains: dict, run_dir: Path) -> None:
    a, b = domains["A"], domains["B"]
    steps = args.pretrain_steps
    run = {"data": {"train": a["train"], "valid": a["valid"], "test": b["valid"]},
           "train": {"max_steps": steps, "lr": args.pretrain_lr, "warmup": steps // 10, "valid_every": steps // 4 or 1,
                     "run_dir": str(run_dir), "seed": 1, "resume": True,
                     # A run killed before its first checkpoint cannot resume: moved aside, it starts afresh.
                     "overwrite": not (run_dir / "latest.pt").exists()}}
    run_training(build_config(base_options(merge(options, run), build_config)))


def finetune(args, ablation: Ablation, options: dict, domains: dict) -> None:
    """Trains every (setting, seed) fine-tuning run on B not done yet."""
    a, b = domains["A"], domains["B"]
    steps = args.finetune_steps
    run = {"data": {"train": b["train"], "valid": b["valid"], "test": a["valid"]},
           "train": {"init_from": str(args.root / "pretrain" / "best.pt"), "max_steps": steps, "lr": args.finetune_lr,
                     "warmup": steps // 10, "valid_every": steps},
           "penalty": {"fisher_data": a["train"]}}
    run_ablation(ablation, merge(options, run), list(range(1, args.seeds + 1)), args.root / "finetune", args.only)


def title(config: dict) -> str:
    d, m, t = config["data"], config["model"], config["train"]
    return (f"Fine-tuning a language model pre-trained on domain A ({config['penalty']['fisher_data']}) on domain B "
            f"({d['train']}) from {t['init_from']}: perplexity ({d['tokenizer']} tokens) on B's validation text "
            f"(learned) and on A's (kept); {m['layers']} layers of width {m['d_model']}, context {m['context']}; "
            f"coupled penalties; lr {t['lr']}")


def summary(ablation: Ablation, rows: list[dict], pretrained: dict) -> dict:
    """The numbers of the table and the plot, per setting with runs: each metric's values over the seeds,
    their mean and sample standard deviation."""
    settings = []
    for setting in ablation.settings:
        runs = sorted((r for r in rows if r["setting"] == setting.name), key=lambda r: r["seed"])
        if not runs:
            continue
        metrics = {}
        for m in ablation.metrics:
            values = [r["results"][m.key] for r in runs]
            stats = summarize(values)
            metrics[m.key] = {"mean": stats.mean, "std": stats.std, "values": values}
        settings.append({"name": setting.name, "label": setting.label, "penalty": setting.penalty_options(),
                         "seeds": [r["seed"] for r in runs], **metrics})
    return {"pretrained": {"A_ppl": pretrained["valid_ppl"], "B_ppl": pretrained["test_ppl"],
                           "A_bpb": pretrained["valid_bpb"], "B_bpb": pretrained["test_bpb"], "step": pretrained["step"]},
            "metrics": {"valid_*": "B's validation text (in-domain)", "test_*": "A's validation text (kept)"},
            "config": rows[0]["config"] if rows else None, "settings": settings}


def plot(numbers: dict, path: Path) -> None:
    """A perplexity (kept) against B perplexity (learned), one point per setting with its spread over the
    seeds as error bars, and the pre-trained model's point: down and to the left is better on both. The
    axes frame the settings within twice the pre-trained model's perplexities; a setting outside that
    (a penalty that ruins both domains) is named in a note with its numbers instead of squashing the rest."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    start = numbers["pretrained"]
    ax.plot(start["B_ppl"], start["A_ppl"], "k*", markersize=12, label="pre-trained on A")
    outside = []
    for s in numbers["settings"]:
        b, a = s["valid_ppl"], s["test_ppl"]
        if b["mean"] > 2 * start["B_ppl"] or a["mean"] > 2 * start["A_ppl"]:
            outside.append(f"{s['label']}: B {b['mean']:.2f}, A {a['mean']:.2f}")
            continue
        ax.errorbar(b["mean"], a["mean"], xerr=b["std"] or 0.0, yerr=a["std"] or 0.0, fmt="o", capsize=3,
                    label=f"{s['label']} (n={len(s['seeds'])})")
    if outside:
        ax.annotate("off the plot: " + "; ".join(outside), (0.01, 0.01), xycoords="figure fraction", fontsize=8)
    ax.set_xlabel("B perplexity (learned; lower is better)")
    ax.set_ylabel("A perplexity (kept; lower is better)")
    ax.set_title("Fine-tuning from A to B: what is learned against what is kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03 if outside else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = finetune_settings(tuple(args.l2_sp), tuple(args.ewc), args.fisher_batches)
    choose(settings, args.only)  # an unknown name is refused before any work
    ablation = Ablation(title, settings, METRICS, build_config, run_training)
    ensure_corpus(args.corpus)
    domains = write_domains(args.corpus, args.root / "data")
    options = shared_options(args)
    pretrained = pretrain(args, options, domains)
    finetune(args, ablation, options, domains)
    rows = read_results(args.root / "finetune")
    numbers = summary(ablation, rows, pretrained)
    start = numbers["pretrained"]
    text = ((args.root / "finetune" / "ablation.md").read_text(encoding="utf-8") +
            f"\nPre-trained on A ({start['step']} updates): A ppl {start['A_ppl']:.3f}, B ppl {start['B_ppl']:.3f}.\n")
    (args.root / "domain_adaptation.md").write_text(text, encoding="utf-8")
    (args.root / "domain_adaptation.json").write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    plot(numbers, args.root / "domain_adaptation.png")
    print(text)
    print(f"written: {args.root / 'domain_adaptation.md'}, .json, .png")


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:  # one line, as the trainer's commands say it
        sys.exit(f"domain_adaptation.py: error: {e}")
