"""Are a SOLO model's masks or its scores what holds its AP down? The best mask it can produce for each object.

Runs the model on images with ground truth keeping every candidate cell (score threshold 0, Matrix-NMS update
threshold 0, up to ``--keep`` detections per image), then for every ground-truth object takes the best mask IoU
over all of them ("oracle recall": the share of objects that *some* cell segments at IoU >= 0.5 / 0.75) and the
score rank of the first cell that reaches IoU 0.5. High oracle recall with low AP means the category scores are at
fault; low oracle recall means the masks are.

    python bench/mask_oracle.py --model RUN/model_final.pth --data runs/demo0/data/heldout --short-side 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder with images/ and annotations.json")
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--keep", type=int, default=3000, help="detections kept per image")
    args = ap.parse_args()

    from unsolo.data.coco import decode_segmentation, load_annotation_file
    from unsolo.pipeline.predict import predict

    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "all_cells.json"
        predict(data / "images", args.model, out, device="cpu", workers=0, short_side=args.short_side,
                max_side=int(args.short_side * 5 / 3), score_thr=0.0, update_thr=0.0, max_per_img=args.keep,
                overrides=[f"inference.nms_pre={args.keep}"])
        preds = json.loads(out.read_text())
    gt = load_annotation_file(data / "annotations.json")
    images = {im["id"]: im for im in gt["images"]}
    by_name = {im["file_name"]: im["id"] for im in gt["images"]}
    by_image: dict[int, list[dict]] = {}
    for p in preds:
        by_image.setdefault(by_name.get(p.get("file_name"), p["image_id"]), []).append(p)
    best, ranks = [], []
    for a in gt["annotations"]:
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        g = decode_segmentation(a["segmentation"], h, w).astype(bool)
        cand = sorted(by_image.get(a["image_id"], []), key=lambda p: -p["score"])
        ious = np.array([(g & m).sum() / max((g | m).sum(), 1) for m in
                         (decode_segmentation(p["segmentation"], h, w).astype(bool) for p in cand)])
        best.append(float(ious.max()) if ious.size else 0.0)
        hit = np.flatnonzero(ious >= 0.5)
        ranks.append(int(hit[0]) if hit.size else -1)
    best_a, ranks_a = np.array(best), np.array(ranks)
    found = ranks_a[ranks_a >= 0]
    print(json.dumps({
        "objects": int(best_a.size),
        "oracle_recall_50": round(float((best_a >= 0.5).mean()), 3),
        "oracle_recall_75": round(float((best_a >= 0.75).mean()), 3),
        "mean_best_iou": round(float(best_a.mean()), 3),
        "median_rank_first_iou50": float(np.median(found)) if found.size else None,
        "candidates_per_image": round(float(np.mean([len(v) for v in by_image.values()])), 1) if by_image else 0,
    }))


if __name__ == "__main__":
    main()
