"""``python -m l2fast`` and the ``l2fast`` console script: the translation trainer's commands, and the
language model's under ``l2fast lm``."""
import importlib.util
import sys

# Top-level modules of the `train` extra (pyproject.toml) that the trainers import.
TRAIN_EXTRA_MODULES = {"sentencepiece", "sacrebleu", "matplotlib", "tqdm", "tomli"}


def version_line() -> str:
    import torch

    import l2fast

    return f"l2fast {l2fast.__version__} (torch {torch.__version__}; backend {l2fast.backend()}: {l2fast.backend_reason()})"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--version"], ["-V"]):
        print(version_line())
        return 0
    language_model = args[:1] == ["lm"]
    missing = missing_train_modules()
    if missing:
        who = "l2fast lm: the language-model trainer" if language_model else "l2fast: the translation trainer"
        print(f"{who} needs the train extra (missing: {', '.join(missing)}): pip install 'l2fast[train]'", file=sys.stderr)
        return 1
    if language_model:
        from l2fast.lm.cli import main as lm_main

        return lm_main(args[1:])
    from l2fast.nmt.cli import main as cli_main

    return cli_main(argv)


def missing_train_modules() -> list[str]:
    """The modules of the train extra that cannot be imported, sorted. Checked before any command runs,
    because the trainer imports some of them only when a command needs them."""
    needed = sorted(TRAIN_EXTRA_MODULES - ({"tomli"} if sys.version_info >= (3, 11) else set()))  # tomllib is in 3.11+
    return [name for name in needed if importlib.util.find_spec(name) is None]


if __name__ == "__main__":
    sys.exit(main())
