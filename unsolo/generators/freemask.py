"""Free Mask: coarse instance masks from the features of a self-supervised backbone (FreeSOLO, Sec. 3.1).

The core is a pure function from one image's feature map to candidate masks (:func:`free_mask`), exactly as the
official ``demo/inference_freemask.py`` computes it:

1. keys ``K`` = the feature map ``(C, h, w)`` (``res5`` by default); queries ``Q`` = ``K`` bilinearly resized by
   each of the pyramid factors (1, 0.5, 0.25) with ``F.interpolate(scale_factor=...)`` semantics, flattened;
2. cosine similarity of every query with every key position, min-max normalised per query to [0, 1];
3. soft mask = that map; binary mask = soft >= tau (0.5); candidates need more than one foreground pixel;
4. maskness = mean soft value over the foreground; Gaussian Matrix NMS (sigma 2) on the maskness; top 20;
5. soft masks upsampled bilinearly straight to the original image size, thresholded at tau;
6. filters: decayed maskness >= 0.7, vertical centre below the top 20 % of the image, width < 95 % of it;
7. the semantic embedding: each L2-normalised query linearly resampled along channels to 128 values.

Every threshold is a field of :class:`FreeMaskConfig` whose default is the official value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from unsolo.generators.base import FreeMaskResult, MaskGenerator
from unsolo.modeling.postprocess import matrix_nms


@dataclass
class FreeMaskConfig:
    """Free Mask settings; defaults are the official values (``configs/freesolo/freemask.yaml`` + script)."""

    # --- backbone input / features
    feature_level: Literal["res5", "res4"] = "res5"  # backbone level used for keys and queries (official: C5)
    short_side: int = 800  # test-time resize: shortest image side (d2 MIN_SIZE_TEST)
    max_size: int = 1333  # ... longest side at most this (d2 MAX_SIZE_TEST)
    # --- masks from the similarity maps
    query_scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # pyramid factors applied to the key map to build queries
    mask_threshold: float = 0.5  # tau: soft mask (min-max normalised cosine similarity) >= tau is foreground
    min_mask_pixels: int = 1  # candidates need MORE than this many foreground pixels at feature resolution
    # --- ranking
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"  # Matrix NMS decay kernel
    nms_sigma: float = 2.0  # Gaussian Matrix NMS sigma
    max_masks: int = 20  # keep the top-k masks by decayed maskness, before the filters
    maskness_threshold: float = 0.7  # keep masks whose decayed maskness is >= this
    top_border: float = 0.2  # drop masks whose vertical centre is in the top `top_border` fraction of the image
    max_width_ratio: float = 0.95  # drop masks whose projection-box width is >= this fraction of the image width
    # --- outputs
    emb_dim: int = 128  # length of the semantic embedding (linear resampling of the normalised query)
    official_bbox: bool = False  # write the official XYXY projection box as `bbox` instead of tight XYWH (quirk Q1)


@dataclass
class FreeMaskCandidates:
    """Survivors of Matrix NMS + top-k, still at feature resolution (before upsampling and the filters).

    ``soft``: ``float32 (N, h, w)`` soft masks in [0, 1]; ``scores``: ``(N,)`` decayed maskness, descending;
    ``queries``: ``(N, C)`` L2-normalised queries (the embedding is computed from them on demand).
    """

    soft: torch.Tensor
    scores: torch.Tensor
    queries: torch.Tensor


# ----------------------------------------------------------------------------------------------- steps
def pyramid_queries(keys: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 0.25)) -> torch.Tensor:
    """Queries from a key map ``(C, h, w)``: the map resized by each factor, flattened -> ``(Nq, C)``.

    Uses ``F.interpolate(scale_factor=s, mode="bilinear", align_corners=False)`` like the official code: the
    output size is ``floor(h * s)`` and source coordinates use ``1 / s`` (not the size ratio), which matters
    for odd sizes (25 -> 12). No anti-aliasing. Scales whose output would be empty are skipped.
    """
    c, h, w = keys.shape
    out = []
    for s in scales:
        if int(h * s) < 1 or int(w * s) < 1:
            continue
        if s == 1.0:  # bilinear at factor 1 is the identity (exactly): skip the pass over C x h x w
            q = keys
        else:
            q = F.interpolate(keys[None], scale_factor=s, mode="bilinear", align_corners=False)[0]  # (C, h_s, w_s)
        out.append(q.reshape(c, -1))  # (C, h_s * w_s)
    return torch.cat(out, dim=1).t()  # (Nq, C), a transposed view of a contiguous (C, Nq): no transpose copy


def similarity_maps(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Per-query min-max normalised cosine similarity: keys ``(C, h, w)``, queries ``(Nq, C)`` (both are
    L2-normalised here) -> ``(Nq, h, w)`` in [0, 1].

    A constant row (zero range) becomes all zeros instead of the official NaN (which then gives an empty mask:
    the same outcome).
    """
    c, h, w = keys.shape
    k = F.normalize(keys.reshape(c, -1), dim=0)  # (C, hw)
    q = F.normalize(queries, dim=1)  # (Nq, C)
    attn = q @ k  # (Nq, hw)
    attn = attn - attn.min(dim=1, keepdim=True).values
    attn = attn / attn.max(dim=1, keepdim=True).values.clamp(min=torch.finfo(attn.dtype).tiny)
    return attn.reshape(-1, h, w)  # (Nq, h, w)


def channel_embedding(queries: torch.Tensor, dim: int = 128) -> torch.Tensor:
    """The official semantic embedding: normalised queries ``(N, C)`` linearly resampled to ``(N, dim)``
    (``F.interpolate(size=dim, mode="linear", align_corners=False)`` along the channel axis, no re-normalisation)."""
    if queries.shape[0] == 0:
        return queries.new_zeros((0, dim))
    return F.interpolate(queries[None], size=dim, mode="linear", align_corners=False)[0]


def free_mask_candidates(features: torch.Tensor, cfg: FreeMaskConfig | None = None) -> FreeMaskCandidates:
    """Steps 1-4 on one image's feature map ``(C, h, w)`` (float32): candidates after Matrix NMS and top-k.

    Same values as the official sequence (filter, sort, NMS, sort, top-k), but the large ``(Nq, h, w)`` maps are
    indexed once, at the end, for the k survivors only.
    """
    cfg = cfg or FreeMaskConfig()
    keys = features.float()
    raw = pyramid_queries(keys, cfg.query_scales)  # (Nq, C), built from the UNnormalised keys
    soft = similarity_maps(keys, raw)  # (Nq, h, w)
    binary = soft >= cfg.mask_threshold  # (Nq, h, w)
    area = binary.sum(dim=(1, 2))  # (Nq,)
    idx = (area > cfg.min_mask_pixels).nonzero().flatten()  # (N,) candidate queries
    if idx.numel() == 0:
        return FreeMaskCandidates(soft[:0], soft.new_zeros((0,)), raw[:0])
    fg = binary[idx]  # (N, h, w)
    maskness = (soft[idx] * fg).sum(dim=(1, 2)) / area[idx]  # (N,) mean soft value over the foreground
    order = torch.argsort(maskness, descending=True)
    idx, fg, maskness = idx[order], fg[order], maskness[order]
    decayed = matrix_nms(fg, maskness, kernel=cfg.nms_kernel, sigma=cfg.nms_sigma, sum_masks=area[idx])
    top = torch.argsort(decayed, descending=True)[: cfg.max_masks]
    final = idx[top]  # (k,) query indices, by decayed maskness
    return FreeMaskCandidates(soft[final], decayed[top], F.normalize(raw[final], dim=1))


def free_mask(
    features: torch.Tensor, image_size: tuple[int, int], cfg: FreeMaskConfig | None = None
) -> FreeMaskResult:
    """Free Mask for one image.

    Args:
        features: ``float (C, h, w)`` backbone feature map of the (resized) image, e.g. res5 (non-negative).
        image_size: ``(H, W)`` of the ORIGINAL image: masks are upsampled straight to it.
        cfg: thresholds (official values by default).

    Returns:
        a :class:`FreeMaskResult` with the masks that pass the filters, sorted by decayed maskness (descending).
    """
    cfg = cfg or FreeMaskConfig()
    H, W = int(image_size[0]), int(image_size[1])
    cand = free_mask_candidates(features, cfg)
    # The three filters are ANDed: the maskness one needs no full-size mask, so it runs first and only its
    # survivors are upsampled (the official code upsamples all top-k; the kept masks are the same).
    ok = (cand.scores >= cfg.maskness_threshold).nonzero().flatten()
    if ok.numel() == 0:
        return FreeMaskResult.empty((H, W), cfg.emb_dim, features.device)
    full = F.interpolate(cand.soft[ok][None], size=(H, W), mode="bilinear", align_corners=False)[0]  # (n, H, W)
    # occupancy of rows / columns straight from the soft maps: max >= tau <=> some pixel >= tau
    rows = (full.amax(dim=2) >= cfg.mask_threshold).float()  # (n, H)
    cols = (full.amax(dim=1) >= cfg.mask_threshold).float()  # (n, W)
    bh, bw = rows.sum(1), cols.sum(1)  # numbers of occupied rows / columns
    cy = (rows * torch.arange(H, device=full.device, dtype=torch.float32)).sum(1) / bh.clamp(min=1e-6)
    cx = (cols * torch.arange(W, device=full.device, dtype=torch.float32)).sum(1) / bw.clamp(min=1e-6)
    boxes = torch.stack([cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh], dim=1)  # (n, 4) XYXY
    keep = (cy > cfg.top_border * H) & ((boxes[:, 2] - boxes[:, 0]) < cfg.max_width_ratio * W)
    sel = keep.nonzero().flatten()
    masks = full >= cfg.mask_threshold  # (n, H, W) bool
    if sel.numel() < masks.shape[0]:
        masks = masks[sel]  # (m, H, W)
    final = ok[sel]
    return FreeMaskResult(masks, cand.scores[final], channel_embedding(cand.queries[final], cfg.emb_dim), boxes[sel])


class FreeMask(MaskGenerator):
    """The official generator (FreeSOLO): :func:`free_mask` on the backbone's ``cfg.feature_level`` map."""

    name = "freemask"
    label = "Free Mask"
    config_class = FreeMaskConfig
    uses_backbone = True
    summary = "Free Mask (FreeSOLO): similarity maps + maskness"

    def __call__(self, features: torch.Tensor, image_size: tuple[int, int]) -> FreeMaskResult:
        return free_mask(features, image_size, self.cfg)


# ---------------------------------------------------------------------------------------- image sizes
# detectron2 ResizeShortestEdge output size (h, w); one implementation shared with training and the predictor
from unsolo.data.transforms import shortest_edge_size as resized_size  # noqa: E402
