"""MaskCut (CutLER, Wang et al., CVPR 2023): pseudo-masks by normalized cuts on a patch-affinity graph.

A pseudo-mask generator beside Free Mask (:mod:`unsolo.generators.freemask`), on the same backbone features and with the same
output (:class:`~unsolo.generators.base.FreeMaskResult`: masks at the original size, a score, a 128-d embedding, boxes).
For one image's feature map ``(C, h, w)``:

1. affinity of every pair of patches: the cosine similarity of their features, binarised (``> tau`` -> 1, else a
   small ``eps``) -- CutLER's graph;
2. the second-smallest eigenvector of the generalized problem ``(D - A) x = lambda D x`` (Shi & Malik), computed
   through the symmetric normalised Laplacian with a dense eigensolver (``torch.linalg.eigh``, on the features'
   device; fine for the few thousand patches of one image);
3. the bipartition ``x > mean(x)``; the foreground is the side holding the eigenvector's largest magnitude, unless
   it holds 3 or 4 image corners (then the other side: objects rarely fill the corners);
4. the connected component (4-connectivity at patch level) that contains the foreground's seed patch;
5. up to ``max_masks`` masks per image: the patches of every mask found are removed from the graph and the cut
   is repeated on the rest; a later mask that covers at most ``min_area_ratio`` of the patches ends the search.
   The masks are disjoint by construction, so CutLER's other stop rule (IoU > 0.5 with the previous mask) and its
   subtraction of earlier masks never apply. Each mask is upsampled (nearest) to the original size.

Deviations from CutLER, named: the features are a ResNet's (res4 by default) instead of a DINO ViT's keys; the
image keeps its aspect ratio (shortest side ``short_side``) instead of a 480 x 480 square; the patches of the masks
found are left out of the next graph (CutLER zeroes their features, which keeps them as nodes joined to everything by
``eps`` edges: with ResNet features, whose cosine similarities are all positive, the next eigenvector then tends to
single out those very patches again); a rejected cut ends the search (CutLER recomputes the same graph once more); holes are filled at patch level and
there is no CRF refinement (pydensecrf ships as source only and needs a compiler; measured without it in
docs/generators.md). CutLER writes no score; ours is Free Mask's maskness computed on the min-max normalised
eigenvector (the mean over the mask of the foreground side's soft values), so masks can be ranked and thresholded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from unsolo.data.transforms import masks_to_boxes
from unsolo.generators.base import FreeMaskResult, MaskGenerator
from unsolo.generators.freemask import channel_embedding


@dataclass
class MaskCutConfig:
    """MaskCut settings; defaults are CutLER's paper values where they carry over (tau 0.15, 3 masks per image)."""

    feature_level: Literal["res5", "res4"] = "res4"  # ResNet level whose patches make the graph (stride 16 / 32)
    short_side: int = 480  # resize: shortest image side (CutLER: a fixed 480 x 480 input)
    max_size: int = 800  # ... longest side at most this
    tau: float = 0.15  # edges with cosine similarity <= tau are cut to eps (paper: 0.15; CutLER's script: 0.2)
    eps: float = 1e-5  # weight of a cut edge
    max_masks: int = 3  # N: masks per image at most
    min_area_ratio: float = 0.01  # a later mask covering <= this fraction of the patches ends the search
    fill_holes: bool = True  # fill holes of each mask at patch level
    min_score: float = 0.0  # drop masks whose score is below this
    emb_dim: int = 128  # length of the semantic embedding (as Free Mask's, from the mask's mean feature)


def second_smallest_eigenvector(features: torch.Tensor, tau: float, eps: float = 1e-5) -> torch.Tensor:
    """Normalized-cut eigenvector of a patch graph.

    Args:
        features: ``(N, C)`` patch features (rows of zeros: removed patches, connected by ``eps`` edges only).
        tau: binarisation threshold of the cosine affinity; eps: weight of the cut edges.

    Returns:
        ``float64 (N,)``: the generalized eigenvector ``x`` of ``(D - A) x = lambda D x`` with the second-smallest
        eigenvalue, scaled so that ``x^T D x = 1`` (its sign is arbitrary, as any eigensolver's).
    """
    f = F.normalize(features.double(), dim=1)
    a = f @ f.T
    a = torch.where(a > tau, torch.ones_like(a), torch.full_like(a, eps))
    d = a.sum(1)
    inv_sqrt = d.rsqrt()
    lap = torch.eye(len(d), dtype=a.dtype, device=a.device) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    _, vecs = torch.linalg.eigh(lap)
    return vecs[:, 1] * inv_sqrt  # back from the symmetric problem's y = D^1/2 x


def corner_count(mask: np.ndarray) -> int:
    """How many of the four corners of a 2-D boolean mask are set."""
    return int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1])


def foreground_of(vec: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bipartition of an eigenvector over the ``valid`` patches into the foreground component (CutLER's rules).

    Args:
        vec: ``(n,)`` eigenvector of the graph of the valid patches; valid: ``bool (h, w)`` with ``n`` set cells.

    Returns ``(mask bool (h, w), soft float (h, w) in [0, 1], higher = foreground side, 0 off the graph)``.
    """
    full = np.zeros(valid.shape, dtype=np.float64)
    full[valid] = vec
    fg = valid & (full > vec.mean())
    seed = np.unravel_index(int(np.argmax(np.where(valid, np.abs(full), -1.0))), valid.shape)
    if corner_count(fg) >= 3 or not fg[seed]:
        full, fg = -full, valid & ~fg
    seed = np.unravel_index(int(np.argmax(np.where(valid, full, -np.inf))), valid.shape)
    labels, _ = ndimage.label(fg)
    comp = (labels == labels[seed]) & fg
    lo, hi = float(full[valid].min()), float(full[valid].max())
    soft = np.where(valid, (full - lo) / (hi - lo), 0.0) if hi > lo else np.zeros(valid.shape)
    return comp, soft


def maskcut(features: torch.Tensor, image_size: tuple[int, int], cfg: MaskCutConfig | None = None) -> FreeMaskResult:
    """MaskCut for one image.

    Args:
        features: ``float (C, h, w)`` backbone feature map of the (resized) image.
        image_size: ``(H, W)`` of the ORIGINAL image: masks are upsampled (nearest) straight to it.

    Returns:
        a :class:`~unsolo.generators.base.FreeMaskResult` in discovery order (the first cut first), XYXY tight boxes.
    """
    cfg = cfg or MaskCutConfig()
    H, W = int(image_size[0]), int(image_size[1])
    c, h, w = features.shape
    flat = features.reshape(c, h * w).T.float()  # (N, C)
    valid = np.ones((h, w), dtype=bool)  # patches still in the graph
    patch_masks, scores = [], []
    for i in range(cfg.max_masks):
        if valid.sum() < 2:
            break
        idx = torch.from_numpy(np.flatnonzero(valid)).to(features.device)
        vec = second_smallest_eigenvector(flat[idx], cfg.tau, cfg.eps).cpu().numpy()
        comp, soft = foreground_of(vec, valid)
        if cfg.fill_holes:
            comp = ndimage.binary_fill_holes(comp) & valid
        if not comp.any() or (i > 0 and comp.mean() <= cfg.min_area_ratio):
            break
        patch_masks.append(comp)
        scores.append(float(soft[comp].mean()))
        valid &= ~comp
    if not patch_masks:
        return FreeMaskResult.empty((H, W), cfg.emb_dim, features.device)
    pm = torch.from_numpy(np.stack(patch_masks)).to(features.device)  # (n, h, w)
    full = F.interpolate(pm[:, None].float(), size=(H, W), mode="nearest")[:, 0] > 0.5  # (n, H, W), disjoint
    queries = F.normalize(torch.stack([F.normalize(flat[m.reshape(-1)], dim=1).mean(0) for m in pm]), dim=1)
    result = FreeMaskResult(full, torch.tensor(scores, dtype=torch.float32, device=full.device),
                            channel_embedding(queries, cfg.emb_dim), masks_to_boxes(full))
    keep = (result.masks.flatten(1).any(1)) & (result.scores >= cfg.min_score)
    return result.filter(keep)


class MaskCut(MaskGenerator):
    """CutLER's generator: :func:`maskcut` (normalized cuts) on the backbone's ``cfg.feature_level`` map."""

    name = "maskcut"
    label = "MaskCut"
    config_class = MaskCutConfig
    uses_backbone = True
    summary = "MaskCut (CutLER): normalized cuts on the patch graph"

    def __call__(self, features: torch.Tensor, image_size: tuple[int, int]) -> FreeMaskResult:
        return maskcut(features, image_size, self.cfg)
