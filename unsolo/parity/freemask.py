"""``unsolo parity freemask``: run Free Mask on the parity images and compare with the official output.

Every official mask must be matched (greedy, by mask IoU, within its image) with IoU >= ``--min-iou``, the
score within ``--max-score-diff``, the embedding with cosine >= ``--min-cos`` and the XYXY projection box
within ``--max-box-diff`` pixels; no extra masks are allowed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from unsolo.data.coco import annotations_by_image, decode_segmentation, load_annotation_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder of the parity images (shared/parity/images)")
    p.add_argument("--weights", required=True, help="backbone from shared/parity/make_backbone.py 0 OUT.pth")
    p.add_argument("--expected", required=True, help="official output (shared/parity/expected/freemask_seed0.json)")
    p.add_argument("--arch", default="resnet101", help="backbone depth of --weights (default resnet101)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--min-iou", type=float, default=0.99, help="minimum mask IoU of a matched pair (default 0.99)")
    p.add_argument("--max-score-diff", type=float, default=1e-3, help="maximum |score difference| (default 1e-3)")
    p.add_argument("--min-cos", type=float, default=0.999, help="minimum embedding cosine (default 0.999)")
    p.add_argument("--max-box-diff", type=float, default=2.0, help="maximum box coordinate difference in pixels (default 2)")


def compare(ours: dict, expected: dict, min_iou=0.99, max_score_diff=1e-3, min_cos=0.999, max_box_diff=2.0) -> dict:
    """Compare two Free Mask COCO files (bbox XYXY in both). Returns the JSON summary with ``ok``."""
    size = {int(i["id"]): (int(i["height"]), int(i["width"])) for i in expected["images"]}
    size.update({int(i["id"]): (int(i["height"]), int(i["width"])) for i in ours["images"]})
    exp_by, our_by = annotations_by_image(expected), annotations_by_image(ours)
    matched, missing, extra = 0, 0, 0
    ious, sdiffs, coss, bdiffs = [], [], [], []
    for iid in sorted(set(exp_by) | set(our_by)):
        e_anns, o_anns = exp_by.get(iid, []), list(our_by.get(iid, []))
        h, w = size[iid]
        o_masks = [decode_segmentation(a["segmentation"], h, w).astype(bool) for a in o_anns]
        used: set[int] = set()
        for a in sorted(e_anns, key=lambda a: -a["score"]):
            em = decode_segmentation(a["segmentation"], h, w).astype(bool)
            best, best_iou = -1, 0.0
            for j, om in enumerate(o_masks):
                if j in used:
                    continue
                union = np.logical_or(em, om).sum()
                iou = float(np.logical_and(em, om).sum() / union) if union else 0.0
                if iou > best_iou:
                    best, best_iou = j, iou
            if best < 0 or best_iou < 0.5:
                missing += 1
                continue
            used.add(best)
            matched += 1
            o = o_anns[best]
            ious.append(best_iou)
            sdiffs.append(abs(float(a["score"]) - float(o["score"])))
            if "emb" in a and "emb" in o:
                ea, eo = np.asarray(a["emb"], np.float64), np.asarray(o["emb"], np.float64)
                coss.append(float(ea @ eo / max(np.linalg.norm(ea) * np.linalg.norm(eo), 1e-12)))
            bdiffs.append(float(np.abs(np.asarray(a["bbox"], float) - np.asarray(o["bbox"], float)).max()))
        extra += len(o_anns) - len(used)
    summary = {
        "expected": sum(len(v) for v in exp_by.values()),
        "ours": sum(len(v) for v in our_by.values()),
        "matched": matched,
        "missing": missing,
        "extra": extra,
        "min_iou": min(ious) if ious else None,
        "max_score_diff": max(sdiffs) if sdiffs else None,
        "min_emb_cosine": min(coss) if coss else None,
        "max_box_diff": max(bdiffs) if bdiffs else None,
    }
    summary["ok"] = bool(
        missing == 0
        and extra == 0
        and matched > 0
        and min(ious) >= min_iou
        and max(sdiffs) <= max_score_diff
        and (not coss or min(coss) >= min_cos)
        and max(bdiffs) <= max_box_diff
    )
    return summary


def run(args) -> dict:
    from unsolo.generators import FreeMask, FreeMaskConfig
    from unsolo.pipeline.freemask import FreeMaskRun, run_freemask

    expected = load_annotation_file(args.expected, "expected Free Mask output")
    with tempfile.TemporaryDirectory(prefix="unsolo-parity-") as tmp:
        out = Path(tmp) / "freemask.json"
        run_freemask(
            FreeMaskRun(input=args.images, out=str(out), weights=args.weights, arch=args.arch, device=args.device, workers=args.workers),
            FreeMask(FreeMaskConfig(official_bbox=True)),  # the official file stores the XYXY projection box
        )
        ours = load_annotation_file(out, "Free Mask output")
    return compare(ours, expected, args.min_iou, args.max_score_diff, args.min_cos, args.max_box_diff)
