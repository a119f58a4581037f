"""Command-line plumbing both trainers use: one flag per configuration option, number types whose
errors name what they wanted, output paths checked before work starts, one-line errors, and the
commands both trainers have (``TrainerCommands``)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import torch

from .ablation import command as ablation_command
from .checkpoint import CheckpointError
from .config import SEED_RANGE, ConfigError, describe, merge, read_config_file, section_fields, sections_of
from .text import DataError

# What a command reports as one line, "l2fast COMMAND: error: ...", with exit status 2.
USER_ERRORS = (ConfigError, DataError, CheckpointError, OSError)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, section_fields) -> None:
    """One flag per configuration field, grouped by section; absent flags leave the value alone."""
    groups = {}
    for section, f in section_fields:
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} options")
        default = f.default
        help, choices = describe(f)
        help_text = f"{help} (default: {default!r})"
        kwargs = {"dest": f"{section}.{f.name}", "default": argparse.SUPPRESS, "help": help_text, "metavar": f.name.upper()}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
            del kwargs["metavar"]
        elif isinstance(default, tuple):
            kwargs.update(nargs=len(default), type=float, metavar="X")  # replaces the metavar above
        else:
            kwargs["type"] = type(default)
            if choices:
                kwargs["choices"] = choices
                del kwargs["metavar"]
        groups[section].add_argument(_flag(f.name), **kwargs)


def command_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser whose first argument names the command, and the object its commands are added to."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def add_train_command(commands, help: str, description: str, config_cls) -> argparse.ArgumentParser:
    """The train command: --config, --print-config and one flag per option of config_cls."""
    train = commands.add_parser("train", help=help, description=description + " Values come from defaults, then "
                                "--config, then flags.")
    names = ", ".join(sections_of(config_cls))
    train.add_argument("--config", help=f"JSON or TOML file with sections {names}")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")
    add_config_flags(train, section_fields(config_cls))
    return train


def config_from_args(args: argparse.Namespace, config_cls, build_config: Callable):
    """The configuration of defaults < args.config's file < the flags given."""
    overrides = read_config_file(args.config, config_cls) if args.config else {}
    flags: dict[str, dict] = {}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            flags.setdefault(section, {})[name] = value
    return build_config(merge(overrides, flags), where=args.config or "command line")


def _number(kind, low: float, what: str, high: float = math.inf):
    """An argparse type: a finite number of kind from low to high (its error names what it wanted)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


POSITIVE = _number(int, 1, "a positive integer")
NOT_NEGATIVE = _number(int, 0, "an integer >= 0")
FINITE = _number(float, -math.inf, "a finite number")
NOT_NEGATIVE_FLOAT = _number(float, 0.0, "a finite number >= 0")
SEED = _number(int, SEED_RANGE[0], f"a seed from {SEED_RANGE[0]} to {SEED_RANGE[1]} (2**64 - 1)", SEED_RANGE[1])


def check_output(path: str | None, flag: str) -> None:
    """Refuses an output path that cannot be written, before any work."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: directory {path.parent} does not exist")


# The exit status of a command stopped by Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
INTERRUPTED = 130


def run_command(prog: str, command: str, action: Callable[[], None]) -> int:
    """Runs action; a user error becomes one line on stderr and exit status 2, Ctrl-C one line (saying,
    for train, where the run can be resumed from) and exit status 130."""
    try:
        action()
    except USER_ERRORS as e:
        print(f"{prog} {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"{prog} {command}: {str(e) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED
    return 0


def add_ablation_command(commands, description: str, settings: list[str], finetune_settings: list[str],
                         run_dir: str) -> argparse.ArgumentParser:
    """The ablation command of a trainer: settings / finetune_settings are the names --only accepts for a
    configuration that trains from scratch / fine-tunes (train.init_from)."""
    ablation = commands.add_parser("ablation", help="the penalty ablation at several seeds (markdown table)",
                                   description=description + " Every (setting, seed) run is trained once: finished runs "
                                   "are in RUN_DIR/results.jsonl and are skipped when the command is run again, a run "
                                   "cut off midway resumes from its latest.pt, and several processes started with "
                                   "the same command share the runs out (one --threads 1 process per core, say). "
                                   "The table (mean ± sample standard deviation per setting) is rewritten to "
                                   "RUN_DIR/ablation.md after every run. A configuration with train.init_from makes "
                                   "it a fine-tuning ablation: plain fine-tuning, L2 toward zero, L2-SP at three "
                                   "strengths and, where it names penalty.fisher_data, EWC at two.")
    ablation.add_argument("--config", help="JSON or TOML file of the configuration all runs share (default: the trainer's defaults)")
    ablation.add_argument("--seeds", type=POSITIVE, default=3, help="seeds 1..N per setting (default: 3)")
    ablation.add_argument("--max-steps", type=POSITIVE, help="updates per run (default: the configuration's)")
    ablation.add_argument("--threads", type=NOT_NEGATIVE, help="CPU threads per run (0 = all cores; default: the configuration's)")
    ablation.add_argument("--only", nargs="+", metavar="SETTING", help=f"run only these settings: {', '.join(settings)}; "
                          f"fine-tuning: {', '.join(finetune_settings)} (default: all)")
    ablation.add_argument("--run-dir", default=run_dir, help=f"directory of the results, table and runs (default: {run_dir})")
    ablation.add_argument("--table", action="store_true", help="only rewrite and print the table of the finished runs")
    return ablation


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that reads a checkpoint."""
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file (best.pt or latest.pt); it carries model, "
                                                            "tokenizer and config")
    parser.add_argument("--threads", type=NOT_NEGATIVE, default=0, help="CPU threads (default: all cores)")


@dataclass(frozen=True)
class TrainerCommands:
    """What both trainers' commands share: train, ablation, loading the checkpoint of a command that reads
    one, and running the command a parser chose. package is the trainer's own (``__package__`` of its
    cli): its train and inference modules are imported only when a command needs them, so that --help
    and --print-config do not load the model, the data pipeline and their libraries."""
    prog: str
    package: str
    config_cls: type
    build_config: Callable
    make_ablation: Callable  # the trainer's ablation.make
    report: Callable[[dict], str]  # the train command's last line, from the results of the run

    def train(self, args: argparse.Namespace) -> None:
        cfg = config_from_args(args, self.config_cls, self.build_config)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return
        results = import_module(".train", self.package).run_training(cfg)
        if results is not None:  # None on all but the main process, and where the run has nothing to report
            print(self.report(results))

    def ablation(self, args: argparse.Namespace) -> None:
        print(ablation_command(args, self.config_cls, self.build_config, self.make_ablation))

    def load(self, args: argparse.Namespace) -> tuple:
        """(model, tokenizer, config, device) of --checkpoint, on the GPU where there is one, with --threads
        CPU threads."""
        torch.set_num_threads(args.threads or torch.get_num_threads())
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return (*import_module(".inference", self.package).load_for_inference(args.checkpoint, device), device)

    def main(self, parser: argparse.ArgumentParser, commands: dict[str, Callable], argv: list[str] | None) -> int:
        args = parser.parse_args(argv)
        return run_command(self.prog, args.command, lambda: commands[args.command](args))
