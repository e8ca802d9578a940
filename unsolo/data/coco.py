"""COCO annotation files and results lists with compressed RLE masks.

Conventions used everywhere in unsolo:

* masks are ``bool``/``uint8`` arrays of shape ``(H, W)`` at the original image size;
* ``segmentation`` is COCO *compressed* RLE with ``counts`` as an ASCII string;
* ``bbox`` is **XYWH** in pixels (COCO), tight around the mask: ``[x_min, y_min, x_max - x_min + 1, y_max - y_min + 1]``;
* pseudo-labels (Free Mask, self-training) use ``category_id`` 1 and carry ``score`` and ``emb`` (128 floats).

Large jobs write shard files (``*.shard-NNNNN-of-MMMMM.json``) and merge them with :func:`merge_shards`;
every write is atomic (temporary file, then rename).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from unsolo.errors import UnsoloError
from unsolo.utils.io import read_json, write_json

#: Category list written into every class-agnostic pseudo-label file.
OBJECT_CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]


# ----------------------------------------------------------------------------------------------- RLE
def encode_mask(mask: np.ndarray) -> dict:
    """Binary ``(H, W)`` mask -> compressed RLE dict with ASCII ``counts``."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary ``(N, H, W)`` masks -> list of compressed RLE dicts (one C call for all of them)."""
    masks = np.asarray(masks, dtype=np.uint8)
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Any COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> ``uint8 (H, W)`` mask."""
    if isinstance(seg, list):  # polygons
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict):
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise UnsoloError(f"unsupported segmentation of type {type(seg).__name__}")
    return mask_utils.decode(rle)


def mask_to_xywh(mask: np.ndarray) -> list[float]:
    """Tight XYWH box of a binary mask, in pixels (``[0, 0, 0, 0]`` for an empty mask)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def rle_to_xywh(rle: dict) -> list[float]:
    """Tight XYWH box of a compressed RLE (pycocotools' toBbox)."""
    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return [float(v) for v in mask_utils.toBbox(r)]


def rle_area(rle: dict) -> float:
    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return float(mask_utils.area(r))


# ------------------------------------------------------------------------------------------- records
def instance_records(
    image_id: int,
    masks: np.ndarray,
    scores: Sequence[float] | None = None,
    embeddings: np.ndarray | None = None,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """Per-instance COCO records (without ``id``) for binary masks ``(N, H, W)`` of one image.

    Each record has ``image_id``, ``category_id`` (1 unless given), ``segmentation`` (compressed RLE),
    ``bbox`` (tight XYWH), ``area``, ``iscrowd`` 0 and, when given, ``score`` and ``emb`` (list of floats).
    """
    rles = encode_masks(masks)
    out = []
    for i, rle in enumerate(rles):
        rec = {
            "image_id": int(image_id),
            "category_id": int(category_ids[i]) if category_ids is not None else 1,
            "segmentation": rle,
            "bbox": rle_to_xywh(rle),
            "area": rle_area(rle),
            "iscrowd": 0,
        }
        if scores is not None:
            rec["score"] = float(scores[i])
        if embeddings is not None:
            rec["emb"] = [float(v) for v in np.asarray(embeddings[i]).reshape(-1)]
        out.append(rec)
    return out


def make_annotation_file(
    images: list[dict], annotations: list[dict], categories: list[dict] | None = None, info: dict | None = None
) -> dict:
    """A COCO annotation dict; annotation ``id`` s are (re)numbered from 1 in order."""
    anns = []
    for k, a in enumerate(annotations, start=1):
        a = dict(a)
        a["id"] = k
        anns.append(a)
    out = {"images": images, "annotations": anns, "categories": categories or OBJECT_CATEGORIES}
    if info is not None:
        out["info"] = info
    return out


def write_annotation_file(path: str | os.PathLike, coco: dict) -> Path:
    """Write a COCO annotation file atomically."""
    return write_json(path, coco)


def write_results(path: str | os.PathLike, results: list[dict]) -> Path:
    """Write a COCO results list (``[{image_id, category_id, segmentation, bbox, score}, ...]``) atomically."""
    return write_json(path, results)


# -------------------------------------------------------------------------------------------- reading
def load_annotation_file(path: str | os.PathLike, what: str = "annotation file") -> dict:
    """Read and validate a COCO annotation file (``images``, ``annotations``; ``categories`` optional)."""
    coco = read_json(path, what)
    if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
        raise UnsoloError(f"{what} {path} is not a COCO annotation file (needs 'images' and 'annotations')")
    if not isinstance(coco["images"], list) or not isinstance(coco["annotations"], list):
        raise UnsoloError(f"{what} {path}: 'images' and 'annotations' must be lists")
    for img in coco["images"]:
        if not isinstance(img, dict) or not {"id", "height", "width"} <= img.keys():
            raise UnsoloError(f"{what} {path}: every image needs 'id', 'height' and 'width'")
    coco.setdefault("categories", OBJECT_CATEGORIES)
    return coco


def annotations_by_image(coco: dict) -> dict[int, list[dict]]:
    """Group a COCO file's annotations by ``image_id`` (every image present, possibly with an empty list)."""
    out: dict[int, list[dict]] = {int(img["id"]): [] for img in coco["images"]}
    for a in coco["annotations"]:
        out.setdefault(int(a["image_id"]), []).append(a)
    return out


# ------------------------------------------------------------------------------------- shards + merge
def shard_path(out: str | os.PathLike, index: int, count: int) -> Path:
    """Path of shard ``index`` of ``count`` for the output file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{index:05d}-of-{count:05d}{out.suffix}")


def merge_annotation_files(parts: Iterable[dict], categories: list[dict] | None = None) -> dict:
    """Concatenate COCO annotation dicts: images sorted by id, duplicates refused, annotation ids renumbered."""
    images: dict[int, dict] = {}
    anns: list[dict] = []
    cats = categories
    for part in parts:
        for img in part["images"]:
            iid = int(img["id"])
            if iid in images:
                raise UnsoloError(f"image id {iid} appears in more than one shard")
            images[iid] = img
        anns.extend(part["annotations"])
        if cats is None:
            cats = part.get("categories")
    order = sorted(images)
    rank = {iid: k for k, iid in enumerate(order)}
    anns.sort(key=lambda a: (rank.get(int(a["image_id"]), len(rank)), a.get("id", 0)))
    return make_annotation_file([images[i] for i in order], anns, cats)


def merge_shards(out: str | os.PathLike, count: int, remove: bool = True) -> dict:
    """Merge ``count`` shard files written next to ``out`` into ``out`` (atomically); optionally delete them."""
    paths = [shard_path(out, i, count) for i in range(count)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UnsoloError(f"cannot merge: {len(missing)} shard file(s) missing, e.g. {missing[0]}")
    merged = merge_annotation_files(load_annotation_file(p, "shard") for p in paths)
    write_annotation_file(out, merged)
    if remove:
        for p in paths:
            p.unlink()
    return merged


def find_shards(out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    return sorted(Path(p) for p in glob.glob(str(out.with_name(f"{out.stem}.shard-*-of-*{out.suffix}"))))
