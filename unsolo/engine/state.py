"""What a resumable loop saves besides weights: RNG states, the last-checkpoint marker, the metrics log."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from unsolo.errors import UnsoloError
from unsolo.utils.io import atomic_write


def rng_states() -> dict:
    """Python, NumPy, torch (and CUDA) generator states, in a form ``torch.save(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def checkpoint_name(iteration: int) -> str:
    """``model_0004999.pth`` after iteration 4999 (0-based; detectron2's naming)."""
    return f"model_{iteration:07d}.pth"


def find_resume_checkpoint(out: Path) -> Path | None:
    """The checkpoint named in ``RUN/last_checkpoint``, if any."""
    marker = out / "last_checkpoint"
    if not marker.is_file():
        return None
    path = out / marker.read_text().strip()
    if not path.is_file():
        raise UnsoloError(f"{marker} names {path.name}, which does not exist (start again with --no-resume)")
    return path


def truncate_metrics(metrics: Path, start_iter: int) -> None:
    """Drop log lines at or after ``start_iter`` (written after the checkpoint a run resumes from)."""
    if not metrics.is_file():
        return
    keep = []
    for line in metrics.read_text().splitlines():
        try:
            if json.loads(line).get("iteration", -1) < start_iter:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write(metrics, lambda f: f.write("".join(x + "\n" for x in keep)))


def read_checkpoint(path: Path, hint: str) -> dict:
    """A training checkpoint read on the CPU; an unreadable file is a one-line error that ends with ``hint``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnsoloError(f"cannot read checkpoint {path} ({str(e).splitlines()[0] or type(e).__name__}); {hint}") from None
