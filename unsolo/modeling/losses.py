"""FreeSOLO's losses (spec section 5) as pure functions, plus :class:`LossConfig` with the official weights.

Mask terms, per FPN level, on the mask logits ``M (N, Hf, Wf)`` of the positive cells and their targets
``T (N, Hf, Wf)``:

* ``loss_ins_max``: Dice between the max-projections of ``sigmoid(M)`` and ``T`` on both axes (weight 1.0);
* ``loss_ins``: the same with average projections, weight ``alpha = 0.1`` (paper Eq. 7);
* ``loss_pairwise``: BoxInst's pairwise affinity term inside the target's projection box, on pixel pairs whose
  CIE-LAB colour similarity is at least 0.3, warmed up linearly over 1000 iterations.

``loss_cate`` is a sigmoid focal loss over every grid cell, and ``loss_emb`` is the semantic-embedding loss
``beta * (1 - cos)`` (paper Eq. 9, beta = 4) on positive cells with a known target embedding. Each mask term is
averaged within a level, then over the levels that have positives (spec D10).

The mask losses are functions of the positive cells' masks per level (:class:`LevelMasks`), chosen by
``LossConfig.mask_loss`` from :data:`MASK_LOSSES`: :func:`weak_mask_loss` (the three terms above) and
:func:`full_mask_loss` (Dice on whole masks). A new mask loss is one such function and one entry in the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    mask_loss: MaskLossName = "weak"  # a key of MASK_LOSSES: "weak": projection + pairwise terms (FreeSOLO); "full":
    #                                   Dice on the whole pseudo-mask (plain SOLO, paper Table 7d)
    dice_weight: float = 1.0  # DICE_WEIGHT: scales every Dice term (and the full-mask Dice)
    max_proj_weight: float = 1.0  # weight of the max-projection Dice (loss_ins_max)
    avg_proj_weight: float = 0.1  # alpha of Eq. 7: weight of the average-projection Dice (loss_ins)
    pairwise_weight: float = 1.0  # weight of the pairwise term (loss_pairwise)
    use_max_proj: bool = True  # Table 7e switches: turn single mask terms off
    use_avg_proj: bool = True
    use_pairwise: bool = True
    pairwise_size: int = 3  # pairwise neighbourhood (3x3, centre excluded)
    pairwise_dilation: int = 2  # neighbour spacing at stride 4
    pairwise_color_thresh: float = 0.3  # pairs with exp(-||dLAB||/2) >= this are assumed same-object
    warmup_iters: int = 1000  # pairwise weight ramps linearly over this many forwards (official; BoxInst: 10000)
    bottom_pixels_removed: int = 10  # bottom rows (at the original size) excluded from the colour pairs
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_weight: float = 1.0
    emb_weight: float = 4.0  # beta of Eq. 9
    emb_loss_official_zero: bool = False  # True: return 0 * sum(emb) like the released code (L_sem discarded)
    drop_loss_iou: float | None = None  # DropLoss (CutLER): a negative cell whose predicted mask overlaps no target
    #                                     mask of its image (max IoU below this; CutLER 0.01) gets no background loss,
    #                                     so the model may find objects the pseudo-masks missed. None = off (official)
    full_dice_iters: int = 0  # with mask_loss "weak": the first this many training forwards use full-mask Dice, then
    #                           the weak losses take over and the pairwise warm-up starts (0 = official: weak from
    #                           the start). A deviation for short schedules on noisy labels (docs/ablations.md)


# ------------------------------------------------------------------------------------------- Dice terms
def dice_coefficient(x: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BoxInst Dice loss per instance: ``1 - 2 sum(x t) / (sum x^2 + sum t^2 + eps)``; ``(N, ...)`` -> ``(N,)``."""
    n = x.shape[0]
    x = x.reshape(n, -1)
    target = target.reshape(n, -1).to(x.dtype)
    inter = (x * target).sum(1)
    union = (x * x).sum(1) + (target * target).sum(1) + eps
    return 1.0 - 2.0 * inter / union


def max_projection_dice(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice of the max-projections onto the x- and y-axis, summed; ``(N, H, W)`` -> ``(N,)``."""
    t = targets.to(probs.dtype)
    return dice_coefficient(probs.amax(1), t.amax(1)) + dice_coefficient(probs.amax(2), t.amax(2))


def avg_projection_dice(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice of the mean-projections (means over the full padded height / width), summed; -> ``(N,)``."""
    t = targets.to(probs.dtype)
    return dice_coefficient(probs.mean(1), t.mean(1)) + dice_coefficient(probs.mean(2), t.mean(2))


def foreground_stats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: ``[sum of predicted fg fractions, sum of target fg fractions, N]`` of ``(N, H, W)`` masks.

    A mask's foreground fraction is the share of its pixels with ``p > 0.5`` (logit > 0); the target's, of its 1s.
    Sums and a count, so that levels, images and processes add up before the one division.
    """
    n = logits.shape[0]
    pred = (logits.detach() > 0).flatten(1).float().mean(1).sum()
    tgt = targets.detach().flatten(1).float().mean(1).sum()
    return torch.stack([pred, tgt, pred.new_tensor(float(n))])


# ------------------------------------------------------------------------------------------- pairwise
def unfold_wo_center(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Neighbours of every pixel, centre excluded, zero "same" padding: ``(B, C, H, W)`` -> ``(B, C, k*k-1, H, W)``."""
    b, c, h, w = x.shape
    pad = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    u = F.unfold(x, kernel_size=kernel_size, padding=pad, dilation=dilation).reshape(b, c, -1, h, w)
    mid = kernel_size * kernel_size // 2
    return torch.cat([u[:, :, :mid], u[:, :, mid + 1 :]], dim=2)


def pairwise_log_loss(logits: torch.Tensor, kernel_size: int = 3, dilation: int = 2) -> torch.Tensor:
    """``-log(p_i p_j + (1-p_i)(1-p_j))`` for each pixel and neighbour, computed in log space.

    Args: logits ``(N, H, W)``. Returns ``(N, k*k-1, H, W)``.
    """
    x = logits[:, None]  # (N, 1, H, W)
    log_fg, log_bg = F.logsigmoid(x), F.logsigmoid(-x)
    same_fg = log_fg[:, :, None] + unfold_wo_center(log_fg, kernel_size, dilation)  # (N, 1, 8, H, W)
    same_bg = log_bg[:, :, None] + unfold_wo_center(log_bg, kernel_size, dilation)
    # log(exp(a) + exp(b)) in one fused, stable op (the official code: max + log(exp(a - m) + exp(b - m)))
    return -torch.logaddexp(same_fg, same_bg)[:, 0]


def projection_box_mask(targets: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` targets -> float mask of their projection boxes (row has fg AND column has fg)."""
    t = targets.float()
    return t.amax(1, keepdim=True) * t.amax(2, keepdim=True)


def pairwise_loss_terms(
    logits: torch.Tensor, targets: torch.Tensor, color_sim: torch.Tensor, color_thresh: float = 0.3,
    kernel_size: int = 3, dilation: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of :func:`pairwise_loss`: ``(sum(loss * w), sum(w))``.

    ``color_sim`` is ``(N, k*k-1, H, W)`` or, when all ``N`` masks belong to one image, that image's
    ``(1, k*k-1, H, W)``: it is then broadcast instead of copied ``N`` times. Summing the terms of several images
    before dividing gives the loss of their concatenation.
    """
    losses = pairwise_log_loss(logits, kernel_size, dilation)  # (N, 8, H, W)
    box = projection_box_mask(targets).to(losses.dtype)  # (N, H, W)
    similar = (color_sim >= color_thresh).to(losses.dtype)  # (N or 1, 8, H, W)
    num = (losses * similar * box[:, None]).sum()
    if similar.shape[0] == 1 and box.shape[0] != 1:
        den = (similar[0].sum(0) * box.sum(0)).sum()  # sum over n, k of similar[k] * box[n], without (N, 8, H, W)
    else:
        den = (similar * box[:, None]).sum()
    return num, den


def pairwise_loss(
    logits: torch.Tensor, targets: torch.Tensor, color_sim: torch.Tensor, color_thresh: float = 0.3,
    kernel_size: int = 3, dilation: int = 2,
) -> torch.Tensor:
    """Mean pairwise loss over the pairs inside the targets' projection boxes with colour similarity >= thresh.

    Args:
        logits: ``(N, H, W)`` mask logits; targets: ``(N, H, W)`` 0/1; color_sim: ``(N, k*k-1, H, W)`` (or
        ``(1, k*k-1, H, W)``, broadcast to every mask).
    Returns: scalar ``sum(loss * w) / max(sum(w), 1)``.
    """
    num, den = pairwise_loss_terms(logits, targets, color_sim, color_thresh, kernel_size, dilation)
    return num / den.clamp(min=1.0)


# ------------------------------------------------------------------------------------------- mask losses
@dataclass
class LevelMasks:
    """The positive cells' masks of one FPN level, over the images of a batch (images in batch order).

    ``logits``: ``float (N, Hf, Wf)`` mask logits at stride 4; ``targets``: ``uint8 (N, Hf, Wf)`` 0/1; ``usemask``:
    ``bool (N,)``, False for a box-supervised instance (its target is its filled box); ``counts``: the number of
    masks of each image with positives at this level; ``color_sims``: per such image its ``(1, k*k-1, Hf, Wf)``
    colour similarity (:func:`image_color_similarity`), None where none was computed.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    usemask: torch.Tensor
    counts: list[int]
    color_sims: list[torch.Tensor | None]


def level_mean(terms: Sequence[torch.Tensor], weight: float, zero: torch.Tensor, on: bool = True) -> torch.Tensor:
    """``weight`` x the mean of per-level scalar ``terms``; ``zero`` when there is none or the term is off."""
    if not terms or not on:
        return zero
    return torch.stack(terms).mean() * weight + zero


def weak_mask_loss(levels: Sequence[LevelMasks], cfg: LossConfig, warmup: float,
                   zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """FreeSOLO's weak mask losses (paper Eq. 7 and the pairwise term): ``loss_ins`` (average-projection Dice),
    ``loss_ins_max`` (max-projection Dice) and ``loss_pairwise`` (times the warm-up factor ``warmup``) on every
    instance. ``zero``: a 0-dim zero joined to every mask parameter, the value of an absent term."""
    ins, ins_max, pair = [], [], []
    for lv in levels:
        probs = torch.sigmoid(lv.logits)
        ins_max.append(max_projection_dice(probs, lv.targets).mean())
        ins.append(avg_projection_dice(probs, lv.targets).mean())
        # per image: its (1, 8, Hf, Wf) colour similarity broadcasts over its masks (no N copies)
        terms = [pairwise_loss_terms(logits, targets, sims, cfg.pairwise_color_thresh, cfg.pairwise_size,
                                     cfg.pairwise_dilation)
                 for logits, targets, sims in zip(lv.logits.split(lv.counts), lv.targets.split(lv.counts),
                                                  lv.color_sims)
                 if cfg.use_pairwise and sims is not None]
        if terms:  # the level's mean over the pairs of all its images: sum of numerators / sum of weights
            num = torch.stack([t[0] for t in terms]).sum()
            den = torch.stack([t[1] for t in terms]).sum()
            pair.append(num / den.clamp(min=1.0) * warmup)
    return {
        "loss_ins": level_mean(ins, cfg.dice_weight * cfg.avg_proj_weight, zero, cfg.use_avg_proj),
        "loss_ins_max": level_mean(ins_max, cfg.dice_weight * cfg.max_proj_weight, zero, cfg.use_max_proj),
        "loss_pairwise": level_mean(pair, cfg.pairwise_weight, zero, cfg.use_pairwise),
    }


def full_mask_loss(levels: Sequence[LevelMasks], cfg: LossConfig, warmup: float,
                   zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plain SOLO's Dice on whole masks (``loss_ins``); box-supervised instances (``usemask`` False) get BoxInst's
    terms instead: max-projection Dice (``loss_ins_max``) and the pairwise term (``loss_pairwise``, warmed up)."""
    full, box_max, box_pair = [], [], []
    for lv in levels:
        probs = torch.sigmoid(lv.logits)
        use = lv.usemask
        if bool(use.any()):
            full.append(dice_coefficient(probs[use], lv.targets[use]).mean())
        if not bool(use.all()):
            box = ~use
            box_max.append(max_projection_dice(probs[box], lv.targets[box]).mean())
            sims = [s.expand(n, -1, -1, -1) for n, s in zip(lv.counts, lv.color_sims) if s is not None]
            if cfg.use_pairwise and sims:
                box_pair.append(pairwise_loss(lv.logits[box], lv.targets[box], torch.cat(sims)[box],
                                              cfg.pairwise_color_thresh, cfg.pairwise_size,
                                              cfg.pairwise_dilation) * warmup)
    return {
        "loss_ins": level_mean(full, cfg.dice_weight, zero),
        "loss_ins_max": level_mean(box_max, cfg.dice_weight * cfg.max_proj_weight, zero, cfg.use_max_proj),
        "loss_pairwise": level_mean(box_pair, cfg.pairwise_weight, zero, cfg.use_pairwise),
    }


class MaskLoss(NamedTuple):
    fn: Callable[[Sequence[LevelMasks], LossConfig, float, torch.Tensor], dict[str, torch.Tensor]]
    pairwise_on_all: bool  # True: the pairwise term covers every instance (every image needs its colour
    #                        similarities); False: only box-supervised instances (only their images need them)


#: ``LossConfig.mask_loss`` -> the mask loss. Each returns ``loss_ins``, ``loss_ins_max`` and ``loss_pairwise``.
MASK_LOSSES: dict[str, MaskLoss] = {
    "weak": MaskLoss(weak_mask_loss, pairwise_on_all=True),
    "full": MaskLoss(full_mask_loss, pairwise_on_all=False),
}
MaskLossName = Literal[tuple(MASK_LOSSES)]  # type: ignore[valid-type]  # the config values: the table's keys


# ------------------------------------------------------------------------------------------- colour
# sRGB (D65) -> XYZ matrix and the D65 2-degree white point, as in scikit-image's ``rgb2lab``.
_RGB2XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65 = (0.95047, 1.0, 1.08883)


def _srgb_linear_lut() -> np.ndarray:
    v = np.arange(256, dtype=np.float64) / 255.0
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


_LUT = _srgb_linear_lut()


def rgb2lab(image: torch.Tensor) -> torch.Tensor:
    """CIE-LAB (D65) of an RGB ``uint8`` image, equal to ``skimage.color.rgb2lab`` within 1e-3.

    Args: ``uint8 (3, H, W)`` on any device. Returns ``float32 (3, H, W)`` (L in 0..100).
    Runs on the image's device (the official code converts on the CPU with scikit-image every step).
    """
    lut = torch.as_tensor(_LUT, dtype=torch.float64, device=image.device)
    lin = lut[image.long()]  # (3, H, W) float64
    m = torch.as_tensor(_RGB2XYZ, dtype=torch.float64, device=image.device)
    xyz = torch.einsum("ij,jhw->ihw", m, lin)
    xyz = xyz / torch.as_tensor(_D65, dtype=torch.float64, device=image.device).view(3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    lab = torch.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])
    return lab.float()


def image_color_similarity(
    image: torch.Tensor, valid: torch.Tensor, kernel_size: int = 3, dilation: int = 2, stride: int = 4
) -> torch.Tensor:
    """Colour similarity of every stride-4 pixel with its dilated neighbours, as the official code does.

    Args:
        image: ``float (3, Hp, Wp)`` RGB 0-255, padded with zeros (Hp, Wp multiples of ``stride``).
        valid: ``float (Hp, Wp)``: 1 inside the image, 0 in the padding and the removed bottom rows.
    Returns:
        ``float32 (1, k*k-1, Hp/stride, Wp/stride)``: ``exp(-||lab_i - lab_j|| / 2)`` times the neighbour's validity.
    """
    down = F.avg_pool2d(image[None].float(), kernel_size=stride, stride=stride)[0]  # (3, Hf, Wf)
    lab = rgb2lab(down.to(torch.uint8))[None]  # cast truncates like ``.byte()``
    diff = lab[:, :, None] - unfold_wo_center(lab, kernel_size, dilation)  # (1, 3, 8, Hf, Wf)
    sim = torch.exp(-diff.square().sum(1).sqrt() * 0.5)  # (1, 8, Hf, Wf): L2 norm over LAB (4x faster than norm)
    start = stride // 2
    v = valid[start::stride, start::stride].float()[None, None]
    vw = unfold_wo_center(v, kernel_size, dilation)[:, 0]  # (1, 8, Hf, Wf)
    return sim * vw


# ------------------------------------------------------------------------------------------- category / emb
#: cells whose predicted masks are compared with the targets at once (bounds the memory: CHUNK x Hf x Wf)
DROP_CHUNK = 512


@torch.no_grad()
def drop_loss_keep(mask_logits_fn, num_cells: int, targets: torch.Tensor, negative: torch.Tensor,
                   iou_thresh: float, chunk: int = DROP_CHUNK) -> torch.Tensor:
    """DropLoss (CutLER, Wang et al. 2023): which cells keep their category loss.

    A negative cell keeps it only if its predicted mask (``p > 0.5``) overlaps some target mask of its image with
    IoU >= ``iou_thresh``; positive cells always keep it. Args: ``mask_logits_fn(idx) -> (n, Hf*Wf)`` the mask
    logits of the cells ``idx``; ``targets`` ``(M, Hf*Wf)`` the image's target masks; ``negative`` ``bool
    (num_cells,)``. Returns ``bool (num_cells,)``.
    """
    keep = torch.ones(num_cells, dtype=torch.bool, device=negative.device)
    neg = negative.nonzero().squeeze(1)
    if neg.numel() == 0:
        return keep
    if targets.shape[0] == 0:  # nothing to overlap: every negative prediction is dropped
        keep[neg] = False
        return keep
    t = targets.float()
    t_area = t.sum(1)
    for start in range(0, neg.numel(), chunk):
        idx = neg[start : start + chunk]
        pred = (mask_logits_fn(idx) > 0).float()  # (n, HW)
        inter = pred @ t.t()  # (n, M)
        union = pred.sum(1, keepdim=True) + t_area[None] - inter
        iou = inter / union.clamp(min=1.0)
        keep[idx] = iou.amax(1) >= iou_thresh
    return keep


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Summed sigmoid focal loss (fvcore's ``sigmoid_focal_loss``, reduction "sum"); ``weights`` ``(N,)`` scale
    each row (DropLoss: 0 for dropped cells)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if weights is not None:
        loss = loss * weights.to(loss.dtype)[:, None]
    return loss.sum()


def embedding_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor | None:
    """Mean ``1 - cos(pred, target)`` over rows whose target is non-zero; ``None`` when there is none.

    Args: pred, target ``(N, E)``. Zero targets (no embedding known) are masked out instead of giving NaN.
    """
    known = target.abs().sum(1) > 0
    if not bool(known.any()):
        return None
    p = pred[known]
    t = target[known].to(p.dtype)
    cos = (p * t).sum(1) / (p.norm(dim=1).clamp(min=eps) * t.norm(dim=1).clamp(min=eps))
    return (1.0 - cos).mean()
