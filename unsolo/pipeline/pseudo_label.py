"""Self-training pseudo-labels (paper Sec. 3.3; official ``gen_pseudo_labels.sh`` + ``tools/gen_pseudo_labels.py``).

A trained model is run on its own training images with the test pipeline; its confident predictions become the
labels of the next round. Official settings: Matrix-NMS-decayed score >= 0.3 (``UPDATE_THR``), at most 20 per
image (``MAX_PER_IMG``), and predictions whose box is at least 95 % as wide as the image are dropped.

Deliberate fixes (documented): the width filter uses the real box width (the official script tests
``bbox[2] - bbox[0]`` on XYWH boxes, spec Q2), and every label carries the model's predicted 128-d embedding
(the official file has none, so the second round's embedding targets were zeros).
The output has the Free Mask layout: COCO annotation file, RLE, tight XYWH ``bbox``, ``area``, ``score``,
``emb``, ``category_id`` 1, ``iscrowd`` 0; ``images`` lists every image that kept at least one label.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from unsolo.data.coco import instance_records, make_annotation_file, write_annotation_file
from unsolo.data.images import SkipCounter, list_images
from unsolo.utils.dist import barrier, distributed

log = logging.getLogger("unsolo.pseudo_label")


@dataclass
class PseudoLabelConfig:
    score_thr: float = 0.3  # UPDATE_THR of the official self-training pass: min decayed score (cate x maskness)
    max_per_img: int = 20  # MAX_PER_IMG of the official self-training pass
    max_width_frac: float = 0.95  # drop a label whose box is at least this fraction of the image width
    candidate_score_thr: float = 0.1  # SCORE_THR: min category score of a candidate cell (unchanged from testing)


def select_pseudo_labels(output: dict, image_width: int, max_width_frac: float = 0.95) -> np.ndarray:
    """Indices of the detections of one image kept as labels: non-empty and narrower than ``max_width_frac * W``.

    ``output``: a ``Predictor`` result (``masks`` ``(K, H, W)``, ``boxes_xywh`` ``(K, 4)``), already limited by
    score and count through the model's inference settings.
    """
    boxes = np.asarray(output["boxes_xywh"], dtype=np.float64).reshape(-1, 4)
    masks = np.asarray(output["masks"])
    nonempty = masks.any(axis=(1, 2)) if len(boxes) else np.zeros(0, bool)
    return np.flatnonzero(nonempty & (boxes[:, 2] < max_width_frac * image_width))


def pseudo_label(
    source: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    cfg: PseudoLabelConfig | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    batch_size: int = 1,
    device: str = "auto",
    amp: bool = False,
    precision: str = "float32",
    short_side: int = 800,
    max_side: int = 1333,
    workers: int = 2,
) -> dict:
    """Write the next round's labels for the images of ``source`` to ``out`` (COCO annotation file); return it."""
    from unsolo.pipeline.predict import (
        build_predictor,
        gather_to_rank0,
        inference_overrides,
        iter_predictions,
        rank_records,
        resolve_device,
    )

    cfg = cfg or PseudoLabelConfig()
    records = list_images(source, image_root)
    overrides = inference_overrides(cfg.candidate_score_thr, cfg.score_thr, cfg.max_per_img)
    with distributed(str(resolve_device(device))) as dev:
        predictor = build_predictor(model, dev, amp=amp, short_side=short_side, max_side=max_side, overrides=overrides,
                                    precision=precision)
        skipped = SkipCounter()
        images: list[dict] = []
        anns: list[dict] = []
        for rec, image, o in iter_predictions(rank_records(records), predictor, batch_size=batch_size,
                                              workers=workers, skipped=skipped, desc="pseudo-label"):
            h, w = image.shape[:2]
            keep = select_pseudo_labels(o, w, cfg.max_width_frac)
            if len(keep) == 0:
                continue
            images.append({"id": rec.image_id, "file_name": rec.file_name, "height": h, "width": w})
            anns.extend(instance_records(rec.image_id, o["masks"][keep], o["scores"][keep], o["embeddings"][keep]))
        skipped.report()
        all_images, all_anns = gather_to_rank0(images), gather_to_rank0(anns)
        coco = None
        if all_images is not None:
            order = {img["id"]: k for k, img in enumerate(sorted(all_images, key=lambda i: i["id"]))}
            all_anns.sort(key=lambda a: order[a["image_id"]])  # stable: per-image order (by score) kept
            coco = make_annotation_file(sorted(all_images, key=lambda i: i["id"]), all_anns)
            write_annotation_file(out, coco)
            log.info("pseudo-labels: %d masks on %d of %d images -> %s", len(all_anns), len(all_images),
                     len(records), out)
        barrier()
    return coco if coco is not None else make_annotation_file(images, anns)


def merge_with_previous(new: dict, old: dict, iou_thresh: float = 0.5) -> tuple[dict, int]:
    """CutLER's label update between self-training rounds: the new round's labels, plus every old label that no new
    label of the same image overlaps with mask IoU > ``iou_thresh`` (an object the model stopped predicting is not
    forgotten). Images are matched by ``file_name``. Returns the merged COCO file (ids renumbered) and the number of
    old labels kept."""
    from pycocotools import mask as mask_utils

    new_imgs = {im["file_name"]: im for im in new["images"]}
    images = [dict(im) for im in new["images"]]
    by_img: dict = {}
    for a in new["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    old_by_img: dict = {}
    for a in old["annotations"]:
        old_by_img.setdefault(a["image_id"], []).append(a)
    anns, kept = [dict(a) for a in new["annotations"]], 0
    next_id = max([im["id"] for im in images], default=0) + 1
    for im in old["images"]:
        olds = old_by_img.get(im["id"], [])
        if not olds:
            continue
        target = new_imgs.get(im["file_name"])
        if target is None:  # no new label on this image: all its old labels stay
            target = {**im, "id": next_id}
            next_id += 1
            images.append(target)
            new_imgs[im["file_name"]] = target
        news = by_img.get(target["id"], [])
        if news:
            ious = mask_utils.iou([a["segmentation"] for a in olds], [a["segmentation"] for a in news],
                                  [0] * len(news))
            stay = np.asarray(ious).reshape(len(olds), len(news)).max(1) <= iou_thresh
        else:
            stay = np.ones(len(olds), bool)
        for a, s in zip(olds, stay):
            if s:
                anns.append({**a, "image_id": target["id"]})
                kept += 1
    for k, a in enumerate(anns, 1):
        a["id"] = k
    return make_annotation_file(images, anns, new.get("categories")), kept
