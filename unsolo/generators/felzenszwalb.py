"""A classical pseudo-mask generator: Felzenszwalb-Huttenlocher graph segments with a shape score, no learning.

Beside Free Mask and MaskCut behind the same output (:class:`~unsolo.generators.base.FreeMaskResult`), so that what SOLO
learns on top of a bottom-up segmentation can be measured against the segmentation itself (docs/baselines.md is
the same algorithm used as a baseline). Every segment of ``skimage.segmentation.felzenszwalb`` (scikit-image: the
reference implementation, fast C code) with at least ``min_area`` pixels is a candidate, scored by

    score = fill * border_penalty,   fill = area / area of the segment's tight box (1 for a full rectangle)

where ``border_penalty`` applies when the segment touches two or more image sides (such segments are mostly
background). The best ``max_masks`` candidates are kept. No embedding is written (the embedding loss skips labels
without one).

Two filters, off in the ``small`` / ``official`` presets and on in ``objects`` (chosen on the training split of the
real-object scenes, docs/generators.md): ``min_area_frac`` drops the fragments (on photographs most segments are a
few dozen pixels of texture) and ``max_sides`` the segments that touch more image sides than that (the
photograph's background regions); ``score="area"`` ranks what is left by ``fill * sqrt(area fraction)``, so that
whole objects come before their parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unsolo.data.transforms import masks_to_boxes
from unsolo.errors import UnsoloError
from unsolo.generators.base import FreeMaskResult, MaskGenerator


@dataclass
class FelzenszwalbConfig:
    """Felzenszwalb segments as pseudo-masks; defaults chosen on held-out synthetic scenes (docs/baselines.md)."""

    short_side: int = 0  # resize the shortest side to this first (0: the image as it is)
    max_size: int = 1333  # ... longest side at most this
    scale: float | None = None  # felzenszwalb 'scale' (larger: larger segments); None: 8 x the shortest side
    sigma: float = 0.8  # Gaussian smoothing before segmenting
    min_size: int | None = None  # felzenszwalb 'min_size'; None: shortest side / 8 (at least 8)
    min_area: int = 16  # candidates need at least this many pixels (at the segmented size)
    border_penalty: float = 0.5  # score factor for segments touching two or more image sides
    max_masks: int = 100  # keep the best this many per image
    min_score: float = 0.0  # drop masks whose score is below this
    min_area_frac: float = 0.0  # drop segments smaller than this fraction of the image (0: off)
    max_sides: int = 4  # drop segments touching more than this many image sides (4: off)
    score: str = "fill"  # "fill": fill x border penalty; "area": that x sqrt(area / image area)


SCORES = ("fill", "area")


def check_config(cfg: FelzenszwalbConfig) -> None:
    """One-line errors for settings the generator cannot use (called before any image is segmented)."""
    if cfg.score not in SCORES:
        raise UnsoloError(f"felzenszwalb score must be one of {', '.join(SCORES)}, got {cfg.score!r}")
    if not 0.0 <= cfg.min_area_frac < 1.0:
        raise UnsoloError(f"felzenszwalb min_area_frac must be in [0, 1), got {cfg.min_area_frac}")
    if not 0 <= cfg.max_sides <= 4:
        raise UnsoloError(f"felzenszwalb max_sides must be 0-4, got {cfg.max_sides}")


def segment_scores(labels: np.ndarray, min_area: int, border_penalty: float, max_sides: int = 4,
                   area_score: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Label image ``(H, W)`` -> ``(masks bool (N, H, W), scores (N,))`` of the segments with >= ``min_area`` pixels
    that touch at most ``max_sides`` image sides; ``area_score``: scores x sqrt(area fraction) (module docstring)."""
    h, w = labels.shape
    masks, scores = [], []
    for k in np.unique(labels):
        m = labels == k
        area = int(m.sum())
        if area < min_area:
            continue
        ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        sides = int(ys[0] == 0) + int(ys[-1] == h - 1) + int(xs[0] == 0) + int(xs[-1] == w - 1)
        if sides > max_sides:
            continue
        fill = area / float((ys[-1] - ys[0] + 1) * (xs[-1] - xs[0] + 1))
        value = fill * (border_penalty if sides >= 2 else 1.0)
        if area_score:
            value *= float(np.sqrt(area / float(h * w)))
        masks.append(m)
        scores.append(value)
    if not masks:
        return np.zeros((0, h, w), dtype=bool), np.zeros((0,), dtype=np.float32)
    return np.stack(masks), np.asarray(scores, dtype=np.float32)


def felzenszwalb_masks(image: np.ndarray, image_size: tuple[int, int], cfg: FelzenszwalbConfig | None = None
                       ) -> FreeMaskResult:
    """Pseudo-masks of one RGB ``uint8 (h, w, 3)`` image (possibly resized), at the original ``image_size``."""
    from skimage.segmentation import felzenszwalb

    cfg = cfg or FelzenszwalbConfig()
    check_config(cfg)
    short = min(image.shape[:2])
    scale = cfg.scale if cfg.scale is not None else 8.0 * short
    min_size = cfg.min_size if cfg.min_size is not None else max(8, short // 8)
    labels = felzenszwalb(image, scale=scale, sigma=cfg.sigma, min_size=min_size)
    min_area = max(cfg.min_area, int(np.ceil(cfg.min_area_frac * labels.shape[0] * labels.shape[1])))
    masks, scores = segment_scores(labels, min_area, cfg.border_penalty, cfg.max_sides, cfg.score == "area")
    order = np.argsort(-scores, kind="stable")[: cfg.max_masks]
    order = order[scores[order] >= cfg.min_score]
    m = torch.from_numpy(masks[order])
    H, W = int(image_size[0]), int(image_size[1])
    if m.shape[1:] != (H, W):
        m = F.interpolate(m[:, None].float(), size=(H, W), mode="nearest")[:, 0] > 0.5
    return FreeMaskResult(m, torch.from_numpy(scores[order]), torch.zeros((len(order), 0)), masks_to_boxes(m))


class Felzenszwalb(MaskGenerator):
    """The classical generator: :func:`felzenszwalb_masks` on the resized RGB image (no backbone, no learning)."""

    name = "felzenszwalb"
    label = "Felzenszwalb"
    config_class = FelzenszwalbConfig
    uses_backbone = False
    summary = "Felzenszwalb graph segments with a shape score (classical, no learning)"

    def __init__(self, cfg: FelzenszwalbConfig | None = None):
        super().__init__(cfg)
        check_config(self.cfg)  # at build time: a run fails before its first stage, not at its first image

    def __call__(self, image: np.ndarray, image_size: tuple[int, int]) -> FreeMaskResult:
        return felzenszwalb_masks(image, image_size, self.cfg)
