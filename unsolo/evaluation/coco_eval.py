"""COCO mask / box evaluation, class-agnostic by default (the FreeSOLO protocol).

The numbers are pycocotools' own: the ground truth and the predictions are loaded into ``COCO`` objects and
scored by ``COCOeval`` with its default parameters (IoU 0.50:0.95, maxDets 1/10/100, COCO area ranges). The
only difference from the official ``tools/eval_cocoapi.py`` is ``params.useCats``: 0 by default (all instances
pooled in one class, crowd regions handled as usual), 1 with ``class_aware=True``.

What this module adds around pycocotools, each step leaving valid inputs' numbers unchanged:

* predictions may be a COCO results list or a COCO annotation file (its ``annotations`` are used); a missing
  ``score`` becomes 1.0, so pseudo-labels can be scored as they are;
* a missing ``bbox`` is the tight XYWH box of the mask (pycocotools' ``toBbox``). pycocotools' ``loadRes`` picks
  its branch from the first prediction: with a box, detection areas (used only for the S/M/L split) are box
  areas, as for official SOLO results, and a later prediction without a box would crash it, so it gets its
  mask's box here; without one, detection areas are mask areas;
* an empty prediction list is scored (AP 0 wherever there is ground truth) instead of crashing ``loadRes``;
* class-agnostic: a prediction whose ``category_id`` is missing or unknown to the ground truth (e.g. pseudo-label
  id 1 against a dataset without id 1) joins the pooled class instead of being dropped silently by pycocotools,
  and ground-truth category ids missing from ``categories`` are added (pycocotools would drop those instances);
* polygon or uncompressed-RLE prediction masks are converted to compressed RLE (pycocotools accepts only the
  latter in results); ground truth without ``area``/``iscrowd``/``bbox`` gets them from its mask;
* images are matched by file name wherever the predictions name their images (:func:`match_images`): a
  prediction's ``image_id`` is then the ground truth's id of that file, whatever numbering the predictions used
  (ids from file names, an annotation tool's own order); predictions on images the ground truth does not list are
  left out with a warning and counted (``image_matching`` in the result);
* input problems (missing files, bad JSON, unknown image ids, missing masks) raise a one-line
  :class:`~unsolo.errors.UnsoloError`.

pycocotools' prints are redirected; its summary table is kept in the result's ``summary``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
from numbers import Real
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unsolo.errors import UnsoloError
from unsolo.utils.io import read_json

log = logging.getLogger("unsolo.evaluation")

#: Names of ``COCOeval.stats`` in order (segm and bbox).
METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("segm", "bbox")


# ------------------------------------------------------------------------------------------- loading
def load_ground_truth(gt: str | os.PathLike | dict) -> dict:
    """Validated COCO ground-truth dict (a copy) from a path or a dict."""
    where = str(gt) if not isinstance(gt, dict) else "ground truth"
    data = read_json(gt, "ground-truth file") if not isinstance(gt, dict) else copy.deepcopy(gt)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise UnsoloError(f"{where} is not a COCO annotation file (needs 'images' and 'annotations' lists)")
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "height", "width"} <= img.keys():
            raise UnsoloError(f"{where}: every image needs 'id', 'height' and 'width'")
    ids = {img["id"] for img in data["images"]}
    cats = data.get("categories") or []
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise UnsoloError(f"{where}: 'categories' must be a list of objects with an 'id'")
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in data["images"]}
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise UnsoloError(f"{where}: annotation #{k} needs 'image_id' and 'category_id'")
        if a["image_id"] not in ids:
            raise UnsoloError(f"{where}: annotation #{k} refers to image id {a['image_id']!r}, absent from 'images'")
        if "segmentation" not in a and "bbox" not in a:
            raise UnsoloError(f"{where}: annotation #{k} has neither 'segmentation' nor 'bbox'")
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        if "area" not in a or "bbox" not in a:
            if "segmentation" in a:
                rle = _to_rle(a["segmentation"], *sizes[a["image_id"]], where, k)
                a.setdefault("area", float(mask_utils.area(rle)))
                a.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])
            else:
                a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
    used = {a["category_id"] for a in data["annotations"]}
    known = {c["id"] for c in cats}
    data["categories"] = list(cats) + [{"id": c, "name": str(c)} for c in sorted(used - known, key=str)]
    if not data["categories"]:
        data["categories"] = [{"id": 1, "name": "object"}]
    return data


def _to_rle(seg: Any, h: int, w: int, where: str, k: int) -> dict:
    """Any COCO segmentation -> compressed RLE with bytes ``counts`` (pycocotools' own format)."""
    try:
        if isinstance(seg, list):
            return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            return mask_utils.frPyObjects(seg, h, w)
        if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)) and "size" in seg:
            counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
            return {"size": [int(v) for v in seg["size"]], "counts": counts}
    except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors on malformed input
        raise UnsoloError(f"{where}: segmentation of annotation #{k} is malformed ({e})") from None
    raise UnsoloError(f"{where}: segmentation of annotation #{k} is neither polygons nor RLE")


def load_predictions(predictions: str | os.PathLike | list | dict) -> list[dict]:
    """Predictions as a list of dicts (a copy): a COCO results list, or a COCO annotation file's ``annotations``."""
    where = "predictions"
    if isinstance(predictions, (str, os.PathLike)):
        where = str(predictions)
        predictions = read_json(predictions, "predictions file")
    else:
        predictions = copy.deepcopy(predictions)
    if isinstance(predictions, dict):
        if not isinstance(predictions.get("annotations"), list):
            raise UnsoloError(f"{where} is neither a COCO results list nor a COCO file with 'annotations'")
        names = {im.get("id"): im.get("file_name") for im in predictions.get("images") or [] if isinstance(im, dict)}
        predictions = predictions["annotations"]
        for p in predictions:  # an annotation file names its images: its records are matched by file name too
            if isinstance(p, dict) and "file_name" not in p and names.get(p.get("image_id")):
                p["file_name"] = names[p["image_id"]]
    if not isinstance(predictions, list):
        raise UnsoloError(f"{where} is neither a COCO results list nor a COCO file with 'annotations'")
    for k, p in enumerate(predictions):
        if not isinstance(p, dict) or "image_id" not in p:
            raise UnsoloError(f"{where}: prediction #{k} is not an object with an 'image_id'")
    return predictions


def _norm_name(name: str) -> str:
    """A file name as a POSIX relative path (``./a/b.png`` and ``a\\b.png`` -> ``a/b.png``)."""
    return PurePosixPath(str(name).replace("\\", "/")).as_posix() if name else ""


def match_images(preds: list[dict], gt: dict) -> tuple[list[dict], dict]:
    """Give every prediction the ground truth's id of its image, found by file name.

    Predictions that carry ``file_name`` (``unsolo predict`` writes it; an annotation file's records get it from
    its ``images``) are matched to the ground-truth image with the same relative path, or else the same base name
    when exactly one ground-truth image has it: their ``image_id`` is replaced by that image's id, whatever numbering
    they came with. Predictions whose image the ground truth does not list are left out and counted. Predictions
    without ``file_name`` keep their ids (trusted: they must come from this ground truth); mixing both is an error.

    Returns the predictions to score and a report: ``by`` ("file_name" or "image_id"), ``renumbered`` (predictions
    whose id changed), ``predictions_not_in_gt`` / ``images_not_in_gt`` (left out), ``gt_images_without_predictions``.
    """
    named = [bool(p.get("file_name")) for p in preds]
    gt_ids = {img["id"] for img in gt["images"]}
    if not any(named):
        hit = {p["image_id"] for p in preds}
        return preds, {"by": "image_id", "renumbered": 0, "predictions_not_in_gt": 0, "images_not_in_gt": 0,
                       "gt_images_without_predictions": len(gt_ids - hit)}
    if not all(named):
        raise UnsoloError(f"{named.count(False)} prediction(s) have no 'file_name' while the others have one: "
                            "images cannot be matched to the ground truth consistently")
    by_path: dict[str, object] = {}
    by_base: dict[str, list] = {}
    for img in gt["images"]:
        name = _norm_name(img.get("file_name", ""))
        if name:
            by_path[name] = img["id"]
            by_base.setdefault(name.rsplit("/", 1)[-1], []).append(img["id"])
    out, renumbered, missing_files = [], 0, set()
    for p in preds:
        name = _norm_name(p["file_name"])
        gid = by_path.get(name)
        if gid is None:
            cands = by_base.get(name.rsplit("/", 1)[-1], [])
            gid = cands[0] if len(cands) == 1 else None
        if gid is None:
            missing_files.add(name)
            continue
        if p["image_id"] != gid:
            renumbered += 1
            p = {**p, "image_id": gid}
        out.append(p)
    hit = {p["image_id"] for p in out}
    report = {"by": "file_name", "renumbered": renumbered, "predictions_not_in_gt": len(preds) - len(out),
              "images_not_in_gt": len(missing_files), "gt_images_without_predictions": len(gt_ids - hit)}
    if missing_files:
        log.warning("%d prediction(s) on %d image(s) the ground truth does not list (e.g. %s) are left out",
                    report["predictions_not_in_gt"], len(missing_files), sorted(missing_files)[0])
    return out, report


def _prepare_predictions(
    preds: list[dict], gt: dict, iou_type: str, class_aware: bool
) -> list[dict]:
    """Validate predictions against ``gt`` and bring them to the form pycocotools' ``loadRes`` expects."""
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
    missing = [p["image_id"] for p in preds if p["image_id"] not in sizes]
    if missing:
        raise UnsoloError(
            f"{len(missing)} prediction(s) refer to image ids absent from the ground truth, e.g. image id {missing[0]!r}"
        )
    gt_cats = {c["id"] for c in gt["categories"]}
    agnostic_cat = gt["categories"][0]["id"]
    # pycocotools' loadRes picks its branch from the first prediction: with a box, every detection's area is its
    # box area (and a prediction without a box would crash it, so it gets its mask's box); without, mask areas.
    box_branch = bool(preds) and _has_box(preds[0])
    out = []
    for k, p in enumerate(preds):
        q = {"image_id": p["image_id"]}
        score = p.get("score", 1.0)
        if not isinstance(score, Real) or isinstance(score, bool) or not np.isfinite(score):
            raise UnsoloError(f"prediction #{k}: 'score' must be a finite number (got {score!r})")
        q["score"] = float(score)
        cat = p.get("category_id")
        if class_aware:
            if cat is None:
                raise UnsoloError(f"prediction #{k} has no 'category_id' (needed for class-aware evaluation)")
            if not isinstance(cat, (int, str)) or cat not in gt_cats:
                raise UnsoloError(f"prediction #{k} has category_id {cat!r}, unknown to the ground truth")
            q["category_id"] = cat
        else:
            # Known ids are kept (pycocotools orders tied scores by category); unknown or missing ids would be
            # dropped silently by pycocotools, so they join the pooled class.
            q["category_id"] = cat if isinstance(cat, (int, str)) and cat in gt_cats else agnostic_cat
        has_seg = p.get("segmentation") not in (None, [], {})
        if iou_type == "segm" and not has_seg:
            raise UnsoloError(
                f"prediction #{k} (image id {p['image_id']!r}) has no 'segmentation' (needed for segm evaluation)"
            )
        if has_seg:
            q["segmentation"] = _to_rle(p["segmentation"], *sizes[p["image_id"]], "predictions", k)
        if _has_box(p):
            box = p["bbox"]
            if not all(isinstance(v, Real) and np.isfinite(v) for v in box):
                raise UnsoloError(f"prediction #{k}: 'bbox' must be 4 numbers [x, y, w, h] (got {box!r})")
            q["bbox"] = [float(v) for v in box]
        elif p.get("bbox") not in (None, []):
            raise UnsoloError(f"prediction #{k}: 'bbox' must be 4 numbers [x, y, w, h] (got {p['bbox']!r})")
        elif not has_seg:
            raise UnsoloError(f"prediction #{k} (image id {p['image_id']!r}) has neither 'bbox' nor 'segmentation'")
        elif box_branch:
            q["bbox"] = [float(v) for v in mask_utils.toBbox(q["segmentation"])]
        out.append(q)
    return out


def _has_box(p: dict) -> bool:
    box = p.get("bbox")
    return isinstance(box, (list, tuple)) and len(box) == 4


# ---------------------------------------------------------------------------------------- evaluation
def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detection (pycocotools' ``loadRes`` cannot build one)."""
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                   "annotations": []}
    res.createIndex()
    return res


def _run_cocoeval(coco_gt: COCO, coco_dt: COCO, iou_type: str, class_aware: bool) -> tuple[np.ndarray, str]:
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.params.useCats = 1 if class_aware else 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64), summary.getvalue()


def percent(value: float) -> float | None:
    """A pycocotools value as a percentage with one decimal, like the papers; ``None`` for -1 (no ground truth)."""
    return None if value < 0 else round(100.0 * float(value), 1)


def _result(stats: np.ndarray, summary: str, iou_type: str, class_aware: bool, n_img: int, n_pred: int) -> dict:
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, stats)}
    return {
        "iou_type": iou_type,
        "class_aware": bool(class_aware),
        "num_images": n_img,
        "num_predictions": n_pred,
        **metrics,
        "stats": [float(v) for v in stats],
        "percent": {name: percent(v) for name, v in metrics.items()},
        "summary": summary,
    }


def evaluate(
    gt: str | os.PathLike | dict,
    predictions: str | os.PathLike | list | dict,
    iou_type: str = "segm",
    class_aware: bool = False,
) -> dict:
    """Score predictions against a COCO ground truth with pycocotools.

    Args:
        gt: COCO annotation file (path or dict).
        predictions: COCO results list or COCO annotation file (path, list or dict); ``segmentation`` as compressed
            RLE (polygons accepted), ``bbox`` XYWH in pixels (optional), ``score`` (optional, default 1.0).
        iou_type: ``"segm"``, ``"bbox"`` or ``"both"``.
        class_aware: keep categories (``useCats=1``); default pools all instances in one class (``useCats=0``).

    Returns:
        For one IoU type: ``{"AP": ..., "AP50": ..., ..., "ARl": ...}`` (pycocotools' values in [0, 1], -1 where the
        ground truth has no instance in the area range) plus ``stats`` (the 12 values in order), ``percent``
        (the same in percent with one decimal, ``None`` for -1), ``summary`` (pycocotools' printed table),
        ``iou_type``, ``class_aware``, ``num_images``, ``num_predictions``. For ``"both"``: ``{"segm": ..., "bbox": ...}``.
    """
    if iou_type == "both":
        gt_data, preds = load_ground_truth(gt), load_predictions(predictions)
        return {t: evaluate(gt_data, preds, t, class_aware) for t in IOU_TYPES}
    if iou_type not in IOU_TYPES:
        raise UnsoloError(f"iou type must be one of segm, bbox, both (got {iou_type!r})")
    gt_data = load_ground_truth(gt)
    preds, matching = match_images(load_predictions(predictions), gt_data)
    preds = _prepare_predictions(preds, gt_data, iou_type, class_aware)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_data
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(preds) if preds else _empty_results(coco_gt)
    stats, summary = _run_cocoeval(coco_gt, coco_dt, iou_type, class_aware)
    return {**_result(stats, summary, iou_type, class_aware, len(gt_data["images"]), len(preds)),
            "image_matching": matching}


def format_table(results: dict) -> str:
    """Readable table of one or several results (percentages, one decimal; ``-`` where undefined)."""
    rows = [results] if "iou_type" in results else [results[t] for t in IOU_TYPES if t in results]
    head = f"{'':6s}" + "".join(f"{n:>7s}" for n in METRIC_NAMES)
    lines = [head]
    for r in rows:
        cells = "".join(f"{'-' if r['percent'][n] is None else format(r['percent'][n], '.1f'):>7s}" for n in METRIC_NAMES)
        lines.append(f"{r['iou_type']:6s}{cells}")
    mode = "class-aware" if rows[0]["class_aware"] else "class-agnostic"
    lines.append(f"({mode}; {rows[0]['num_images']} images, {rows[0]['num_predictions']} predictions; values in %)")
    m = rows[0].get("image_matching")
    if m:
        how = "by file name" if m["by"] == "file_name" else "by image id (the predictions carry no file name)"
        extra = (f"; {m['predictions_not_in_gt']} prediction(s) on {m['images_not_in_gt']} image(s) absent from the "
                 f"ground truth left out" if m["predictions_not_in_gt"] else "")
        lines.append(f"(images matched {how}; {m['gt_images_without_predictions']} ground-truth image(s) without a "
                     f"prediction{extra})")
    return "\n".join(lines)


def write_metrics(path: str | os.PathLike, results: dict) -> Path:
    """Write evaluation results as JSON, atomically."""
    from unsolo.utils.io import write_json

    return write_json(path, results, indent=2)
