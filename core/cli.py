"""The ``ctbundles`` console command: one sub-command per module in :mod:`ctbundles.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from ctbundles import __version__
from ctbundles.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctbundles",
        description="CT calcium scoring, synthetic CT cohorts and dataset tools for the ctbundles MONAI bundles.",
    )
    parser.add_argument("--version", action="version", version=f"ctbundles {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"ctbundles.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError) as err:  # CTInputError and the checks' ValueErrors: one line, no traceback
        print(f"ctbundles {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
