"""Multi-seed penalty ablations for either trainer: every (setting, seed) run, a results file an
interrupted ablation resumes from, and a table of each metric's mean and spread per setting.

An ablation's directory holds ``results.jsonl`` (one row per finished run, appended as the run
ends), ``ablation.md`` (the table, rewritten from every row after each run) and one run directory
per setting and seed, ``SETTING/seedN``. A seed sets the model's initialisation, the data order and
dropout; everything else is the same for every run (equal step counts, no wall-clock cap, one
precision).

Several processes may work in one directory at once, one per core say, each started with the same
command: a process trains a run only while it holds an exclusive lock on ``SETTING/seedN.lock``, and
skips runs another process holds. The system releases such a lock when its process ends, however it
ends, so a killed process leaves nothing claimed; its run resumes from its ``latest.pt`` next time.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, merge, read_config_file

RESULTS = "results.jsonl"
TABLE = "ablation.md"
# A setting names the penalty options it turns on; these are off unless it names them, so the
# settings do not inherit the base configuration's penalty.
PENALTY_OFF = {"l1": 0.0, "decoupled": False, "penalty_schedule": "", "l2_sp": 0.0, "fisher_batches": 0}
# Batches of the original task's text an EWC setting estimates its Fisher on.
FISHER_BATCHES = 8
# Options that say where and how a run executes, not what it computes: runs differing in them compare.
PLACEMENT = {"train": ("run_dir", "threads", "resume", "overwrite")}


@dataclass(frozen=True)
class Setting:
    name: str  # for --only and the run directory
    label: str  # the table's row
    penalty: dict  # options of the penalty section (the others as in PENALTY_OFF)

    def penalty_options(self) -> dict:
        return {**PENALTY_OFF, **self.penalty}


@dataclass(frozen=True)
class Metric:
    key: str  # in the results of a run
    label: str
    digits: int
    compare: bool = True  # the table has a column of its difference to the baseline


@dataclass(frozen=True)
class Ablation:
    title: Callable[[dict], str]  # the table's title, from the configuration of its runs (as a results row holds it)
    settings: tuple[Setting, ...]  # the first is the baseline the others are compared with
    metrics: tuple[Metric, ...]
    build_config: Callable[[dict], Any]  # {section: {option: value}} -> a checked configuration
    train: Callable[[Any], dict]  # a configuration -> the results of its run
    # Assets all runs share, made once per ablation directory (under its lock): (base configuration,
    # directory) -> options every run gets, e.g. the paths of a corpus and tokenizer made there.
    prepare: Callable[[Any, Path], dict] | None = None


def _short(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def penalty_settings(strengths: tuple[float, float, float], max_steps: int, every: int,
                     decoupled: float | None = None) -> tuple[Setting, ...]:
    """No penalty; coupled L2 (the gradient gains l2 * w, as Adam's weight_decay) at three strengths;
    optionally decoupled decay (as AdamW's); the middle strength cosine-decayed to 0 at max_steps; and
    the middle strength switched on and off every ``every`` steps."""
    middle = strengths[1]
    settings = [Setting("none", "no penalty", {"l2": 0.0})]
    settings += [Setting(f"l2-{_short(s)}", f"L2 {_short(s)}", {"l2": s}) for s in strengths]
    if decoupled is not None:
        settings.append(Setting("decoupled", f"decoupled {_short(decoupled)} (AdamW)", {"l2": decoupled, "decoupled": True}))
    settings.append(Setting("decayed", f"L2 {_short(middle)}, cosine-decayed to 0",
                            {"l2": middle, "penalty_schedule": json.dumps({"type": "Cosine", "total": max_steps})}))
    settings.append(Setting("alternating", f"L2 {_short(middle)}, alternating on/off every {every} steps",
                            {"l2": middle, "penalty_schedule": json.dumps({"type": "Alternating", "every": every})}))
    return tuple(settings)


def finetune_settings(strengths: tuple[float, float, float] = (1e-2, 1e-1, 1.0), ewc: tuple[float, ...] = (1e-1, 1.0),
                      fisher_batches: int = 0) -> tuple[Setting, ...]:
    """The settings of a fine-tuning ablation (runs with train.init_from): plain fine-tuning; L2 toward
    zero at the smallest and the middle strength; L2-SP (toward the init-from weights) at the three strengths; and, with
    fisher_batches, EWC (L2-SP weighted by a Fisher of that many batches, scaled to mean 1) at the
    strengths of ewc. All coupled, so that every strength is in the gradient's units (it gains l2 * w,
    or l2_sp * F * (w - w0)); decoupled, a weight whose F * l2_sp * lr exceeds 1 would be thrown past
    its anchor, where Adam bounds a coupled pull's step by the learning rate."""
    settings = [Setting("none", "plain fine-tuning", {"l2": 0.0})]
    settings += [Setting(f"l2-{_short(s)}", f"L2 {_short(s)} toward zero", {"l2": s}) for s in strengths[:2]]
    settings += [Setting(f"l2sp-{_short(s)}", f"L2-SP {_short(s)}", {"l2": 0.0, "l2_sp": s}) for s in strengths]
    if fisher_batches:
        settings += [Setting(f"ewc-{_short(s)}", f"EWC {_short(s)} (Fisher of {fisher_batches} batches)",
                             {"l2": 0.0, "l2_sp": s, "fisher_batches": fisher_batches}) for s in ewc]
    return tuple(settings)


def choose(settings: tuple[Setting, ...], only: list[str] | None) -> tuple[Setting, ...]:
    """The settings named in only (all when None), in the ablation's order."""
    if not only:
        return settings
    names = [s.name for s in settings]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise ConfigError(f"unknown ablation setting {unknown[0]!r}; choose from {', '.join(names)}")
    return tuple(s for s in settings if s.name in only)


# ---- statistics and the table ----------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1 in the denominator); None for one value


def summarize(values: list[float]) -> Stats:
    std = statistics.stdev(values) if len(values) >= 2 else None
    return Stats(len(values), statistics.fmean(values), std)


def beyond_spread(row: Stats, baseline: Stats) -> bool | None:
    """Whether the difference of the means exceeds the sum of the two standard deviations; None where
    either has a single value (no spread to judge by)."""
    if row.std is None or baseline.std is None:
        return None
    return abs(row.mean - baseline.mean) > row.std + baseline.std


SPREAD_RULE = ("a difference to the first row is called beyond spread where |difference of the means| > "
               "s + s0, the sum of the two sample standard deviations, and within spread otherwise")


def _cell(stats: Stats | None, digits: int) -> str:
    if stats is None:
        return "–"
    if stats.std is None:
        return f"{stats.mean:.{digits}f}"
    return f"{stats.mean:.{digits}f} ± {stats.std:.{digits}f}"


def _difference(stats: Stats | None, baseline: Stats | None, digits: int) -> str:
    if stats is None or baseline is None:
        return "–"
    verdict = beyond_spread(stats, baseline)
    word = "n < 2" if verdict is None else "beyond spread" if verdict else "within spread"
    return f"{stats.mean - baseline.mean:+.{digits}f} ({word})"


def table(ablation: Ablation, rows: list[dict], config: dict) -> str:
    """The markdown table of the rows' results: one line per setting that has runs, in the ablation's
    order. config: the configuration of the runs, as a results row holds it."""
    by_setting = {s.name: [r for r in rows if r["setting"] == s.name] for s in ablation.settings}
    stats = {name: {m.key: summarize(values) if (values := [r["results"][m.key] for r in runs if m.key in r["results"]])
                    else None for m in ablation.metrics} for name, runs in by_setting.items()}
    baseline = stats[ablation.settings[0].name]
    caption = (f"{ablation.title(config)}: {config['train']['max_steps']} steps per run, precision "
               f"{config['train']['precision']}. "
               f"Each cell is the mean ± sample standard deviation over n seeds (a seed sets the initialisation, "
               f"data order and dropout); {SPREAD_RULE}.")
    header = ["penalty", "n"]
    for m in ablation.metrics:
        header += [m.label] + ([f"vs {ablation.settings[0].label}"] if m.compare else [])
    lines = [caption, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for setting in ablation.settings:
        runs = by_setting[setting.name]
        if not runs:
            continue
        cells = [setting.label, str(len(runs))]
        for m in ablation.metrics:
            cells.append(_cell(stats[setting.name][m.key], m.digits))
            if m.compare:
                cells.append("–" if setting is ablation.settings[0] else
                             _difference(stats[setting.name][m.key], baseline[m.key], m.digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the results file --------------------------------------------------------------------------

def read_results(root: Path) -> list[dict]:
    """The rows of root's results file; a line that is not a whole row (left by a process killed while
    writing it) is skipped, so its run counts as not done and runs again."""
    path = root / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and {"setting", "seed", "penalty", "config", "results"} <= set(row):
            rows.append(row)
    return rows


def _append(root: Path, row: dict) -> None:
    """One row at the end of the results file, on a line of its own even after a torn last line."""
    path = root / RESULTS
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        torn = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
        f.write((b"\n" if torn else b"") + (json.dumps(row) + "\n").encode("utf-8"))


def _write_table(root: Path, text: str) -> None:
    temporary = root / (TABLE + ".tmp")
    temporary.write_text(text + "\n", encoding="utf-8")
    os.replace(temporary, root / TABLE)  # a reader never sees half a table


@contextlib.contextmanager
def _lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on path (created if missing) for the block; with wait=False, yields False at
    once where another process holds it."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- running -----------------------------------------------------------------------------------

def _comparable(config: dict) -> dict:
    """The configuration without its PLACEMENT options, in JSON's types (as a results row holds it)."""
    kept = {section: {k: v for k, v in options.items() if k not in PLACEMENT.get(section, ())}
            for section, options in config.items()}
    return json.loads(json.dumps(kept))


def _first_difference(there: dict, here: dict) -> str:
    for section in sorted(set(there) | set(here)):
        a, b = there.get(section, {}), here.get(section, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                return f"{section}.{name} = {a.get(name)!r} there, {b.get(name)!r} here"
    return "no difference"


def check_compatible(rows: list[dict], config: dict, settings: tuple[Setting, ...], where: Path) -> None:
    """Refuses to add runs to a results file whose rows were made with another configuration or
    another definition of a setting: their table would mix incomparable runs."""
    penalties = {s.name: json.loads(json.dumps(s.penalty_options())) for s in settings}
    for row in rows:
        if row["config"] != config:
            raise ConfigError(f"{where} holds runs of another configuration ({_first_difference(row['config'], config)}): "
                              "give the options of those runs, or another --run-dir")
        if row["setting"] in penalties and row["penalty"] != penalties[row["setting"]]:
            raise ConfigError(f"{where}: its runs of {row['setting']!r} had the penalty {row['penalty']}, this "
                              f"ablation's has {penalties[row['setting']]}: use another --run-dir")


def base_options(options: dict, build_config: Callable[[dict], Any]) -> dict:
    """options with what makes the runs comparable: a step count and no wall-clock cap (on a busy
    machine it would stop runs at different steps), and on a CPU float32 in place of "auto" (whose
    timed probe could choose differently from run to run)."""
    import torch

    if build_config(options).train.max_steps == 0:
        raise ConfigError("the runs of an ablation train for equal numbers of updates: set train.max_steps (--max-steps)")
    options = merge(options, {"train": {"max_minutes": 0.0}})
    if build_config(options).train.precision == "auto" and not torch.cuda.is_available():
        options = merge(options, {"train": {"precision": "fp32"}})
    return options


def run_ablation(ablation: Ablation, options: dict, seeds: list[int], run_dir: str | Path,
                 only: list[str] | None = None, log: Callable[[str], None] = print) -> str:
    """Trains every chosen (setting, seed) run that root's results file does not hold yet and another
    process is not training, seed by seed; returns the table of all rows. options: the configuration
    every run shares, as {section: {option: value}}."""
    settings = choose(ablation.settings, only)
    options = base_options(options, ablation.build_config)
    base = ablation.build_config(options)  # every option checked before anything is written
    comparable = _comparable(base.to_dict())
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--run-dir {root} is a file, not a directory")
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / "ablation.lock"):
        check_compatible(read_results(root), comparable, ablation.settings, root / RESULTS)
        shared = ablation.prepare(base, root) if ablation.prepare else {}
    for seed in seeds:
        for setting in settings:
            path = root / setting.name / f"seed{seed}"
            path.parent.mkdir(exist_ok=True)
            with _lock(path.with_name(path.name + ".lock"), wait=False) as mine:
                if not mine:
                    continue
                rows = read_results(root)
                # Again before each run: another process may have started with other options since.
                check_compatible(rows, comparable, ablation.settings, root / RESULTS)
                if any(r["setting"] == setting.name and r["seed"] == seed for r in rows):
                    continue
                # A run killed midway resumes from its latest.pt; one killed before its first
                # checkpoint is moved aside by --overwrite and starts afresh.
                run = {"train": {"seed": seed, "run_dir": str(path), "resume": True,
                                 "overwrite": not (path / "latest.pt").exists()},
                       "penalty": setting.penalty_options()}
                cfg = ablation.build_config(merge(merge(options, shared), run))
                log(f"ablation: {setting.label}, seed {seed} -> {path}")
                start = time.perf_counter()
                results = ablation.train(cfg)
                row = {"setting": setting.name, "seed": seed, "penalty": run["penalty"], "config": comparable,
                       "results": results, "wall_s": time.perf_counter() - start}
                with _lock(root / "ablation.lock"):
                    _append(root, row)
                    _write_table(root, table(ablation, read_results(root), comparable))
    with _lock(root / "ablation.lock"):
        text = table(ablation, read_results(root), comparable)
        _write_table(root, text)
    return text


def command(args, config_cls, build_config: Callable[..., Any], make: Callable[[Any], Ablation]) -> str:
    """The ablation command of a trainer (flags of trainer.cli.add_ablation_command): the runs, or with
    --table only the table of those done; make(base configuration) gives the trainer's Ablation."""
    options = read_config_file(args.config, config_cls) if args.config else {}
    flags = {name: value for name, value in (("max_steps", args.max_steps), ("threads", args.threads)) if value is not None}
    options = merge(options, {"train": flags})
    ablation = make(build_config(options, where=args.config or "command line"))
    if args.table:
        rows = read_results(Path(args.run_dir))
        if not rows:
            raise ConfigError(f"{Path(args.run_dir) / RESULTS} holds no finished runs to tabulate")
        text = table(ablation, rows, rows[0]["config"])
        _write_table(Path(args.run_dir), text)
        return text
    return run_ablation(ablation, options, list(range(1, args.seeds + 1)), args.run_dir, args.only)
