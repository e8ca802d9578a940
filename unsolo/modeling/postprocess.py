"""Post-processing shared by Free Mask and SOLOv2 inference: Matrix NMS and projection boxes."""

from __future__ import annotations

from typing import Literal

import torch


def matrix_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor | None = None,
    kernel: Literal["gaussian", "linear"] = "gaussian",
    sigma: float = 2.0,
    sum_masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Matrix NMS (SOLOv2): decay every score by its overlap with higher-scored masks of the same label.

    Args:
        masks: ``(N, H, W)`` binary masks (bool or 0/1), **sorted by score, descending**.
        scores: ``(N,)`` scores in the same order.
        labels: ``(N,)`` class labels; ``None`` treats all masks as one class (class-agnostic).
        kernel: ``"gaussian"`` -> ``exp(-sigma * iou^2)`` ratio; ``"linear"`` -> ``(1 - iou) / (1 - comp)``.
        sigma: the Gaussian kernel's sigma (FreeSOLO: 2.0).
        sum_masks: ``(N,)`` mask areas, if already computed.

    Returns:
        ``(N,)`` decayed scores, in the input order.
    """
    n = masks.shape[0]
    if n == 0:
        return scores.clone()
    flat = masks.reshape(n, -1).float()  # (N, HW)
    if sum_masks is None:
        sum_masks = flat.sum(1)
    inter = flat @ flat.t()  # (N, N)
    areas = sum_masks.float().expand(n, n)
    union = areas + areas.t() - inter
    iou = (inter / union.clamp(min=1e-12)).triu(diagonal=1)  # iou[i, j], i scored above j
    if labels is not None:
        same = (labels[:, None] == labels[None, :]).float().triu(diagonal=1)
        iou = iou * same
    # comp[i]: the largest IoU of mask i with any mask scored above it
    comp = iou.max(0).values.expand(n, n).t()  # comp[i, j] = comp_i
    if kernel == "gaussian":
        decay = torch.exp(-sigma * iou**2)
        comp_decay = torch.exp(-sigma * comp**2)
        coef = (decay / comp_decay).min(0).values
    elif kernel == "linear":
        coef = ((1 - iou) / (1 - comp)).min(0).values
    else:
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r}")
    return scores * coef


def projection_boxes(masks: torch.Tensor) -> torch.Tensor:
    """FreeSOLO's projection box of binary masks ``(N, H, W)`` -> ``(N, 4)`` **XYXY** float pixels.

    Width/height are the numbers of occupied columns/rows; the centre is the centre of mass of the
    column/row occupancy vectors. For a mask with one contiguous extent this is
    ``[x_min - 0.5, y_min - 0.5, x_max + 0.5, y_max + 0.5]``.
    """
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    m = masks.bool()
    cols = m.any(dim=1).float()  # (N, W)
    rows = m.any(dim=2).float()  # (N, H)
    bw, bh = cols.sum(1), rows.sum(1)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    cx = (cols * xs).sum(1) / bw.clamp(min=1)
    cy = (rows * ys).sum(1) / bh.clamp(min=1)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
