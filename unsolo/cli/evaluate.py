"""``unsolo evaluate --gt GT.json --pred PRED.json``: COCO metrics, class-agnostic by default."""

from __future__ import annotations

import argparse

from unsolo.evaluation.coco_eval import evaluate, format_table, write_metrics


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="score predictions against COCO ground truth (pycocotools; class-agnostic by default)",
        description="Score predictions (a COCO results list, or a COCO annotation file such as pseudo-labels) "
        "against a COCO ground truth with pycocotools. Class-agnostic by default (useCats=0, the FreeSOLO protocol). "
        "Prints AP, AP50, AP75, APs/m/l and AR1/10/100 (ARs/m/l) in percent.",
    )
    p.add_argument("--gt", required=True, help="ground truth: COCO annotation JSON")
    p.add_argument("--pred", required=True, help="predictions: COCO results JSON list, or a COCO annotation file")
    p.add_argument(
        "--iou-type", choices=("segm", "bbox", "both"), default="segm",
        help="mask IoU (segm, default), box IoU (bbox; boxes from the masks when absent) or both",
    )
    p.add_argument("--out", default=None, help="also write the metrics (raw and in percent) to this JSON file")
    p.add_argument(
        "--class-aware", action="store_true",
        help="keep categories (useCats=1), e.g. after few-label fine-tuning; default pools all instances",
    )
    p.add_argument("--summary", action="store_true", help="also print pycocotools' own summary lines")
    return p


def run(args) -> int:
    results = evaluate(args.gt, args.pred, iou_type=args.iou_type, class_aware=args.class_aware)
    print(format_table(results))
    if args.summary:
        for r in ([results] if "iou_type" in results else results.values()):
            print(f"[{r['iou_type']}]\n{r['summary']}", end="")
    if args.out:
        write_metrics(args.out, results)
        print(f"metrics written to {args.out}")
    return 0
