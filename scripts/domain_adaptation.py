"""Fine-tuning without forgetting, measured: a model pre-trained on one domain (A) is fine-tuned on
another (B) with each anchored penalty, and scored on B (what it learned) and on A (what it kept).
``--task lm`` (the default) does it with the language model, ``--task nmt`` with the translation model;
both run the same steps with the same code.

lm: the English documentation corpus of ``scripts/english_corpus.py`` cut by source: A = the Debian
Administrator's Handbook and the Debian Reference (administering a system), B = the Python 3.11
documentation (programming); perplexity.
nmt: the German-English pairs of ``scripts/l10n_corpus.py`` cut by package: A = interface strings of
desktop applications (GIMP, Inkscape, digiKam, VLC, GnuCash, Gramps, Freeciv, Evolution, GNOME, KDE,
Xfce ...), B = messages of developer and system tools (GCC, the C library, Git, APT, dpkg, aptitude);
BLEU (sacrebleu, as the trainer scores it; greedy decoding).

Each domain keeps the corpus's own train / valid / test split. The steps, each picked up where it
stopped when the command is run again:

1. the corpus with its source labels (``english_corpus.py --sources``, ``l10n_corpus.py --sources``),
   unless --corpus holds it;
2. ROOT/data/{A,B}/{train,valid,test}.txt (nmt: .de and .en);
3. pre-training on A (ROOT/pretrain, `l2fast lm train` or `l2fast train`), test data B's validation
   data, so that its results say how well the pre-trained model knew B before fine-tuning;
4. fine-tuning on B from the pre-trained best.pt, as the trainers' ``ablation`` command runs a
   fine-tuning ablation (ROOT/finetune): plain fine-tuning, L2 toward zero at two strengths, L2-SP at
   three, EWC at two (Fisher on A's training data), every setting at --seeds seeds. Each run validates
   once, after its last update, on B's whole validation data (learned), and ends by scoring, as its
   test data, A's whole validation data (kept);
5. ROOT/domain_adaptation.md / .json / .png: the table (mean ± sample standard deviation over the
   seeds), a short table of both scores beside the pre-trained model's, the same numbers as JSON, and
   the trade-off: A's score against B's per setting, from the pre-trained model's point. With
   --record, once the grid is done, the JSON as one line of bench/results/domain_adaptation.jsonl
   (nmt: domain_adaptation_nmt.jsonl), with the machine and commit.

The defaults are sized for a 2-core CPU shared with other work, one thread per run. lm: a 0.43
M-parameter byte-level model (2 layers of width 128), 2,000 pre-training and 400 fine-tuning updates
of 16 blocks of 64 bytes: the pre-training and the 24 fine-tuning runs with their scoring took 24
minutes on this project's 2-core machine while other work shared it (2026-12-05). nmt: a 1.4
M-parameter Transformer (2+2 layers of width 128, 4,000 shared unigram subwords, training pairs of at
most 48 subwords a side), 3,000 pre-training and 300 fine-tuning updates of 2,000 tokens: 56 minutes
in all (13.5 of them pre-training) on the same machine while compile and test jobs loaded it heavily
(2026-12-05).
A second process started with the same command waits for the pre-training and then shares the
fine-tuning runs (one per core). --pretrain-steps, --finetune-steps and --config (options of the
trainer, e.g. a larger model) scale it up.

    python scripts/domain_adaptation.py                       # everything, into runs/domain-adaptation
    python scripts/domain_adaptation.py --only none l2sp-1e-1 --seeds 1     # a part of the grid
    python scripts/domain_adaptation.py --task nmt --record   # the translation model, runs/domain-adaptation-nmt
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from l2fast.lm.config import Config as LMConfig, build_config as build_lm_config
from l2fast.lm.data import read_documents
from l2fast.lm.train import run_training as train_lm
from l2fast.nmt.config import Config as NMTConfig, build_config as build_nmt_config
from l2fast.nmt.train import run_training as train_nmt
from l2fast.trainer.ablation import (Ablation, Metric, base_options, choose, finetune_settings, read_results,
                                     run_ablation, summarize)
from l2fast.trainer.cli import NOT_NEGATIVE, NOT_NEGATIVE_FLOAT, POSITIVE, USER_ERRORS
from l2fast.trainer.config import merge, read_config_file

SPLITS = ("train", "valid", "test")
REPO = Path(__file__).resolve().parents[1]


def lm_title(config: dict) -> str:
    d, m, t = config["data"], config["model"], config["train"]
    return (f"Fine-tuning a language model pre-trained on domain A ({config['penalty']['fisher_data']}) on domain B "
            f"({d['train']}) from {t['init_from']}: perplexity ({d['tokenizer']} tokens) on B's validation text "
            f"(learned) and on A's (kept); {m['layers']} layers of width {m['d_model']}, context {m['context']}; "
            f"coupled penalties; lr {t['lr']}")


def nmt_title(config: dict) -> str:
    d, m, t = config["data"], config["model"], config["train"]
    return (f"Fine-tuning a German->English translation model pre-trained on domain A ({config['penalty']['fisher_data']}) "
            f"on domain B ({d['train']}) from {t['init_from']}: BLEU (sacrebleu, detokenized, beam "
            f"{config['decode']['beam']}) on B's validation pairs (learned) and on A's (kept); {m['encoder_layers']}+"
            f"{m['decoder_layers']} layers of width {m['d_model']}, {d['vocab_size']} shared subwords; coupled "
            f"penalties; lr {t['lr']}")


def read_lm_items(corpus: Path, split: str) -> list[tuple[str, ...]]:
    return [(doc,) for doc in read_documents(corpus / f"{split}.txt", "paragraphs").texts]


def read_nmt_items(corpus: Path, split: str) -> list[tuple[str, ...]]:
    de, en = ((corpus / f"{split}.{side}").read_text(encoding="utf-8").splitlines() for side in ("de", "en"))
    if len(de) != len(en):
        raise SystemExit(f"{corpus / split}.de has {len(de)} lines, .en {len(en)}: make the corpus again")
    return list(zip(de, en))


class Task(NamedTuple):
    """What differs between the two trainers' experiments; the grid, the resumption, the table, the JSON
    and the plot are the same code for both."""
    name: str
    corpus: Path  # the default --corpus
    corpus_script: str  # makes the corpus with its source labels (run with OUT --sources)
    domains: dict[str, tuple[str, ...]]  # domain: the sources (packages) whose items it takes
    suffixes: tuple[str, ...]  # the files of a split: PREFIX.SUFFIX each
    separator: str  # after each item in those files
    read_items: Callable[[Path, str], list[tuple[str, ...]]]  # (corpus, split) -> one tuple (a text per suffix) per source line
    prefix_paths: bool  # the trainer takes a split as its path prefix (else the one file's path)
    shared: dict  # the model and recipe both phases share (--config overrides them)
    config_cls: Any
    build_config: Callable[[dict], Any]
    train: Callable[[Any], dict]
    title: Callable[[dict], str]
    metrics: tuple[Metric, ...]
    learned: str  # a fine-tuning run's results key of B's score (its validation set)
    kept: str  # and of A's (its test set)
    pretrained: dict[str, str]  # the pre-training's numbers in the summary: name -> its results key (valid: A, test: B)
    unit: str  # of the plot's axes and the text
    digits: int
    lower_is_better: bool
    defaults: dict  # of the options below whose default depends on the task
    bench: str  # the name of its record in bench/results


# The model and recipe of each task, small enough that the pre-training and the 24 fine-tuning runs take
# well under 45 minutes on a busy two-core machine.
LM_SHARED = {
    "data": {"documents": "paragraphs", "tokenizer": "bytes"},
    "model": {"d_model": 128, "heads": 4, "layers": 2, "ff_dim": 512, "context": 64},
    "train": {"batch_size": 16, "lr_schedule": "cosine", "min_lr": 1e-4, "log_every": 100, "valid_max_tokens": 32768},
}
NMT_SHARED = {
    "data": {"src_suffix": "de", "tgt_suffix": "en", "vocab_size": 4000, "max_len": 48},
    "model": {"d_model": 128, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff_dim": 512, "dropout": 0.1,
              "max_positions": 64},
    # Greedy decoding of every validation pair: the fine-tuning runs' one validation (B) and their test (A)
    # decode alike, and the pre-training's best validation (A) and test (B) too.
    "train": {"max_tokens": 2000, "lr_schedule": "cosine", "min_lr": 1e-4, "log_every": 100, "valid_beam": 1,
              "valid_max_sentences": 0},
    "decode": {"beam": 1},
}
TASKS = {
    "lm": Task(
        name="lm", corpus=Path("data/english"), corpus_script="english_corpus.py",
        domains={"A": ("debian-handbook", "debian-reference-en"), "B": ("python3.11-doc",)},
        suffixes=("txt",), separator="\n\n", read_items=read_lm_items, prefix_paths=False, shared=LM_SHARED,
        config_cls=LMConfig, build_config=build_lm_config, train=train_lm, title=lm_title,
        metrics=(Metric("valid_ppl", "B ppl (learned)", 3), Metric("test_ppl", "A ppl (kept)", 3),
                 Metric("valid_bpb", "B bits/byte", 4, compare=False), Metric("test_bpb", "A bits/byte", 4, compare=False),
                 Metric("train_seconds", "train s", 0, compare=False)),
        learned="valid_ppl", kept="test_ppl",
        pretrained={"A_ppl": "valid_ppl", "B_ppl": "test_ppl", "A_bpb": "valid_bpb", "B_bpb": "test_bpb"},
        unit="ppl", digits=3, lower_is_better=True,
        defaults={"root": "runs/domain-adaptation", "pretrain_steps": 2000, "finetune_steps": 400, "pretrain_lr": 2e-3,
                  "finetune_lr": 1e-3},
        bench="domain_adaptation"),
    # A: interface strings of desktop applications; B: messages of the compiler, the C library, Git and
    # Debian's package tools. The corpus's other packages are in neither.
    "nmt": Task(
        name="nmt", corpus=Path("data/l10n"), corpus_script="l10n_corpus.py",
        domains={"A": ("gimp-data", "gimp", "inkscape", "digikam-data", "kdenlive-data", "libreoffice-l10n-de", "vlc-l10n",
                       "gnucash-common", "gnumeric-common", "gramps", "audacity-data", "freeciv-data", "evolution-common",
                       "evolution-data-server-common", "gnome-control-center-data", "gnome-games-app", "gnome-shell-common",
                       "nautilus-data", "thunar-data", "xfce4-panel", "plasma-workspace-data", "kwin-data", "calligra-data",
                       "scribus-data", "mc-data"),
                 "B": ("gcc-12-locales", "libc-l10n", "git", "apt", "dpkg", "aptitude-common", "vim-common")},
        suffixes=("de", "en"), separator="\n", read_items=read_nmt_items, prefix_paths=True, shared=NMT_SHARED,
        config_cls=NMTConfig, build_config=build_nmt_config, train=train_nmt, title=nmt_title,
        # A fine-tuning run validates once, after its last update, so its best validation BLEU is B's at the end.
        metrics=(Metric("best_valid_bleu", "B BLEU (learned)", 2), Metric("test_bleu", "A BLEU (kept)", 2),
                 Metric("test_chrf", "A chrF", 2, compare=False), Metric("train_seconds", "train s", 0, compare=False)),
        learned="best_valid_bleu", kept="test_bleu",
        pretrained={"A_bleu": "best_valid_bleu", "B_bleu": "test_bleu", "B_chrf": "test_chrf"},
        unit="BLEU", digits=2, lower_is_better=False,
        defaults={"root": "runs/domain-adaptation-nmt", "pretrain_steps": 3000, "finetune_steps": 300,
                  "pretrain_lr": 2e-3, "finetune_lr": 1e-3},
        bench="domain_adaptation_nmt"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="lm",
                        help="lm: the language model on the English corpus; nmt: the translation model on the l10n corpus")
    parser.add_argument("--root", type=Path, help="where everything goes (default: runs/domain-adaptation, "
                        "runs/domain-adaptation-nmt for nmt)")
    parser.add_argument("--corpus", type=Path, help="the output of english_corpus.py --sources (nmt: of l10n_corpus.py "
                        "--sources), made there when missing (default: data/english; nmt: data/l10n)")
    parser.add_argument("--config", help="JSON or TOML options of the trainer (`l2fast lm train`; nmt: `l2fast train`) "
                        "over the built-in model and recipe")
    parser.add_argument("--pretrain-steps", type=POSITIVE, help="updates of the pre-training on A (default: 2000; nmt: 3000)")
    parser.add_argument("--finetune-steps", type=POSITIVE, help="updates of each fine-tuning run on B (default: 400; nmt: 300)")
    parser.add_argument("--pretrain-lr", type=NOT_NEGATIVE_FLOAT, help="peak learning rate of the pre-training (default: 2e-3)")
    parser.add_argument("--finetune-lr", type=NOT_NEGATIVE_FLOAT, help="peak learning rate of the fine-tuning (default: 1e-3)")
    parser.add_argument("--l2-sp", type=NOT_NEGATIVE_FLOAT, nargs=3, default=(1e-2, 1e-1, 1.0), metavar="S",
                        help="the three L2-SP strengths (coupled; the middle one is also L2 toward zero's)")
    parser.add_argument("--ewc", type=NOT_NEGATIVE_FLOAT, nargs="+", default=(1e-1, 1.0), metavar="S", help="the EWC strengths")
    parser.add_argument("--fisher-batches", type=NOT_NEGATIVE, default=8, help="batches of A's training data the Fisher averages")
    parser.add_argument("--seeds", type=POSITIVE, default=3, help="seeds 1..N of every fine-tuning setting")
    parser.add_argument("--only", nargs="+", metavar="SETTING", help="fine-tune with these settings only (default: all)")
    parser.add_argument("--threads", type=NOT_NEGATIVE, default=1, help="CPU threads per run (0 = all cores; a model this "
                                                               "small gains little from a second one)")
    parser.add_argument("--record", action="store_true", help="append the summary as one JSON line to "
                        "bench/results/domain_adaptation.jsonl (nmt: domain_adaptation_nmt.jsonl) once every run of "
                        "the grid is done")
    parser.add_argument("--records-table", action="store_true", help="only print the newest record of each task "
                        "(bench/results, or $L2FAST_BENCH_RESULTS) side by side in one table")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    for name, value in task.defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, Path(value) if name == "root" else value)
    if args.corpus is None:
        args.corpus = task.corpus
    return args


def ensure_corpus(task: Task, corpus: Path) -> None:
    """The labelled corpus in corpus, made by the task's corpus script where its labels are missing."""
    if not all((corpus / f"{split}.sources").exists() for split in SPLITS):
        script = Path(__file__).with_name(task.corpus_script)
        subprocess.run([sys.executable, str(script), str(corpus), "--sources"], check=True)


def write_domains(task: Task, corpus: Path, out: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]]]:
    """{domain: {split: the trainer's path}} and {domain: {split: items}}: each split's items (documents, or
    sentence pairs) dealt into the domains by their source, in order."""
    paths = {domain: {split: str(out / domain / split) for split in SPLITS} for domain in task.domains}
    counts: dict[str, dict[str, int]] = {domain: {} for domain in task.domains}
    for split in SPLITS:
        items = task.read_items(corpus, split)
        sources = (corpus / f"{split}.sources").read_text(encoding="utf-8").split()
        if len(sources) != len(items):
            raise SystemExit(f"{corpus / split}.sources names {len(sources)} sources for {len(items)} "
                             f"{'pairs' if task.prefix_paths else 'documents'}: make the corpus again with "
                             f"{task.corpus_script} --sources")
        for domain, packages in task.domains.items():
            prefix = Path(paths[domain][split])
            prefix.parent.mkdir(parents=True, exist_ok=True)
            kept = [item for item, source in zip(items, sources) if source in packages]
            counts[domain][split] = len(kept)
            for i, suffix in enumerate(task.suffixes):
                path = prefix.with_name(f"{prefix.name}.{suffix}")
                partial = path.with_name(path.name + ".partial")  # renamed when whole: a killed process leaves no half file
                partial.write_text("".join(item[i] + task.separator for item in kept), encoding="utf-8")
                os.replace(partial, path)
    if not task.prefix_paths:
        paths = {domain: {split: f"{path}.{task.suffixes[0]}" for split, path in splits.items()}
                 for domain, splits in paths.items()}
    return paths, counts


def shared_options(task: Task, args) -> dict:
    options = merge(task.shared, read_config_file(args.config, task.config_cls) if args.config else {})
    return merge(options, {"train": {"threads": args.threads}})


def pretrain(task: Task, args, options: dict, domains: dict) -> dict:
    """The results of the pre-training on A (valid: A, test: B), trained (or resumed) unless they are there;
    a second process waits for the first's."""
    run_dir = args.root / "pretrain"
    args.root.mkdir(parents=True, exist_ok=True)
    with open(args.root / "pretrain.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process ends however it ends
        if not (run_dir / "results.json").exists():
            train_pretrain(task, args, options, domains, run_dir)
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def train_pretrain(task: Task, args, options: dict, domains: dict, run_dir: Path) -> None:
    a, b = domains["A"], domains["B"]
    steps = args.pretrain_steps
    run = {"data": {"train": a["train"], "valid": a["valid"], "test": b["valid"]},
           "train": {"max_steps": steps, "lr": args.pretrain_lr, "warmup": steps // 10, "valid_every": steps // 4 or 1,
                     "run_dir": str(run_dir), "seed": 1, "resume": True,
                     # A run killed before its first checkpoint cannot resume: moved aside, it starts afresh.
                     "overwrite": not (run_dir / "latest.pt").exists()}}
    task.train(task.build_config(base_options(merge(options, run), task.build_config)))


def finetune(task: Task, args, ablation: Ablation, options: dict, domains: dict) -> None:
    """Trains every (setting, seed) fine-tuning run on B not done yet."""
    a, b = domains["A"], domains["B"]
    steps = args.finetune_steps
    run = {"data": {"train": b["train"], "valid": b["valid"], "test": a["valid"]},
           # One validation, after the last update: the score on B is that of the final weights, as A's is.
           "train": {"init_from": str(args.root / "pretrain" / "best.pt"), "max_steps": steps, "lr": args.finetune_lr,
                     "warmup": steps // 10, "valid_every": steps},
           "penalty": {"fisher_data": a["train"]}}
    run_ablation(ablation, merge(options, run), list(range(1, args.seeds + 1)), args.root / "finetune", args.only)


def summary(task: Task, ablation: Ablation, rows: list[dict], pretrained: dict, counts: dict) -> dict:
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
    learned, kept = (next(f"{m.key[:m.key.index('_') + 1]}*" for m in ablation.metrics if m.key == key)
                     for key in (task.learned, task.kept))
    return {"pretrained": {**{name: pretrained[key] for name, key in task.pretrained.items()}, "step": pretrained["step"]},
            "metrics": {learned: f"B's validation {'pairs' if task.prefix_paths else 'text'} (in-domain)",
                        kept: f"A's validation {'pairs' if task.prefix_paths else 'text'} (kept)"},
            "items": counts, "config": rows[0]["config"] if rows else None, "settings": settings}


def _cell(stats: dict, digits: int) -> str:
    return f"{stats['mean']:.{digits}f}" + (f" ± {stats['std']:.{digits}f}" if stats["std"] is not None else "")


def scores_table(task: Task, numbers: dict) -> str:
    """The short table: the pre-trained model's scores on B and A, then each setting's mean ± sample
    standard deviation over its seeds."""
    d, key = task.digits, task.unit.lower()
    start = numbers["pretrained"]
    lines = [f"| penalty | B {task.unit} (learned) | A {task.unit} (kept) |", "|---|---:|---:|",
             f"| pre-trained on A, before fine-tuning | {start['B_' + key]:.{d}f} | {start['A_' + key]:.{d}f} |"]
    lines += [f"| {s['label']} | {_cell(s[task.learned], d)} | {_cell(s[task.kept], d)} |" for s in numbers["settings"]]
    return "\n".join(lines)


def records_table(folder: Path) -> str:
    """The newest recorded run of each task in folder, side by side in one markdown table (settings matched
    by name; '–' where a task has no runs of one), after a line per run saying when, at which commit and
    with which command it was made."""
    records = {}
    for name, task in TASKS.items():
        path = folder / f"{task.bench}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        if lines:
            records[name] = (task, json.loads(lines[-1]))
    if not records:
        raise SystemExit(f"{folder} holds no record of domain_adaptation.py (run it with --record)")
    notes = [f"{name}: {r['date'][:10]}, commit {r['commit'] or 'unknown'}"
             f"{' with local changes' if r.get('local_changes') else ''}, {r['machine'].get('cpu')} "
             f"({r['machine'].get('isa_level')}), `{r['command']}`" for name, (_, r) in records.items()]
    header, first = ["penalty"], ["pre-trained on A, before fine-tuning"]
    labels: dict[str, str] = {}
    for name, (task, r) in records.items():
        key, start = task.unit.lower(), r["results"]["pretrained"]
        header += [f"{name}: B {task.unit} (learned)", f"{name}: A {task.unit} (kept)"]
        first += [f"{start['B_' + key]:.{task.digits}f}", f"{start['A_' + key]:.{task.digits}f}"]
        for s in r["results"]["settings"]:
            labels.setdefault(s["name"], s["label"])
    rows = [first]
    for setting, label in labels.items():
        row = [label]
        for task, r in records.values():
            found = [s for s in r["results"]["settings"] if s["name"] == setting]
            row += ([_cell(found[0][task.learned], task.digits), _cell(found[0][task.kept], task.digits)] if found
                    else ["–", "–"])
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(notes) + "\n\n" + "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def plot(task: Task, numbers: dict, path: Path) -> None:
    """A's score (kept) against B's (learned), one point per setting with its spread over the seeds as
    error bars, and the pre-trained model's point. For perplexity the axes frame the settings within twice
    the pre-trained model's perplexities; a setting outside that (a penalty that ruins both domains) is
    named in a note with its numbers instead of squashing the rest (BLEU is bounded: every setting is drawn)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    unit, key = task.unit, task.unit.lower()
    fig, ax = plt.subplots(figsize=(7, 5))
    start = numbers["pretrained"]
    start_b, start_a = start[f"B_{key}"], start[f"A_{key}"]
    ax.plot(start_b, start_a, "k*", markersize=12, label="pre-trained on A")
    outside = []
    for s in numbers["settings"]:
        b, a = s[task.learned], s[task.kept]
        if task.lower_is_better and (b["mean"] > 2 * start_b or a["mean"] > 2 * start_a):
            outside.append(f"{s['label']}: B {b['mean']:.{task.digits}f}, A {a['mean']:.{task.digits}f}")
            continue
        ax.errorbar(b["mean"], a["mean"], xerr=b["std"] or 0.0, yerr=a["std"] or 0.0, fmt="o", capsize=3,
                    label=f"{s['label']} (n={len(s['seeds'])})")
    if outside:
        ax.annotate("off the plot: " + "; ".join(outside), (0.01, 0.01), xycoords="figure fraction", fontsize=8)
    better = "lower" if task.lower_is_better else "higher"
    ax.set_xlabel(f"B {'perplexity' if unit == 'ppl' else unit} (learned; {better} is better)")
    ax.set_ylabel(f"A {'perplexity' if unit == 'ppl' else unit} (kept; {better} is better)")
    ax.set_title(f"Fine-tuning {'a language model' if task.name == 'lm' else 'a translation model'} from A to B: "
                 "what is learned against what is kept", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03 if outside else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def record_run(task: Task, args, ablation: Ablation, rows: list[dict], numbers: dict) -> None:
    """The summary as one line of bench/results/<task's bench>.jsonl, with the machine and commit, where
    every (setting, seed) of the grid has its run; else nothing, and says which is missing."""
    done = {(r["setting"], r["seed"]) for r in rows}
    missing = [f"{s.name} seed {seed}" for s in choose(ablation.settings, args.only)
               for seed in range(1, args.seeds + 1) if (s.name, seed) not in done]
    if missing:
        print(f"not recorded: the grid is not done ({len(missing)} runs missing, e.g. {missing[0]})")
        return
    sys.path.insert(0, str(REPO / "bench"))
    from common import record

    record(task.bench, {**numbers, "table": scores_table(task, numbers)})


def results_folder() -> Path:
    """Where record() writes (bench/common.py's rule)."""
    return Path(os.environ.get("L2FAST_BENCH_RESULTS") or REPO / "bench" / "results")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.records_table:
        print(records_table(results_folder()))
        return
    task = TASKS[args.task]
    settings = finetune_settings(tuple(args.l2_sp), tuple(args.ewc), args.fisher_batches)
    choose(settings, args.only)  # an unknown name is refused before any work
    ablation = Ablation(task.title, settings, task.metrics, task.build_config, task.train)
    ensure_corpus(task, args.corpus)
    domains, counts = write_domains(task, args.corpus, args.root / "data")
    options = shared_options(task, args)
    pretrained = pretrain(task, args, options, domains)
    finetune(task, args, ablation, options, domains)
    rows = read_results(args.root / "finetune")
    numbers = summary(task, ablation, rows, pretrained, counts)
    start, unit, d = numbers["pretrained"], task.unit, task.digits
    text = ((args.root / "finetune" / "ablation.md").read_text(encoding="utf-8") +
            f"\nPre-trained on A ({start['step']} updates): A {unit} {start['A_' + unit.lower()]:.{d}f}, "
            f"B {unit} {start['B_' + unit.lower()]:.{d}f}. {'Pairs' if task.prefix_paths else 'Documents'} "
            f"(train / valid / test): " + "; ".join(f"{domain} {' / '.join(str(n) for n in c.values())}"
                                                    for domain, c in counts.items()) +
            ".\n\n" + scores_table(task, numbers) + "\n")
    (args.root / "domain_adaptation.md").write_text(text, encoding="utf-8")
    (args.root / "domain_adaptation.json").write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    plot(task, numbers, args.root / "domain_adaptation.png")
    print(text)
    print(f"written: {args.root / 'domain_adaptation.md'}, .json, .png")
    if args.record:
        record_run(task, args, ablation, rows, numbers)


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:  # one line, as the trainer's commands say it
        sys.exit(f"domain_adaptation.py: error: {e}")
