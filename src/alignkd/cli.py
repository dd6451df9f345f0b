"""The `alignkd` command line.

Each area of the package registers its own subcommands through an `add_parsers(subparsers)`
function in its `cli` module; handlers import their heavy dependencies lazily so that
`alignkd --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute subcommands, in the order they appear in `alignkd --help`.
COMMAND_MODULES = [
    "alignkd.demo.cli",
    "alignkd.training.cli",
    "alignkd.cache.cli",
    "alignkd.data.cli",
    "alignkd.models.cli",
    "alignkd.eval.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignkd",
        description="Distil a large vision-language model into a small one with Align-KD.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from alignkd.errors import AlignKDError

    try:
        result = args.handler(args)
    except AlignKDError as error:
        logging.getLogger("alignkd").error("%s", error)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
