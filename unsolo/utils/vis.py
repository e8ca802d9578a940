"""Overlays of instance masks on images, for a look at Free Mask output and predictions."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def palette(n: int, seed: int = 0) -> np.ndarray:
    """``n`` well-separated RGB colours ``uint8 (n, 3)`` (golden-ratio hue walk)."""
    hues = (seed * 0.137 + np.arange(n) * 0.618033988749895) % 1.0
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)] for h in hues], dtype=np.uint8).reshape(-1, 3)


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray | None = None,
    alpha: float = 0.5,
    boxes_xywh: np.ndarray | None = None,
) -> np.ndarray:
    """Blend binary masks ``(N, H, W)`` onto an RGB ``uint8 (H, W, 3)`` image; outlines and scores drawn.

    Returns a new ``uint8 (H, W, 3)`` image.
    """
    out = image.astype(np.float32).copy()
    masks = np.asarray(masks).astype(bool)
    colors = palette(len(masks))
    for m, c in zip(masks, colors):
        out[m] = out[m] * (1 - alpha) + c.astype(np.float32) * alpha
    canvas = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for k, (m, c) in enumerate(zip(masks, colors)):
        if not m.any():
            continue
        # outline: mask pixels with a background 4-neighbour
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        ys, xs = np.nonzero(edge)
        arr = np.asarray(canvas).copy()
        arr[ys, xs] = c
        canvas = Image.fromarray(arr)
        draw = ImageDraw.Draw(canvas)
        if boxes_xywh is not None:
            x, y, w, h = boxes_xywh[k]
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=tuple(int(v) for v in c))
        if scores is not None:
            ys2, xs2 = np.nonzero(m)
            draw.text((int(xs2.min()), max(int(ys2.min()) - 10, 0)), f"{float(scores[k]):.2f}", fill=tuple(int(v) for v in c))
    return np.asarray(canvas)


def save_overlay(path: str | Path, image: np.ndarray, masks: np.ndarray, scores: np.ndarray | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_masks(image, masks, scores)).save(path)
    return path
