"""``unsolo parity <target>``: compare this implementation with outputs of the official code."""

from __future__ import annotations

import argparse
import importlib
import json

from unsolo.parity import TARGETS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "parity",
        help="compare with outputs of the official FreeSOLO implementation (prints a JSON summary)",
        description="Compare this implementation with saved outputs of the official FreeSOLO code. "
        "Prints a JSON summary; exit status 1 when the comparison fails its tolerances.",
    )
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module, help_) in TARGETS.items():
        mod = importlib.import_module(module)
        tp = targets.add_parser(name, help=help_, description=help_)
        mod.add_arguments(tp)
        tp.set_defaults(_parity_run=mod.run)
    return p


def run(args) -> int:
    summary = args._parity_run(args)
    print(json.dumps(summary, indent=2))
    return 0 if summary.get("ok", False) else 1
