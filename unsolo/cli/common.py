"""The flags several commands share, each defined once: the same name, destination, default and wording everywhere.

A command module calls these in its ``add_parser`` (``add_device(p)``, ``add_set(p, "maskness_threshold=0.5")``,
...); what differs between commands (a default, the example of ``--set``) is an argument.
"""

from __future__ import annotations

import argparse

PRECISIONS = ("auto", "float32", "bfloat16")


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device`` (default ``auto``)."""
    p.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:K")


def add_set(p: argparse.ArgumentParser, example: str, what: str = "config") -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``; ``example`` shows one."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{what} override (repeatable), e.g. {example}")


def add_workers(p: argparse.ArgumentParser, default: int | None, what: str = "image-decoding worker processes",
                shown: str | None = None) -> None:
    """``--workers N``; ``default`` None leaves it to the config (whose value ``shown`` names in the help)."""
    shown = shown if shown is not None else str(default)
    p.add_argument("--workers", type=int, default=default, help=f"{what} (default {shown})")


def add_batch_size(p: argparse.ArgumentParser, default: int | None = 1, help: str | None = None) -> None:
    """``--batch-size N``: images per forward pass of an inference command (default 1), or, with ``help``, a
    training command's batch."""
    p.add_argument("--batch-size", type=int, default=default,
                   help=help or f"images per forward pass (default {default})")


def add_image_root(p: argparse.ArgumentParser, default_note: str = "") -> None:
    """``--image-root DIR``, for an input given as a COCO JSON (default None)."""
    p.add_argument("--image-root", default=None,
                   help="image folder for a COCO JSON input: its file_name paths are relative to it" + default_note)


def add_inference_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` of the inference commands (default ``auto``)."""
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network on a CPU: auto (default) = bfloat16 autocast where the CPU has native bf16 (AMX, "
                   "AVX512-BF16), float32 elsewhere; float32 = exact (parity); post-processing is float32 either way")


def add_training_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--time-budget``, the same on every SOLO training command (default: the config's)."""
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the network's forward on a CPU: auto (default) = bfloat16 autocast where the CPU has native "
                   "bf16 (AMX, AVX512-BF16), float32 elsewhere; losses and optimizer stay float32 "
                   "(solver.precision; on CUDA use --amp)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="train for this long instead of a fixed number of iterations (600, 600s, 10m, 1.5h): the first "
                   "iterations are timed, then the length and LR schedule are fixed to fill it (solver.max_time)")
