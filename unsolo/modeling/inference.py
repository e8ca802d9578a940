"""SOLOv2 inference post-processing as pure functions: point NMS, candidate masks and maskness, Matrix NMS, the
official two-step resize. Shared by :meth:`SOLOv2.inference` and the exported ONNX model's runner
(:mod:`unsolo.pipeline.export`), which gets the same head outputs from onnxruntime.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unsolo.modeling.postprocess import matrix_nms, projection_boxes


def postprocess(cates, kernels, embs, mask_feat, image_sizes, orig_sizes, cfg) -> list[dict]:
    """Detections of a batch from the raw head outputs (per level ``cate (B, K, S, S)`` logits, ``kernel
    (B, D, S, S)``, ``emb (B, E, S, S)``; ``mask_feat (B, D, Hf, Wf)``) of a model with config ``cfg``."""
    per_image = flatten_heads(cates, kernels, embs, cfg.inference.official_emb_layout)
    return [inference_single(c, kk, ee, mask_feat[b], image_sizes[b], orig_sizes[b], cfg)
            for b, (c, kk, ee) in enumerate(per_image)]


def flatten_heads(cates, kernels, embs, official_emb_layout: bool = False) -> list[tuple]:
    """Per image: ``cate (L, K)`` point-NMS'd sigmoid scores, ``kern (L, D)``, ``emb (L, E)`` over the L = sum S^2
    cells of all levels (the layout of :func:`inference_single`'s inputs, and of the exported ONNX outputs)."""
    k, d, e = cates[0].shape[1], kernels[0].shape[1], embs[0].shape[1]
    cate_scores = [point_nms(c.sigmoid()).permute(0, 2, 3, 1) for c in cates]  # (B, S, S, K)
    out = []
    for b in range(cates[0].shape[0]):
        cate = torch.cat([c[b].reshape(-1, k) for c in cate_scores])  # (sum S^2, K)
        kern = torch.cat([kk[b].permute(1, 2, 0).reshape(-1, d) for kk in kernels])  # (sum S^2, D)
        if official_emb_layout:
            emb = torch.cat([ee[b].reshape(-1, e) for ee in embs])  # official: channel-first view (scrambled)
        else:
            emb = torch.cat([ee[b].permute(1, 2, 0).reshape(-1, e) for ee in embs])  # (sum S^2, E)
        out.append((cate, kern, emb))
    return out


def inference_single(cate: torch.Tensor, kern: torch.Tensor, emb: torch.Tensor, mask_feat: torch.Tensor,
                     image_size: tuple[int, int], orig_size: tuple[int, int], cfg) -> dict:
    """One image (``SOLOv2.inference_single_image``); ``cate (L, K)`` point-NMS'd scores, ``kern (L, D)``,
    ``emb (L, E)``, ``mask_feat (D, Hf, Wf)``.

    Same results as the official code, computed with less work: masks of candidates that cannot reach the
    ``nms_pre`` best are never computed (:func:`candidate_masks`), and only the final detections are resized to
    the original size, a few at a time, straight to binary (:func:`binary_masks_at_size`).
    """
    ic = cfg.inference
    h, w = int(image_size[0]), int(image_size[1])
    fh, fw = mask_feat.shape[-2:]
    device = mask_feat.device
    empty = empty_result(orig_size, cfg.num_embs, device)

    hit = cate > ic.score_thr  # (L, K)
    scores = cate[hit]
    if scores.numel() == 0:
        return empty
    idx = hit.nonzero()  # (N, 2): cell, class
    labels = idx[:, 1]
    cells = idx[:, 0]
    level_stride = torch.cat([torch.full((s * s,), float(st), device=device)
                              for s, st in zip(cfg.grids, cfg.strides)])[cells]
    sel, soft, area, maskness = candidate_masks(kern[cells], mask_feat.reshape(mask_feat.shape[0], -1), scores,
                                                level_stride, ic.mask_thr, ic.nms_pre)
    if sel.numel() == 0:
        return empty
    # sel is ordered by final score, descending (ties: candidate order), and holds at most nms_pre candidates
    scores, labels, cells = scores[sel], labels[sel], cells[sel]
    final = scores * maskness
    final = matrix_nms(soft > ic.mask_thr, final, labels=labels, kernel=ic.nms_kernel, sigma=ic.nms_sigma,
                       sum_masks=area)
    keep = final >= ic.update_thr
    if not bool(keep.any()):
        return empty
    order = keep.nonzero().squeeze(1)
    order = order[torch.argsort(final[order], descending=True, stable=True)][: ic.max_per_img]
    soft, final, scores, labels, maskness, cells = (
        soft[order], final[order], scores[order], labels[order], maskness[order], cells[order])

    masks = binary_masks_at_size(soft.reshape(-1, fh, fw), (h, w), orig_size, ic.mask_thr)  # (K, H, W) bool
    nonempty = masks.flatten(1).any(1)
    if not bool(nonempty.all()):
        masks, final, scores, labels, maskness, cells = (
            masks[nonempty], final[nonempty], scores[nonempty], labels[nonempty], maskness[nonempty],
            cells[nonempty])
    embv = emb[cells]
    embv = embv / embv.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return {
        "masks": masks,
        "scores": final,
        "category_scores": scores,
        "maskness": maskness,
        "labels": labels,
        "embs": embv,
        "boxes": projection_boxes(masks),
    }




#: candidates whose dynamic-conv masks are computed at once (bounds the memory: CHUNK x Hf x Wf floats)
CANDIDATE_CHUNK = 128


def candidate_masks(kernels: torch.Tensor, feat: torch.Tensor, scores: torch.Tensor, min_area: torch.Tensor,
                    mask_thr: float, nms_pre: int, chunk: int = CANDIDATE_CHUNK):
    """Soft masks, areas and maskness of the ``nms_pre`` best candidates by final score (official filters).

    Args:
        kernels: ``(N, D)`` dynamic 1x1 kernels of the candidates; ``feat``: ``(D, HW)`` mask features.
        scores: ``(N,)`` category scores; ``min_area``: ``(N,)`` a mask is kept if its binary area is larger.
        mask_thr: soft -> binary threshold; nms_pre: candidates returned at most.
    Returns:
        ``sel (M,)`` candidate indices sorted by final score ``scores * maskness`` descending (ties: lower index
        first), ``soft (M, HW)``, ``area (M,)`` binary areas, ``maskness (M,)``; ``M <= nms_pre``.

    Equal to computing every candidate's mask, dropping small masks and keeping the ``nms_pre`` best (the official
    order of work), but candidates are visited by category score, highest first, and skipped once they cannot make
    the cut: maskness is a mean of sigmoids over the pixels above ``mask_thr``, so it is at most 1 (also in float32:
    rounded sums of values <= 1 never exceed their count), hence ``final <= score``; once ``nms_pre`` masks are
    kept, a candidate whose category score is below the ``nms_pre``-th best final score cannot enter.
    """
    n = scores.shape[0]
    visit = torch.argsort(scores, descending=True, stable=True)
    kept_sel, kept_soft, kept_area, kept_mness, kept_final = [], [], [], [], []
    num_kept, bound = 0, None
    for start in range(0, n, chunk):
        ids = visit[start : start + chunk]
        if bound is not None:
            ids = ids[scores[ids] >= bound]
            if ids.numel() == 0:
                break  # scores are visited in decreasing order: nothing later can enter either
        soft = (kernels[ids] @ feat).sigmoid_()  # (n, HW)
        binary = soft > mask_thr
        area = binary.sum(1).float()
        ok = area > min_area[ids]
        if not bool(ok.any()):
            continue
        ids, soft, binary, area = ids[ok], soft[ok], binary[ok], area[ok]
        mness = (soft * binary).sum(1) / area
        kept_sel.append(ids)
        kept_soft.append(soft)
        kept_area.append(area)
        kept_mness.append(mness)
        kept_final.append(scores[ids] * mness)
        num_kept += ids.numel()
        if num_kept >= nms_pre:
            bound = torch.cat(kept_final).topk(nms_pre).values[-1]
            if num_kept >= 2 * nms_pre:  # bound the memory: keep only the current best nms_pre
                lists = _top_candidates(kept_sel, kept_soft, kept_area, kept_mness, kept_final, nms_pre)
                kept_sel, kept_soft, kept_area, kept_mness, kept_final = ([x] for x in lists)
                num_kept = nms_pre
    if not kept_sel:
        e = scores.new_zeros(0)
        return visit.new_zeros(0), feat.new_zeros((0, feat.shape[1])), e, e
    sel, soft, area, mness, _ = _top_candidates(kept_sel, kept_soft, kept_area, kept_mness, kept_final, nms_pre)
    return sel, soft, area, mness


def _top_candidates(sel, soft, area, mness, final, k):
    """Concatenate the kept chunks and keep the ``k`` best by final score, descending, ties by candidate index."""
    sel, final = torch.cat(sel), torch.cat(final)
    by_index = torch.argsort(sel)  # the official order of the candidates, so that ties keep it
    order = by_index[torch.argsort(final[by_index], descending=True, stable=True)][:k]
    return sel[order], torch.cat(soft)[order], torch.cat(area)[order], torch.cat(mness)[order], final[order]


def empty_result(orig_size: tuple[int, int], num_embs: int, device) -> dict:
    H, W = int(orig_size[0]), int(orig_size[1])
    z = torch.zeros(0, device=device)
    return {"masks": torch.zeros((0, H, W), dtype=torch.bool, device=device), "scores": z, "category_scores": z,
            "maskness": z, "labels": torch.zeros(0, dtype=torch.int64, device=device),
            "embs": torch.zeros((0, num_embs), device=device), "boxes": torch.zeros((0, 4), device=device)}


def point_nms(heat: torch.Tensor, kernel: int = 2) -> torch.Tensor:
    """Keep only local maxima of ``(B, K, S, S)`` scores (2x2 max-pool, stride 1, drop last row/col)."""
    hmax = F.max_pool2d(heat, (kernel, kernel), stride=1, padding=1)
    return heat * (hmax[:, :, :-1, :-1] == heat).float()


#: masks resized to the original size at once (bounds the memory: CHUNK x H x W floats)
RESIZE_CHUNK = 8


def binary_masks_at_size(soft: torch.Tensor, image_size: tuple[int, int], orig_size: tuple[int, int],
                         mask_thr: float, chunk: int = RESIZE_CHUNK) -> torch.Tensor:
    """``resize_masks(soft, ...) > mask_thr`` as bool ``(K, H, W)``, computed a few masks at a time so the float
    full-size masks never exist all at once (same values: the resize treats every mask independently)."""
    parts = [resize_masks(soft[i : i + chunk], image_size, orig_size, soft.shape[-2:]) > mask_thr
             for i in range(0, soft.shape[0], chunk)]
    if not parts:
        return torch.zeros((0, int(orig_size[0]), int(orig_size[1])), dtype=torch.bool, device=soft.device)
    return torch.cat(parts)


def resize_masks(soft: torch.Tensor, image_size: tuple[int, int], orig_size: tuple[int, int],
                 feat_size: tuple[int, int]) -> torch.Tensor:
    """The official two-step resize: ``(K, Hf, Wf)`` soft masks x ratio (bilinear), crop to ``image_size``,
    bilinear to ``orig_size``. Returns float ``(K, H, W)``."""
    if soft.shape[0] == 0:
        return soft.new_zeros((0, int(orig_size[0]), int(orig_size[1])))
    h, w = image_size
    fh, fw = feat_size
    ratio = max(math.ceil(h / fh), math.ceil(w / fw))
    up = F.interpolate(soft[None], size=(int(fh * ratio), int(fw * ratio)), mode="bilinear", align_corners=False)
    up = up[:, :, :h, :w]
    if (h, w) == (int(orig_size[0]), int(orig_size[1])):
        return up[0]  # a bilinear resize to the same size is the identity (align_corners=False: source = target)
    return F.interpolate(up, size=(int(orig_size[0]), int(orig_size[1])), mode="bilinear", align_corners=False)[0]


