"""Numeric precision of a training or inference loop: ``auto``, ``float32`` or ``bfloat16``.

``auto`` runs the network's forward under bfloat16 autocast on CPUs with native bfloat16 arithmetic (Intel AMX,
AVX512-BF16 on Intel and AMD, Arm's BF16 extension) and in float32 elsewhere; on CUDA the loops keep their own
``--amp`` option (float16 with a gradient scaler, or bfloat16), so ``auto`` means float32 there unless ``--amp``
asks otherwise. Losses, targets and the optimizer always stay in float32 (the models leave autocast for them), and
``float32`` is exactly the code path of a build without this option: parity tests run it.

Why autocast and not a bfloat16 model: master weights and optimizer state in float32 keep SGD's small updates
(lr x grad is often below bfloat16's 8-bit mantissa resolution of the weight), as mixed precision does on GPUs.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from functools import lru_cache
from typing import Literal

import torch

from unsolo.errors import UnsoloError

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS = ("auto", "float32", "bfloat16")
# /proc/cpuinfo flags that mean native bfloat16 arithmetic: x86 (AMX tiles, AVX512 BF16 dot products) and Arm
BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of this machine (``flags`` on x86, ``Features`` on Arm), lower case; empty if unknown."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return _darwin_flags()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.lower().split())
    return flags


def _darwin_flags() -> set[str]:
    """macOS on Apple silicon: ``hw.optional.arm.FEAT_BF16`` is 1 on M2 and later."""
    if platform.system() != "Darwin":
        return set()
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return set()
    return {"bf16"} if out.stdout.strip() == "1" else set()


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX, AVX512-BF16 or Arm BF16); without it bfloat16 is emulated
    in float32 and slower than float32."""
    return bool(cpu_flags() & BF16_FLAGS)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line error."""
    if precision not in PRECISIONS:
        raise UnsoloError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """The dtype name a loop on ``device`` runs its network in: ``float32`` or ``bfloat16``.

    ``auto``: bfloat16 on a CPU with native bfloat16, float32 otherwise (CUDA runs keep their ``--amp`` option).
    An explicit ``bfloat16`` is honoured everywhere (on a CPU without native support it is slow, not wrong).
    """
    check_precision(precision)
    if precision == "auto":
        return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"
    return precision


def autocast(device: torch.device, precision: str):
    """The context a network's forward runs in for a resolved ``precision`` (a no-op for float32)."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def describe(precision: str, device: torch.device) -> str:
    """One line for the log: what runs in which precision, and why."""
    if precision == "bfloat16":
        why = "native bfloat16 on this CPU" if device.type == "cpu" and cpu_has_native_bf16() else "asked for"
        return f"precision: bfloat16 autocast for the network ({why}); losses and optimizer in float32"
    return "precision: float32"
