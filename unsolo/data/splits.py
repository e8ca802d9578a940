"""Few-label splits of a labelled COCO file (``unsolo split-labels``), as pure functions.

Two modes, as in the FreeSOLO paper's semi-supervised experiments (Tables 5/6):

* ``images``: keep ``percent`` % of the images (drawn with the seed) with all their annotations; the other
  images leave the file.
* ``masks``: keep every image, every annotation with its class and box, but only the annotations of ``percent`` %
  of the images keep their mask for training: each annotation gets ``"usemask": 1`` (mask supervised) or
  ``"usemask": 0`` (the trainer replaces its mask by the filled box from ``bbox`` and trains it with the
  box-projection and pairwise terms only). The ``segmentation`` field is kept (the file stays valid COCO and
  scorable), the trainer never reads it for ``usemask`` 0.

The number of kept images is ``max(1, round(percent / 100 * N))``; the draw is a seeded permutation of the
images sorted by id, so the same file, percent and seed always give the same split, whatever the order of
``images`` in the file.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np

from unsolo.errors import UnsoloError

SplitMode = Literal["images", "masks"]


def check_coco(coco: object, name: str = "label file") -> dict:
    """Raise a one-line :class:`UnsoloError` unless ``coco`` looks like a COCO annotation file with masks."""
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(
            coco.get("annotations"), list):
        raise UnsoloError(f"{name} is not a COCO annotation file (needs 'images' and 'annotations' lists)")
    if not coco["images"]:
        raise UnsoloError(f"{name} lists no images")
    for img in coco["images"]:
        if not isinstance(img, dict) or "id" not in img:
            raise UnsoloError(f"{name}: an entry of 'images' has no 'id'")
    for ann in coco["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise UnsoloError(f"{name}: an annotation has no 'image_id'")
    return coco


def num_selected(num_images: int, percent: float) -> int:
    """Images kept for ``percent`` % of ``num_images``: ``round(p/100 * N)``, at least 1."""
    if not (isinstance(percent, (int, float)) and math.isfinite(percent) and 0 < percent <= 100):
        raise UnsoloError(f"--percent must be in (0, 100], got {percent}")
    return min(num_images, max(1, int(round(percent / 100.0 * num_images))))


def select_images(image_ids: list[int], percent: float, seed: int) -> set[int]:
    """The ids of the images that keep their labels (``images`` mode) or masks (``masks`` mode)."""
    ids = sorted(int(i) for i in image_ids)
    k = num_selected(len(ids), percent)
    order = np.random.default_rng(int(seed)).permutation(len(ids))[:k]
    return {ids[i] for i in order}


def split_labels(coco: dict, percent: float, mode: SplitMode = "images", seed: int = 0) -> dict:
    """A new COCO dict with ``percent`` % of the labels (see the module docstring); ``coco`` is not modified.

    Adds ``info.unsolo_split = {"percent", "mode", "seed", "selected_images", "total_images"}``.
    """
    check_coco(coco)
    if mode not in ("images", "masks"):
        raise UnsoloError(f"--mode must be 'images' or 'masks', got {mode!r}")
    chosen = select_images([img["id"] for img in coco["images"]], percent, seed)
    out = {k: copy.deepcopy(v) for k, v in coco.items() if k not in ("images", "annotations")}
    if mode == "images":
        out["images"] = [copy.deepcopy(img) for img in coco["images"] if int(img["id"]) in chosen]
        out["annotations"] = [copy.deepcopy(a) for a in coco["annotations"] if int(a["image_id"]) in chosen]
        for a in out["annotations"]:
            a["usemask"] = 1
    else:
        out["images"] = copy.deepcopy(coco["images"])
        out["annotations"] = []
        for a in coco["annotations"]:
            b = copy.deepcopy(a)
            if "bbox" not in b and int(a["image_id"]) not in chosen:
                raise UnsoloError(f"annotation {a.get('id')} has no 'bbox': mask mode needs boxes")
            b["usemask"] = int(int(a["image_id"]) in chosen)
            out["annotations"].append(b)
    info = dict(out.get("info") or {})
    info["unsolo_split"] = {"percent": float(percent), "mode": mode, "seed": int(seed),
                              "selected_images": len(chosen), "total_images": len(coco["images"])}
    out["info"] = info
    return out
