"""``python -m l2fast`` and the ``l2fast`` console script: the translation trainer's commands."""
import sys

# Top-level modules of the `nmt` extra (pyproject.toml) that the trainer imports.
NMT_EXTRA_MODULES = {"sentencepiece", "sacrebleu", "matplotlib", "tqdm", "tomli"}


def version_line() -> str:
    import torch

    import l2fast

    return f"l2fast {l2fast.__version__} (torch {torch.__version__}; backend {l2fast.backend()}: {l2fast.backend_reason()})"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--version"], ["-V"]):
        print(version_line())
        return 0
    try:
        from l2fast.nmt.cli import main as cli_main
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in NMT_EXTRA_MODULES:
            raise
        print(f"l2fast: the translation trainer needs the nmt extra ({error.name} is missing): "
              "pip install 'l2fast[nmt]'", file=sys.stderr)
        return 1
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
