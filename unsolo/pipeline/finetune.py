"""Few-label fine-tuning (``unsolo finetune``): class-aware SOLOv2 with the supervised losses, started from a
FreeSOLO checkpoint, a backbone only, or nothing, trained by the same engine as ``unsolo train``.

What differs from ``unsolo train`` is only configuration (presets in ``unsolo/configs/finetune/``):

* the number of classes is the label file's number of categories, and the checkpoint records each channel's
  category id (``model.category_ids``), so ``unsolo predict`` writes the label file's ids and
  ``unsolo evaluate --class-aware`` scores them;
* supervised SOLOv2 losses: sigmoid focal loss + Dice on full masks with weight 3 (``model.loss.mask_loss=full``);
  annotations marked ``"usemask": 0`` (``unsolo split-labels --mode masks``) are trained from their box with
  the max-projection Dice and the pairwise term instead;
* each image fed once (weak view: multi-scale resize + flip), no strong view, no copy-paste;
* initialisation (``init_checkpoint`` / ``init_exclude`` of :class:`~unsolo.pipeline.train.TrainConfig`):
  ``init="path"`` transfers every tensor of a FreeSOLO checkpoint (this project's or the official release) except
  the category classifier, the embedding head and the pairwise warm-up counter; ``init_backbone=W`` loads only a
  ResNet (DenseCL, torchvision); ``init="none"`` starts from random weights (baseline).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from unsolo.data.coco import load_annotation_file
from unsolo.errors import UnsoloError
from unsolo.pipeline.train import TrainConfig, resolve_train_config, train

log = logging.getLogger("unsolo.finetune")

#: Prefixes not transferred from a FreeSOLO checkpoint: the class-specific classifier, the embedding head (not
#: trained by the supervised losses) and the pairwise warm-up counter (restarts with the new losses).
DEFAULT_EXCLUDE = ("ins_head.cate_pred.", "ins_head.emb_pred.", "_iter")


def label_categories(labels: str | os.PathLike) -> list[int]:
    """Sorted category ids of a labelled COCO file (its ``categories`` plus any id used by an annotation)."""
    coco = load_annotation_file(labels, "label file")
    if not coco["annotations"]:
        raise UnsoloError(f"label file {labels} has no annotations")
    ids = {int(c["id"]) for c in coco.get("categories") or [] if isinstance(c, dict) and "id" in c}
    ids |= {int(a.get("category_id", 1)) for a in coco["annotations"]}
    return sorted(ids)


def scale_steps(steps: Sequence[int], old_max: int, new_max: int) -> tuple[int, ...]:
    """LR steps of a schedule of ``old_max`` iterations moved to the same fractions of ``new_max``."""
    return tuple(int(round(s * new_max / old_max)) for s in steps)


def resolve_finetune_config(
    labels: str | os.PathLike,
    preset: str | None = "small_r18",
    overrides: Sequence[str] = (),
    extra: dict | None = None,
    *,
    init: str | None = None,
    init_backbone: str | None = None,
    iters: int | None = None,
) -> TrainConfig:
    """The :class:`TrainConfig` of a fine-tuning run.

    Args:
        labels: the labelled COCO file (sets ``model.num_classes``).
        preset: a preset of ``unsolo/configs/finetune/`` (or a YAML path).
        extra: named CLI values (nested dict), applied before ``overrides`` (``--set``).
        init: a FreeSOLO checkpoint path, or ``"none"`` for random weights; init_backbone: a backbone-only start.
        iters: new ``solver.max_iter``; the preset's LR steps move to the same fractions of the run.
    """
    if (init is None) == (init_backbone is None):
        raise UnsoloError("give exactly one of --init CKPT (a FreeSOLO checkpoint), --init none (random) or "
                            "--init-backbone W (a backbone only)")
    if init is not None and init != "none" and not Path(init).is_file():
        raise UnsoloError(f"init checkpoint not found: {init}")
    if init_backbone is not None and not Path(init_backbone).is_file():
        raise UnsoloError(f"backbone weights not found: {init_backbone}")
    cats = label_categories(labels)
    extra = dict(extra or {})
    extra.setdefault("model", {})["num_classes"] = len(cats)
    extra.setdefault("data", {})["class_agnostic"] = False
    extra["init_checkpoint"] = None if init in (None, "none") else str(init)
    extra["backbone_weights"] = None if init_backbone is None else str(init_backbone)
    base = resolve_train_config(preset, (), None, stage="finetune") if preset else TrainConfig()
    if iters is not None:
        if iters < 1:
            raise UnsoloError("--iters must be >= 1")
        solver = extra.setdefault("solver", {})
        solver["max_iter"] = iters
        solver["steps"] = list(scale_steps(base.solver.steps, base.solver.max_iter, iters))
    cfg = resolve_train_config(preset, overrides, extra, stage="finetune")
    if cfg.init_checkpoint and not cfg.init_exclude:
        log.warning("init_exclude is empty: the classifier is transferred too (it must have %d classes)", len(cats))
    return cfg


def finetune(
    cfg: TrainConfig,
    labels: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    resume: bool = True,
) -> dict:
    """Train the class-aware model of ``cfg`` on ``labels`` (images under ``images``); see :func:`train`."""
    mode = ("FreeSOLO checkpoint " + str(cfg.init_checkpoint)) if cfg.init_checkpoint else (
        ("backbone " + str(cfg.backbone_weights)) if cfg.backbone_weights else "random weights")
    log.info("fine-tuning a %d-class %s SOLOv2 from %s", cfg.model.num_classes, cfg.model.arch, mode)
    return train(cfg, images, labels, out, image_root=None, device=device, resume=resume)
