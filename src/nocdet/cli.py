"""The ``nocdet`` command: one sub-command per module in :mod:`nocdet.commands`.

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from nocdet import __version__
from nocdet.errors import NocdetError

COMMANDS = ["data", "evaluate", "noc", "proposals", "pretrain", "train", "sweep", "detect", "diagnose", "report", "demo",
            "export", "convert_caffe", "cache"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nocdet",
        description="Two-stage object detection with Networks on Convolutional feature maps (NoC).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    parser.add_argument("--version", action="version", version=f"nocdet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"nocdet.commands.{name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except NocdetError as err:
        print(f"nocdet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nocdet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
