"""SOLOv2 with FreeSOLO's weak mask losses and semantic-embedding head (spec sections 3-5, 8).

Layout: :class:`~unsolo.modeling.backbone.ResNetBackbone` (frozen BN) -> :class:`~unsolo.modeling.fpn.FPN`
(P2-P6) -> :class:`~unsolo.modeling.heads.SOLOv2InsHead` (category, dynamic-kernel and embedding predictions on
S x S grids) and :class:`~unsolo.modeling.heads.SOLOv2MaskHead` (unified mask features at stride 4). The instance
mask of a grid cell is the 1x1 convolution of the mask features with the cell's predicted kernel.

* ``SOLOv2.forward(batch)`` (training): targets + losses (the mask loss chosen by name from
  :data:`unsolo.modeling.losses.MASK_LOSSES`), returns the named losses.
* ``SOLOv2.inference(images, image_sizes, orig_sizes)``: the network, then the post-processing of
  :mod:`unsolo.modeling.inference` (point NMS, thresholds, Matrix NMS, masks at the original size).

The head module names equal the official ones (``ins_head.cate_tower.0.weight`` ...), so official checkpoints
map by renaming the backbone and FPN only (:mod:`unsolo.compat.official`); checkpoint files are read by
:func:`unsolo.compat.solo_checkpoint.load_model`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unsolo.modeling.backbone import ResNetBackbone, fold_frozen_bn, freeze_stages, normalize_image
from unsolo.modeling.fpn import FPN
from unsolo.modeling.heads import SOLOv2InsHead, SOLOv2MaskHead
from unsolo.modeling.losses import (
    MASK_LOSSES,
    LevelMasks,
    LossConfig,
    drop_loss_keep,
    embedding_loss,
    foreground_stats,
    image_color_similarity,
    sigmoid_focal_loss,
)
from unsolo.modeling.inference import inference_single, postprocess
from unsolo.modeling.targets import LevelTargets, assign_targets, box_masks

SIZE_DIVISIBILITY = 32  # FPN input padding (detectron2 ``size_divisibility``)
MASK_STRIDE = 4  # stride of the mask features


@dataclass
class InferenceConfig:
    score_thr: float = 0.1  # SCORE_THR: minimum point-NMS'd category score of a candidate cell
    mask_thr: float = 0.5  # MASK_THR: soft mask -> binary
    update_thr: float = 0.05  # UPDATE_THR: minimum Matrix-NMS-decayed score (self-training uses 0.3)
    nms_pre: int = 500  # NMS_PRE: candidates kept (by score) before Matrix NMS
    max_per_img: int = 100  # MAX_PER_IMG: detections per image (self-training uses 20)
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"  # NMS_KERNEL
    nms_sigma: float = 2.0  # NMS_SIGMA of the Gaussian kernel
    fold_bn: bool = True  # inference only: fold the frozen BN into the backbone convs (a cached copy; same function
    #                      up to float rounding, ~1e-6 relative); False: run the backbone as trained
    channels_last: bool = True  # inference only: NHWC memory layout for the convolutions (faster oneDNN kernels on
    #                             CPU; same arithmetic up to float rounding)
    official_emb_layout: bool = False  # True: read embeddings with the official channel-first reshape (a bug that
    #                                    scrambles them); False: the embedding of the detection's own cell


@dataclass
class ModelConfig:
    arch: str = "resnet101"  # backbone (resnet18/34/50/101); the released FreeSOLO model is ResNet-101
    num_classes: int = 1  # foreground channels of the category head; 1 = class-agnostic (official checkpoints: 2)
    fpn_channels: int = 256  # FPN output channels (= INSTANCE_IN_CHANNELS = MASK_IN_CHANNELS)
    ins_channels: int = 512  # INSTANCE_CHANNELS: width of the category / kernel towers
    num_ins_convs: int = 4  # NUM_INSTANCE_CONVS: convs per tower
    mask_channels: int = 128  # MASK_CHANNELS: internal width of the mask-feature branch
    num_kernels: int = 256  # NUM_KERNELS = NUM_MASKS: mask-feature channels = dynamic 1x1 kernel size
    num_embs: int = 128  # embedding size (Free Mask resamples its 2048-d queries to 128)
    grids: tuple[int, ...] = (40, 36, 24, 16, 12)  # NUM_GRIDS per level
    scale_ranges: tuple[tuple[int, int], ...] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))  # on sqrt(wh)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)  # FPN_INSTANCE_STRIDES (also the inference area filter)
    sigma: float = 0.2  # SIGMA: centre-region scale of the positive cells
    head_norm: Literal["gn", "none"] = "gn"  # NORM of the heads: GroupNorm(32) or none (then convs get a bias)
    prior_prob: float = 0.01  # PRIOR_PROB: initial foreground probability of the category head
    freeze_at: int = 0  # FREEZE_AT (detectron2): backbone stages that do not train: 0 none (FreeSOLO), 1 the stem,
    #                     2 stem + res2 (detectron2's default), ..., 5 the whole backbone
    category_ids: tuple[int, ...] = ()  # label-file category id of each class channel (class-aware models, written
    #                                     by the trainer); empty: class-agnostic, predictions get category_id 1
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def split_feats(feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """P2..P6 -> instance-branch inputs: P2 halved (stride 8), P3, P4, P5, P6 resized to P5's size."""
    return [
        F.interpolate(feats[0], scale_factor=0.5, mode="bilinear", align_corners=False),
        feats[1],
        feats[2],
        feats[3],
        F.interpolate(feats[4], size=feats[3].shape[-2:], mode="bilinear", align_corners=False),
    ]


def pad_images(images: Sequence[torch.Tensor], divisor: int = SIZE_DIVISIBILITY, value: float = 0.0) -> torch.Tensor:
    """``(C, H_i, W_i)`` tensors -> ``(B, C, Hp, Wp)`` padded bottom/right to the max size rounded up to ``divisor``."""
    hp = max(int(im.shape[-2]) for im in images)
    wp = max(int(im.shape[-1]) for im in images)
    hp, wp = int(math.ceil(hp / divisor) * divisor), int(math.ceil(wp / divisor) * divisor)
    out = images[0].new_full((len(images), images[0].shape[0], hp, wp), value)
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]] = im
    return out


def positive_masks(kernels: Sequence[torch.Tensor], mask_feat: torch.Tensor, targets: list[list[LevelTargets]],
                   color_sims: Sequence[torch.Tensor | None]) -> list[LevelMasks]:
    """The mask logits of the positive cells (their ``(D,)`` kernels as 1x1 convolutions of the image's
    ``(D, Hf, Wf)`` mask features) with their targets, per level that has any (the mask losses' input)."""
    levels = []
    for lvl in range(len(kernels)):
        logits, masks, use, counts, sims = [], [], [], [], []
        for b, per_img in enumerate(targets):
            t = per_img[lvl]
            if t.grid_order.numel() == 0:
                continue
            kern = kernels[lvl][b].flatten(1)[:, t.grid_order].t()  # (N, D)
            logits.append(torch.einsum("nd,dhw->nhw", kern, mask_feat[b]))  # (N, Hf, Wf)
            masks.append(t.masks)
            use.append(t.usemask if t.usemask is not None
                       else torch.ones(t.masks.shape[0], dtype=torch.bool, device=t.masks.device))
            counts.append(t.masks.shape[0])
            sims.append(color_sims[b])
        if counts:
            levels.append(LevelMasks(torch.cat(logits), torch.cat(masks), torch.cat(use), counts, sims))
    return levels


class SOLOv2(nn.Module):
    """FreeSOLO's SOLOv2 (``PseudoSOLOv2``). Build it with :func:`build_model`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if len(cfg.grids) != 5 or len(cfg.scale_ranges) != 5 or len(cfg.strides) != 5:
            from unsolo.errors import UnsoloError

            raise UnsoloError("grids, scale_ranges and strides need one entry per level (5 levels, P2-P6)")
        self.backbone = ResNetBackbone(cfg.arch, norm="frozen_bn")
        freeze_stages(self.backbone, cfg.freeze_at)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn_channels)
        self.ins_head = SOLOv2InsHead(cfg.fpn_channels, cfg.ins_channels, cfg.num_ins_convs, cfg.num_classes,
                                      cfg.num_kernels, cfg.num_embs, cfg.grids, cfg.head_norm, cfg.prior_prob)
        self.mask_head = SOLOv2MaskHead(cfg.fpn_channels, cfg.mask_channels, cfg.num_kernels, 4, cfg.head_norm)
        # pairwise warm-up counter: counts training forwards (official; in checkpoints as ``_iter``)
        self.register_buffer("_iter", torch.zeros([1]))
        # collapse monitor of the last training forward: [sum of predicted fg fractions, sum of target fg fractions,
        # number of positive-cell masks] (:func:`~unsolo.modeling.losses.foreground_stats`); not a loss
        self.mask_stats: torch.Tensor | None = None
        self.drop_stats: torch.Tensor | None = None  # DropLoss: [dropped negative cells, negative cells] (last forward)

    @property
    def device(self) -> torch.device:
        return self._iter.device

    def mask_loss_mode(self) -> str:
        """The mask loss of the current training forward: ``cfg.loss.mask_loss``, except "full" during the first
        ``cfg.loss.full_dice_iters`` forwards of a "weak" model (counted by ``_iter``, after its increment)."""
        lc = self.cfg.loss
        if lc.mask_loss == "weak" and lc.full_dice_iters > 0 and float(self._iter.item()) <= lc.full_dice_iters:
            return "full"
        return lc.mask_loss

    # ------------------------------------------------------------------------------------ network
    def predict_raw(self, x: torch.Tensor, backbone: nn.Module | None = None):
        """Normalised, padded ``(B, 3, Hp, Wp)`` -> (cate logits, kernels, embs per level, mask features).

        ``backbone``: a replacement for ``self.backbone`` computing the same function (the BN-folded inference copy).
        """
        feats = self.fpn((backbone or self.backbone)(x))  # [P2..P6]
        cates, kernels, embs = self.ins_head(split_feats(feats))
        mask_feat = self.mask_head(feats[:4])  # (B, D, Hp/4, Wp/4)
        return cates, kernels, embs, mask_feat

    # ------------------------------------------------------------------------------------ training
    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        """Training forward: named losses.

        Each item: ``image`` uint8/float ``(3, H, W)`` RGB 0-255 (augmented, unnormalised, on the model's device);
        ``instances`` with ``masks`` bool ``(N, H, W)``, ``boxes`` float ``(N, 4)`` XYXY pixels, ``labels`` int64
        ``(N,)``, ``embs`` float ``(N, E)`` (zeros = unknown), optional ``usemask`` bool ``(N,)`` (False: the
        instance is box-supervised: its mask is replaced by its filled box and it gets only the max-projection
        Dice and pairwise terms; default all True); ``orig_size`` ``(H0, W0)`` before resizing.
        Returns ``loss_ins``, ``loss_ins_max``, ``loss_pairwise``, ``loss_cate``, ``loss_emb`` (scalars); leaves the
        collapse monitor's foreground statistics in ``self.mask_stats``.
        """
        if self.training:
            self._iter += 1
        raw = [item["image"].to(self.device).float() for item in batch]
        x = pad_images([normalize_image(im[None])[0] for im in raw])  # (B, 3, Hp, Wp) normalised, zero padded
        cates, kernels, embs, mask_feat = self.predict_raw(x)
        targets, color_sims = self.prepare_targets(batch, raw, tuple(x.shape[-2:]))
        # the network runs under the caller's autocast, if any; the losses always in float32: Dice sums over a
        # whole 800 px mask feature map and the focal/pairwise log terms are not safe in float16
        with torch.autocast(x.device.type, enabled=False):
            return self.losses([c.float() for c in cates], [k.float() for k in kernels], [e.float() for e in embs],
                               mask_feat.float(), targets, color_sims)

    @torch.no_grad()
    def prepare_targets(self, batch: list[dict], raw: list[torch.Tensor], padded_size: tuple[int, int]):
        """Per-image, per-level targets and colour similarities (``None`` when the pairwise term is off or the
        image has no instance) of a training batch; ``raw``: the ``(3, H, W)`` float 0-255 images on the device."""
        hp, wp = padded_size
        lc = self.cfg.loss
        targets: list[list[LevelTargets]] = []
        color_sims: list[torch.Tensor | None] = []
        # colour similarities feed the pairwise term: of every instance, or of the box-supervised ones only
        need_sims = lc.use_pairwise and (MASK_LOSSES[self.mask_loss_mode()].pairwise_on_all or any(
            (item.get("instances") or {}).get("usemask") is not None
            and not bool(torch.as_tensor(item["instances"]["usemask"]).bool().all()) for item in batch))
        padded_raw = pad_images(raw)  # (B, 3, Hp, Wp), raw 0-255, zero padded
        for i, item in enumerate(batch):
            inst = item.get("instances") or {}
            h, w = raw[i].shape[-2:]
            masks = inst.get("masks")
            if masks is None:
                masks = torch.zeros((0, h, w), dtype=torch.bool)
            masks = masks.to(self.device).bool()
            n = masks.shape[0]
            boxes = inst.get("boxes", torch.zeros((n, 4))).to(self.device).float().reshape(n, 4)
            labels = inst.get("labels", torch.zeros(n, dtype=torch.int64)).to(self.device).long().reshape(n)
            e = inst.get("embs")
            e = torch.zeros((n, self.cfg.num_embs)) if e is None else e
            e = e.to(self.device).float().reshape(n, self.cfg.num_embs)
            use = inst.get("usemask")
            use = torch.ones(n, dtype=torch.bool) if use is None else torch.as_tensor(use)
            use = use.to(self.device).bool().reshape(n)
            if not bool(use.all()):  # box-supervised instances: the target is the filled box, whatever the mask
                masks = torch.where(use[:, None, None], masks, box_masks(boxes, h, w))
            targets.append(assign_targets(boxes, masks, labels, e, (hp, wp), self.cfg.grids,
                                          self.cfg.scale_ranges, self.cfg.num_classes, self.cfg.sigma, use))
            if need_sims and n > 0:
                valid = torch.zeros((hp, wp), device=self.device)
                valid[:h, :w] = 1.0
                h0 = float((item.get("orig_size") or (h, w))[0])
                removed = int(lc.bottom_pixels_removed * float(h) / h0)
                if removed > 0:
                    valid[h - removed : h, :] = 0.0
                color_sims.append(image_color_similarity(padded_raw[i], valid, lc.pairwise_size,
                                                         lc.pairwise_dilation, MASK_STRIDE))
            else:
                color_sims.append(None)
        return targets, color_sims

    def losses(self, cates, kernels, embs, mask_feat, targets, color_sims) -> dict[str, torch.Tensor]:
        """Losses from the raw predictions and per-image, per-level targets (``SOLOv2.loss``)."""
        lc = self.cfg.loss
        num_levels = len(cates)
        zero = mask_feat.sum() * 0 + sum(k.sum() for k in kernels) * 0  # keeps every mask parameter in the graph

        # ---- masks: the mask loss chosen by name, on the positive cells' masks per level
        levels = positive_masks(kernels, mask_feat, targets, color_sims)
        # collapse monitor: foreground fractions of the positive cells' masks and of their targets
        fg_stats = [foreground_stats(lv.logits, lv.targets) for lv in levels]
        self.mask_stats = torch.stack(fg_stats).sum(0) if fg_stats else mask_feat.new_zeros(3)
        mode = self.mask_loss_mode()
        # the pairwise warm-up counts the forwards since the weak losses took over (official: since the start)
        it = float(self._iter.item()) - (lc.full_dice_iters if mode == "weak" else 0)
        warmup = min(max(it, 0.0) / float(lc.warmup_iters), 1.0) if lc.warmup_iters > 0 else 1.0
        out = MASK_LOSSES[mode].fn(levels, lc, warmup, zero)  # loss_ins, loss_ins_max, loss_pairwise

        # ---- category: focal loss over every cell of every level and image
        k = self.cfg.num_classes
        labels = torch.cat([torch.cat([per_img[l].cate.flatten() for per_img in targets]) for l in range(num_levels)])
        preds = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, k) for c in cates])  # (sum B*S*S, K)
        pos = ((labels != k) & (labels >= 0)).nonzero().squeeze(1)
        onehot = torch.zeros_like(preds)
        onehot[pos, labels[pos]] = 1.0
        weights = self.drop_loss_weights(kernels, mask_feat, targets, labels) if lc.drop_loss_iou is not None else None
        out["loss_cate"] = lc.focal_weight * sigmoid_focal_loss(preds, onehot, lc.focal_alpha, lc.focal_gamma,
                                                                weights) / (pos.numel() + 1)

        # ---- semantic embedding on positive cells with a known target
        e = self.cfg.num_embs
        emb_pred = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, e) for x in embs])  # (sum B*S*S, E)
        emb_zero = emb_pred.sum() * 0.0
        loss_emb = None
        if not lc.emb_loss_official_zero and pos.numel():
            emb_tgt = torch.cat([torch.cat([per_img[l].emb.reshape(-1, e) for per_img in targets])
                                 for l in range(num_levels)])
            loss_emb = embedding_loss(emb_pred[pos], emb_tgt[pos])
        out["loss_emb"] = emb_zero if loss_emb is None else lc.emb_weight * loss_emb + emb_zero
        return out

    @torch.no_grad()
    def drop_loss_weights(self, kernels, mask_feat, targets, labels) -> torch.Tensor:
        """DropLoss weights ``(sum B*S*S,)`` in the order of the category loss's rows (level-major, then image, then
        cell): 0 for a negative cell whose predicted mask overlaps none of its image's target masks
        (:func:`~unsolo.modeling.losses.drop_loss_keep`), 1 elsewhere. Also counts them in ``self.drop_stats``."""
        k, thr = self.cfg.num_classes, float(self.cfg.loss.drop_loss_iou)
        num_levels, batch = len(kernels), mask_feat.shape[0]
        feats = mask_feat.flatten(2)  # (B, D, HW)
        # each image's target masks: the masks of its positive cells over all levels (duplicates do not matter)
        tmasks = [torch.cat([per_img[lvl].masks.flatten(1) for lvl in range(num_levels)]) for per_img in targets]
        parts, offset = [], 0
        for lvl in range(num_levels):
            for b in range(batch):
                kern = kernels[lvl][b].flatten(1)  # (D, S*S)
                n = kern.shape[1]
                lab = labels[offset : offset + n]
                negative = lab == k
                parts.append(drop_loss_keep(lambda idx, kern=kern, b=b: kern[:, idx].t() @ feats[b], n, tmasks[b],
                                            negative, thr).float())
                offset += n
        weights = torch.cat(parts)
        self.drop_stats = torch.stack([(weights == 0).sum().float(), (labels == k).sum().float()])
        return weights

    # ------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]],
                  orig_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Detections per image.

        Args:
            images: ``float (B, 3, Hp, Wp)`` RGB 0-255, padded bottom/right (Hp, Wp multiples of 32).
            image_sizes: the resized image sizes ``(h, w)`` inside the padding.
            orig_sizes: the original sizes ``(H, W)`` the masks are returned at.
        Returns:
            per image a dict: ``masks`` bool ``(K, H, W)``, ``scores`` (decayed cate x maskness), ``category_scores``,
            ``maskness``, ``labels`` int64, ``embs`` ``(K, E)`` L2-normalised, ``boxes`` ``(K, 4)`` XYXY projection boxes.
        """
        x = normalize_image(images.to(self.device).float())
        for i, (h, w) in enumerate(image_sizes):  # the official model pads the *normalised* image with zeros
            x[i, :, h:, :] = 0
            x[i, :, :, w:] = 0
        ic = self.cfg.inference
        backbone = self.inference_backbone(ic.channels_last) if ic.fold_bn and not self.training else None
        if ic.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # the convolutions then keep NHWC throughout
        cates, kernels, embs, mask_feat = self.predict_raw(x, backbone)  # under the caller's autocast, if any
        with torch.autocast(x.device.type, enabled=False):  # post-processing in float32
            return self._postprocess([c.float() for c in cates], [kk.float() for kk in kernels],
                                     [ee.float() for ee in embs], mask_feat.float(), image_sizes, orig_sizes)

    def inference_backbone(self, channels_last: bool = False) -> nn.Module | None:
        """The backbone with its frozen BN folded into the convolutions (:func:`fold_frozen_bn`), for inference.

        Built on first use and cached outside the module tree (not in the state dict); rebuilt whenever a backbone
        tensor changed since (storage, dtype or in-place version: an optimizer step, ``load_state_dict``, ``.to``).
        Returns None when that cannot be told (tensors created under ``torch.inference_mode`` carry no version).
        """
        try:
            key = (channels_last,) + tuple((t.data_ptr(), t.dtype, t._version) for t in
                                           itertools.chain(self.backbone.parameters(), self.backbone.buffers()))
        except RuntimeError:
            return None
        cached = self.__dict__.get("_folded_backbone")
        if cached is None or cached[0] != key:
            folded = fold_frozen_bn(self.backbone).eval().requires_grad_(False)
            if channels_last:
                folded = folded.to(memory_format=torch.channels_last)
            self.__dict__["_folded_backbone"] = cached = (key, folded)
        return cached[1]

    def _postprocess(self, cates, kernels, embs, mask_feat, image_sizes, orig_sizes) -> list[dict]:
        return postprocess(cates, kernels, embs, mask_feat, image_sizes, orig_sizes, self.cfg)

    def inference_single(self, cate: torch.Tensor, kern: torch.Tensor, emb: torch.Tensor, mask_feat: torch.Tensor,
                         image_size: tuple[int, int], orig_size: tuple[int, int]) -> dict:
        """One image's detections (:func:`unsolo.modeling.inference.inference_single` with this model's config)."""
        return inference_single(cate, kern, emb, mask_feat, image_size, orig_size, self.cfg)


# ---------------------------------------------------------------------------------------- build / save
def build_model(cfg: ModelConfig | None = None) -> SOLOv2:
    """A randomly initialised :class:`SOLOv2` (official initialisations) for ``cfg`` (default: official R-101)."""
    return SOLOv2(cfg or ModelConfig())


def model_config(preset: str | None = None, overrides: Sequence[str] = ()) -> ModelConfig:
    """A :class:`ModelConfig` from a preset of ``unsolo/configs/model/`` and dotted overrides."""
    from unsolo.config import resolve

    return resolve(ModelConfig, "model", preset, overrides)
