"""``python -m l2fast`` and the ``l2fast`` console script."""
import sys


def main() -> int:
    from l2fast.nmt.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
