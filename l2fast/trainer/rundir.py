"""The run directory's life cycle: resume the run it holds, or start a fresh one, never deleting work.

A directory that holds an earlier run is resumed from its ``latest.pt``. Where it cannot be (no
``latest.pt``, or ``--no-resume``), it is refused, as joeynmt refuses an existing model directory,
unless ``--overwrite`` is given, which moves the earlier run aside to a timestamped sibling: a
checkpoint is never deleted without being asked for by name. A fresh run that fails or is stopped
before its first step removes what it wrote (``discard_fresh_start``), so that the corrected command
finds the directory as it was. Options a resumed run cannot change, and a run of the other trainer,
are refused before anything is written.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from .config import ConfigError
from .kinds import other_kind
from .recipe import PENALTY_FIXED_ON_RESUME
from .runtime import Environment

RUN_STATE_KEYS = ("config", "tokenizer", "model", "optimizer", "scaler", "counters", "rng")
FRESH_RUN = "pass --overwrite to start afresh (the earlier run is moved aside, nothing is deleted) or choose another --run-dir"


@dataclass
class RunDir:
    path: Path
    saved: dict | None  # the state to resume from, or None for a fresh run
    moved_to: Path | None = None  # where an earlier run was moved aside
    existed: bool = True  # the directory was there before this attempt (for a fresh run: empty)


def _check_can_be_directory(path: Path) -> None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ConfigError(f"train.run_dir {path}: {candidate} is a file, not a directory")
            return


def check_fixed(saved_config: dict, cfg, where: Path, fixed: tuple[tuple[str, str], ...]) -> None:
    """Refuses to resume where an option in fixed ((section, name) pairs), one the optimizer's saved
    state depends on (recipe.PENALTY_FIXED_ON_RESUME) or the checkpoint the run was fine-tuned from
    differs from the saved run's, or where the pull toward that checkpoint's weights would be switched
    on or off. Called before the run directory is touched, so a refused attempt writes nothing."""
    new, defaults = cfg.to_dict(), type(cfg)().to_dict()
    recipe = tuple(("penalty", name) for name in PENALTY_FIXED_ON_RESUME if name in new["penalty"])
    for section, name in fixed + recipe + (("train", "init_from"),):
        old = saved_config.get(section, {}).get(name, defaults[section][name])  # a checkpoint older than the option
        if _comparable(name, old) != _comparable(name, new[section][name]):
            raise ConfigError(f"{where} was trained with {section}.{name} = {old!r}, but this run asks for "
                              f"{new[section][name]!r}, which a resumed run cannot change: keep {old!r}, or {FRESH_RUN}")
    old_sp = saved_config.get("penalty", {}).get("l2_sp", 0.0)
    if bool(old_sp) != bool(cfg.penalty.l2_sp):
        # Its anchors are saved in the optimizer state only while it is on: a resumed run could not find them.
        raise ConfigError(f"{where} was trained with penalty.l2_sp = {old_sp!r}, and a resumed run cannot switch the "
                          f"pull toward the init-from weights {'off' if old_sp else 'on'} (it may change its strength): "
                          f"keep penalty.l2_sp {'> 0' if old_sp else '= 0'}, or {FRESH_RUN}")


def _comparable(name: str, value):
    """value as far as it matters: a schedule's JSON by content, not by spacing or key order."""
    if name == "penalty_schedule" and value:
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def check_run_kind(saved_config: dict, cfg, run_dir: Path) -> None:
    """Refuses to resume a run the other trainer made, naming the command that resumes it."""
    expected = type(cfg).KIND
    kind = other_kind(saved_config, expected)
    if kind:
        raise ConfigError(f"train.run_dir {run_dir} holds a run of the {kind.trainer}, not of the {expected.trainer}: "
                          f"resume it with {kind.train} --run-dir {run_dir}, or choose another --run-dir")


def _aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    return candidate


def resumes(cfg) -> bool:
    """Whether the run of cfg continues from RUN_DIR/latest.pt (else it starts afresh)."""
    return cfg.train.resume and not cfg.train.overwrite and (Path(cfg.train.run_dir) / checkpoint.LATEST).exists()


def open_run_dir(cfg, env: Environment, check_resumable: Callable[[dict, object, Path], None]) -> RunDir:
    """Decides, on every process alike, whether the run resumes or starts afresh, and readies the directory.
    Every refusal happens on every process before any of them changes anything. ``check_resumable(saved
    config, cfg, checkpoint path)`` refuses the options the trainer cannot change on resume."""
    path = Path(cfg.train.run_dir)
    _check_can_be_directory(path)
    latest = path / checkpoint.LATEST
    if resumes(cfg):
        try:
            saved = checkpoint.load(latest, env.device, require=RUN_STATE_KEYS)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"{e}: restore it (best.pt is untouched), or {FRESH_RUN}") from None
        check_run_kind(saved["config"], cfg, path)
        check_resumable(saved["config"], cfg, latest)
        if env.is_main:
            checkpoint.remove_stale_temporaries(path)
        env.barrier()
        return RunDir(path, saved)
    earlier = sorted(p.name for p in path.iterdir() if not checkpoint.is_temporary(p)) if path.is_dir() else []
    if earlier and not cfg.train.overwrite:
        why = "--no-resume was given" if latest.exists() else "it has no latest.pt to resume from"
        shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise ConfigError(f"train.run_dir {path} holds an earlier run ({shown}) and {why}: {FRESH_RUN}")
    moved_to = _aside(path) if earlier else None
    existed = path.is_dir() and not moved_to
    env.barrier()  # every process has decided before the main one changes the directory
    if env.is_main:
        if moved_to:
            path.rename(moved_to)
        path.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temporaries(path)
    env.barrier()
    return RunDir(path, None, moved_to, existed)


def discard_fresh_start(run: RunDir, env: Environment) -> None:
    """Removes what a fresh run wrote (config, log, tokenizer, demo data) when it fails or is stopped
    before its first step, leaving the directory as open_run_dir found it: empty, or not there. What
    it wrote can be made again; kept, it would make the next attempt refuse the directory as an
    earlier run."""
    if run.saved is not None or not env.is_main or not run.path.is_dir():
        return
    if not run.existed:
        shutil.rmtree(run.path)
        return
    for entry in run.path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
