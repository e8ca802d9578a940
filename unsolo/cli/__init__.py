"""Command-line interface: ``unsolo <command> ...``.

Thin by design: each command lives in its own module of this package with two functions,
``add_parser(subparsers)`` (its arguments and one-line help) and ``run(args) -> int`` (which calls the
library). Adding a command means adding its module name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from unsolo import __version__
from unsolo.errors import UnsoloError

# Order is the order shown by ``unsolo --help``: the pipeline's order.
COMMANDS: list[str] = [
    "demo",
    "synth",
    "pretrain",
    "freemask",
    "train",
    "pseudo-label",
    "predict",
    "evaluate",
    "finetune",
    "split-labels",
    "export",
    "parity",
    "run",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unsolo",
        description="FreeSOLO: learn to segment objects in images without any annotation.",
    )
    parser.add_argument("--version", action="version", version=f"unsolo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        module = importlib.import_module(f"unsolo.cli.{name.replace('-', '_')}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except UnsoloError as e:
        print(f"unsolo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unsolo {args.command}: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
