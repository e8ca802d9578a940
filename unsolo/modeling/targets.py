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


def downsample_masks(masks: torch.Tensor, stride: int = 4, as_numpy: bool = False) -> torch.Tensor | np.ndarray:
    """``mmcv.imrescale(mask, 1/stride)`` of binary masks: cv2 bilinear resize of the 0/1 ``uint8`` masks to
    ``(int(w/stride + 0.5), int(h/stride + 0.5))``.

    Args:
        masks: ``(N, H, W)`` bool/0-1 masks.
    Returns:
        ``uint8 (N, h', w')`` 0/1 masks on the input's device (a host array with ``as_numpy``).
    """
    n, h, w = masks.shape
    nh, nw = int(h / stride + 0.5), int(w / stride + 0.5)
    if n == 0:
        empty = np.zeros((0, nh, nw), dtype=np.uint8)
        return empty if as_numpy else torch.from_numpy(empty).to(masks.device)
    arr = masks.to(torch.uint8).cpu().numpy()
    out = np.empty((n, nh, nw), dtype=np.uint8)
    for start in range(0, n, 256):  # cv2 handles at most 512 channels at once
        chunk = np.ascontiguousarray(arr[start : start + 256].transpose(1, 2, 0))  # (H, W, n)
        res = cv2.resize(chunk, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if res.ndim == 2:
            res = res[..., None]
        out[start : start + 256] = res.transpose(2, 0, 1)
    return out if as_numpy else torch.from_numpy(out).to(masks.device)


def _grid_index(coord: torch.Tensor, size: int, num_grid: int) -> torch.Tensor:
    # The official float32 expression ``int((coord / size) // (1. / S))``, kept bit-exact (element-wise).
    return ((coord / size) // (1.0 / num_grid)).to(torch.int64)


def _to_grid_masks(small: np.ndarray, hf: int, wf: int) -> np.ndarray:
    """Stride-4 masks ``(N, h', w')`` placed on the ``(hf, wf)`` mask-feature canvas (cropped or zero padded)."""
    canvas = np.zeros((small.shape[0], hf, wf), dtype=np.uint8)
    sh, sw = min(hf, small.shape[1]), min(wf, small.shape[2])
    canvas[:, :sh, :sw] = small[:, :sh, :sw]
    return canvas


def assign_level(
    boxes: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    valid: torch.Tensor,
    grid_masks: np.ndarray,
    labels: torch.Tensor,
    embs: torch.Tensor,
    num_grid: int,
    padded_size: tuple[int, int],
    num_classes: int,
    sigma: float = 0.2,
    usemask: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> LevelTargets:
    """Targets of one level for the instances already chosen for it, computed on the host.

    Args:
        boxes: ``float (N, 4)`` XYXY pixels in the (resized, unpadded) input image.
        cx, cy: ``float32 (N,)`` centres of mass of the masks (:func:`center_of_mass`); valid: ``bool (N,)``
            non-empty masks (an empty one, e.g. fully occluded by copy-paste, gets no target).
        grid_masks: ``uint8 (N, Hf, Wf)`` masks downsampled by 4 (:func:`downsample_masks`) on the mask-feature
            canvas of the padded input.
        labels: ``int64 (N,)``; embs: ``float (N, E)``.
        num_grid: ``S``; padded_size: ``(Hp, Wp)`` of the padded network input (multiple of 4).
        num_classes: the background index of the category map; sigma: centre-region scale (0.2).
        usemask: ``bool (N,)`` full-mask supervision per instance (None = all True).
        device: where the returned tensors go.

    Every per-instance input is a host tensor: the assignment is a few vectorised operations plus a loop over the
    instances in plain Python integers, so it launches no device kernel and waits on no device result (on a GPU the
    earlier tensor-per-cell version cost thousands of launches and synchronisations per iteration).
    """
    n = labels.shape[0]
    usemask = torch.ones(n, dtype=torch.bool) if usemask is None else usemask
    hp, wp = padded_size
    hf, wf = hp // 4, wp // 4
    e = embs.shape[1]
    cate = np.full((num_grid, num_grid), num_classes, dtype=np.int64)
    emb = np.zeros((num_grid, num_grid, e), dtype=np.float32)
    order: list[int] = []
    owner: list[int] = []
    if n:
        boxes = boxes.float()
        half_w = 0.5 * (boxes[:, 2] - boxes[:, 0]) * sigma  # (N,) float32 like the official code
        half_h = 0.5 * (boxes[:, 3] - boxes[:, 1]) * sigma
        ci = _grid_index(cy, hp, num_grid).tolist()
        cj = _grid_index(cx, wp, num_grid).tolist()
        top = _grid_index(cy - half_h, hp, num_grid).tolist()
        down = _grid_index(cy + half_h, hp, num_grid).tolist()
        left = _grid_index(cx - half_w, wp, num_grid).tolist()
        right = _grid_index(cx + half_w, wp, num_grid).tolist()
        lab = labels.tolist()
        emb_np = embs.float().numpy()
        ok = valid.tolist()
        for k in range(n):
            if not ok[k]:
                continue
            t, d = max(0, top[k], ci[k] - 1), min(num_grid - 1, down[k], ci[k] + 1)
            le, r = max(0, left[k], cj[k] - 1), min(num_grid - 1, right[k], cj[k] + 1)
            cate[t : d + 1, le : r + 1] = lab[k]
            emb[t : d + 1, le : r + 1] = emb_np[k]
            for i in range(t, d + 1):
                for j in range(le, r + 1):
                    order.append(i * num_grid + j)
                    owner.append(k)
    positive = np.zeros(num_grid * num_grid, dtype=bool)
    positive[order] = True
    masks = grid_masks[owner] if owner else np.zeros((0, hf, wf), dtype=np.uint8)
    use = usemask.bool()[owner] if owner else torch.zeros(0, dtype=torch.bool)
    return LevelTargets(
        torch.from_numpy(cate).to(device),
        torch.from_numpy(emb).to(device),
        torch.from_numpy(positive).to(device),
        torch.tensor(order, dtype=torch.int64).to(device),
        torch.from_numpy(np.ascontiguousarray(masks)).to(device),
        use.to(device),
    )


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
    """All levels' targets of one image (``SOLOv2.get_ground_truth_single``), on the device of ``labels``.

    Args:
        boxes: ``float (N, 4)`` XYXY pixels; masks: ``bool (N, h, w)`` at the resized, unpadded image size;
        labels: ``int64 (N,)``; embs: ``float (N, E)`` (zeros = unknown).
        padded_size: ``(Hp, Wp)``; grids / scale_ranges: per level (ranges inclusive on ``sqrt(w*h)``).
        usemask: ``bool (N,)`` full-mask supervision per instance (None = all True).

    The centres of mass are reduced where the masks are; everything else is done on the host after one transfer.
    """
    device = labels.device
    n = labels.shape[0]
    hp, wp = padded_size
    usemask = torch.ones(n, dtype=torch.bool) if usemask is None else torch.as_tensor(usemask).bool().reshape(-1)
    if n:
        cx, cy = center_of_mass(masks)
        valid = masks.flatten(1).any(1)
        grid_masks = _to_grid_masks(downsample_masks(masks, 4, as_numpy=True), hp // 4, wp // 4)
    else:
        cx = cy = torch.zeros(0)
        valid = torch.zeros(0, dtype=torch.bool)
        grid_masks = np.zeros((0, hp // 4, wp // 4), dtype=np.uint8)
    boxes, cx, cy, valid = (t.cpu() for t in (boxes.float().reshape(n, 4), cx, cy, valid))
    labels, embs, usemask = labels.cpu(), embs.cpu(), usemask.cpu()
    areas = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # (N,)
    out = []
    for (lo, hi), s in zip(scale_ranges, grids):
        hit = ((areas >= lo) & (areas <= hi)).nonzero().flatten()
        out.append(assign_level(boxes[hit], cx[hit], cy[hit], valid[hit], grid_masks[hit.numpy()], labels[hit],
                                embs[hit], s, padded_size, num_classes, sigma, usemask[hit], device))
    return out


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Filled boxes as masks: ``float (N, 4)`` XYXY pixel edges -> ``bool (N, H, W)``.

    Pixel ``(y, x)`` is inside when ``floor(x1) <= x < ceil(x2)`` and ``floor(y1) <= y < ceil(y2)`` (the inverse of
    :func:`unsolo.data.transforms.masks_to_boxes`: the tight box of the result is the box, for integer boxes).
    The target of a box-supervised (``usemask`` 0) instance.
    """
    n = boxes.shape[0]
    b = boxes.float()
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32)
    inx = (xs[None] >= torch.floor(b[:, 0:1])) & (xs[None] < torch.ceil(b[:, 2:3]))  # (N, W)
    iny = (ys[None] >= torch.floor(b[:, 1:2])) & (ys[None] < torch.ceil(b[:, 3:4]))  # (N, H)
    return (iny[:, :, None] & inx[:, None, :]).reshape(n, height, width)
