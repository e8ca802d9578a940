"""SOLOv2 target assignment as in FreeSOLO (``SOLOv2.get_ground_truth_single``), as pure functions.

Every (pseudo) instance is assigned to each FPN level whose scale range holds ``sqrt(box_w * box_h)`` (ranges
overlap, so an instance can land on two levels). On a level with an ``S x S`` grid, the cells of the
``sigma``-scaled box around the mask's centre of mass, clamped to the 3x3 neighbourhood of the centre cell, are
positives; each positive cell gets the instance's class and embedding, and a copy of the instance mask downsampled
to stride 4 (cv2 bilinear, as ``mmcv.imrescale``) is appended to the level's mask targets, with the flat cell
index appended to ``grid_order`` (duplicates possible when two instances share a cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch


@dataclass
class LevelTargets:
    """Targets of one image on one FPN level.

    Attributes:
        cate: ``int64 (S, S)`` class per cell; ``num_classes`` = background.
        emb: ``float32 (S, S, E)`` target embedding per cell (zeros where none).
        positive: ``bool (S*S,)`` positive cells.
        grid_order: ``int64 (N,)`` flat cell index of each mask target (may repeat).
        masks: ``uint8 (N, Hf, Wf)`` mask targets at the mask-feature resolution (stride 4 of the padded input).
        usemask: ``bool (N,)`` per mask target: True = supervised by the full mask, False = box-supervised
            (the target is the filled box; few-label ``usemask: 0`` annotations). All True by default.
    """

    cate: torch.Tensor
    emb: torch.Tensor
    positive: torch.Tensor
    grid_order: torch.Tensor
    masks: torch.Tensor
    usemask: torch.Tensor | None = None


def center_of_mass(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre of mass ``(cx, cy)`` of ``(N, H, W)`` masks in pixels, float32 (0 for an empty mask)."""
    _, h, w = masks.shape
    m = masks.float()
    ys = torch.arange(h, dtype=torch.float32, device=masks.device)
    xs = torch.arange(w, dtype=torch.float32, device=masks.device)
    m00 = m.sum(dim=(1, 2)).clamp(min=1e-6)
    cx = (m * xs).sum(dim=(1, 2)) / m00
    cy = (m * ys[:, None]).sum(dim=(1, 2)) / m00
    return cx, cy


def downsample_masks(masks: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """``mmcv.imrescale(mask, 1/stride)`` of binary masks: cv2 bilinear resize of the 0/1 ``uint8`` masks to
    ``(int(w/stride + 0.5), int(h/stride + 0.5))``.

    Args:
        masks: ``(N, H, W)`` bool/0-1 masks.
    Returns:
        ``uint8 (N, h', w')`` 0/1 masks on the input's device.
    """
    n, h, w = masks.shape
    nh, nw = int(h / stride + 0.5), int(w / stride + 0.5)
    if n == 0:
        return torch.zeros((0, nh, nw), dtype=torch.uint8, device=masks.device)
    arr = masks.to(torch.uint8).cpu().numpy()
    out = np.empty((n, nh, nw), dtype=np.uint8)
    for start in range(0, n, 256):  # cv2 handles at most 512 channels at once
        chunk = np.ascontiguousarray(arr[start : start + 256].transpose(1, 2, 0))  # (H, W, n)
        res = cv2.resize(chunk, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if res.ndim == 2:
            res = res[..., None]
        out[start : start + 256] = res.transpose(2, 0, 1)
    return torch.from_numpy(out).to(masks.device)


def _grid_index(coord: torch.Tensor, size: int, num_grid: int) -> int:
    # The official float32 expression ``int((coord / size) // (1. / S))``, kept bit-exact.
    return int(((coord / size) // (1.0 / num_grid)).item())


def assign_level(
    boxes: torch.Tensor,
    masks_full: torch.Tensor,
    masks_small: torch.Tensor,
    labels: torch.Tensor,
    embs: torch.Tensor,
    num_grid: int,
    padded_size: tuple[int, int],
    num_classes: int,
    sigma: float = 0.2,
    usemask: torch.Tensor | None = None,
) -> LevelTargets:
    """Targets of one level for the instances already chosen for it.

    Args:
        boxes: ``float (N, 4)`` XYXY pixels in the (resized, unpadded) input image.
        masks_full: ``(N, h, w)`` masks at the input resolution (for the centre of mass).
        masks_small: ``uint8 (N, h', w')`` masks downsampled by 4 (:func:`downsample_masks`).
        labels: ``int64 (N,)``; embs: ``float (N, E)``.
        num_grid: ``S``; padded_size: ``(Hp, Wp)`` of the padded network input (multiple of 4).
        num_classes: the background index of the category map; sigma: centre-region scale (0.2).
        usemask: ``bool (N,)`` full-mask supervision per instance (None = all True).
    """
    device = labels.device
    if usemask is None:
        usemask = torch.ones(labels.shape[0], dtype=torch.bool, device=device)
    hp, wp = padded_size
    hf, wf = hp // 4, wp // 4
    e = embs.shape[1]
    cate = torch.full((num_grid, num_grid), num_classes, dtype=torch.int64, device=device)
    emb = torch.zeros((num_grid, num_grid, e), dtype=torch.float32, device=device)
    positive = torch.zeros(num_grid * num_grid, dtype=torch.bool, device=device)
    order: list[int] = []
    mask_list: list[torch.Tensor] = []
    use_list: list[bool] = []
    if boxes.shape[0]:
        half_w = 0.5 * (boxes[:, 2] - boxes[:, 0]) * sigma  # (N,) float32 like the official code
        half_h = 0.5 * (boxes[:, 3] - boxes[:, 1]) * sigma
        cx, cy = center_of_mass(masks_full)
        valid = masks_full.flatten(1).any(1)
        for k in range(boxes.shape[0]):
            if not bool(valid[k]):
                continue  # empty mask (e.g. fully occluded by copy-paste)
            ci = _grid_index(cy[k], hp, num_grid)
            cj = _grid_index(cx[k], wp, num_grid)
            top = max(0, _grid_index(cy[k] - half_h[k], hp, num_grid))
            down = min(num_grid - 1, _grid_index(cy[k] + half_h[k], hp, num_grid))
            left = max(0, _grid_index(cx[k] - half_w[k], wp, num_grid))
            right = min(num_grid - 1, _grid_index(cx[k] + half_w[k], wp, num_grid))
            top, down = max(top, ci - 1), min(down, ci + 1)
            left, right = max(left, cj - 1), min(right, cj + 1)
            cate[top : down + 1, left : right + 1] = labels[k]
            emb[top : down + 1, left : right + 1] = embs[k].float()
            canvas = torch.zeros((hf, wf), dtype=torch.uint8, device=device)
            sm = masks_small[k][:hf, :wf]
            canvas[: sm.shape[0], : sm.shape[1]] = sm
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    idx = i * num_grid + j
                    positive[idx] = True
                    order.append(idx)
                    mask_list.append(canvas)
                    use_list.append(bool(usemask[k]))
    masks = torch.stack(mask_list) if mask_list else torch.zeros((0, hf, wf), dtype=torch.uint8, device=device)
    return LevelTargets(cate, emb, positive, torch.tensor(order, dtype=torch.int64, device=device), masks,
                        torch.tensor(use_list, dtype=torch.bool, device=device))


def assign_targets(
    boxes: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    embs: torch.Tensor,
    padded_size: tuple[int, int],
    grids: Sequence[int],
    scale_ranges: Sequence[tuple[float, float]],
    num_classes: int,
    sigma: float = 0.2,
    usemask: torch.Tensor | None = None,
) -> list[LevelTargets]:
    """All levels' targets of one image (``SOLOv2.get_ground_truth_single``).

    Args:
        boxes: ``float (N, 4)`` XYXY pixels; masks: ``bool (N, h, w)`` at the resized, unpadded image size;
        labels: ``int64 (N,)``; embs: ``float (N, E)`` (zeros = unknown).
        padded_size: ``(Hp, Wp)``; grids / scale_ranges: per level (ranges inclusive on ``sqrt(w*h)``).
        usemask: ``bool (N,)`` full-mask supervision per instance (None = all True).
    """
    boxes = boxes.float()
    if usemask is None:
        usemask = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    usemask = usemask.to(labels.device).bool().reshape(-1)
    areas = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # (N,)
    small = downsample_masks(masks, 4) if masks.shape[0] else None
    out = []
    for (lo, hi), s in zip(scale_ranges, grids):
        hit = ((areas >= lo) & (areas <= hi)).nonzero().flatten()
        if hit.numel() == 0:
            out.append(assign_level(boxes[:0], masks[:0], masks.new_zeros((0, 1, 1), dtype=torch.uint8),
                                    labels[:0], embs[:0], s, padded_size, num_classes, sigma, usemask[:0]))
            continue
        out.append(assign_level(boxes[hit], masks[hit], small[hit], labels[hit], embs[hit], s, padded_size,
                                num_classes, sigma, usemask[hit]))
    return out


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Filled boxes as masks: ``float (N, 4)`` XYXY pixel edges -> ``bool (N, H, W)``.

    Pixel ``(y, x)`` is inside when ``floor(x1) <= x < ceil(x2)`` and ``floor(y1) <= y < ceil(y2)`` (the inverse of
    :func:`freesolo.data.transforms.masks_to_boxes`: the tight box of the result is the box, for integer boxes).
    The target of a box-supervised (``usemask`` 0) instance.
    """
    n = boxes.shape[0]
    b = boxes.float()
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32)
    inx = (xs[None] >= torch.floor(b[:, 0:1])) & (xs[None] < torch.ceil(b[:, 2:3]))  # (N, W)
    iny = (ys[None] >= torch.floor(b[:, 1:2])) & (ys[None] < torch.ceil(b[:, 3:4]))  # (N, H)
    return (iny[:, :, None] & inx[:, None, :]).reshape(n, height, width)
