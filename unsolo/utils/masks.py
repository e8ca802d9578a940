"""Comparing two sets of binary masks: IoU matrix and greedy one-to-one matching (parity checks, export checks)."""

from __future__ import annotations

import numpy as np


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, M)`` of bool masks ``(N, ...)`` and ``(M, ...)`` of the same size."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    a = np.asarray(a).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b).reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    return inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1)


def greedy_match(iou: np.ndarray, min_iou: float = 0.5) -> dict[int, int]:
    """One-to-one matching, the pairs of highest IoU first, pairs with IoU <= ``min_iou`` never matched:
    ``{row: column}``."""
    pairs = sorted(((iou[i, j], i, j) for i in range(iou.shape[0]) for j in range(iou.shape[1]) if iou[i, j] > min_iou),
                   reverse=True)
    matched: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in pairs:
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched
