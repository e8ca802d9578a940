"""Dump or compare SOLOv2 Predictor outputs on a folder of images (checks that a speed change keeps the outputs).

usage: python bench/solo_outputs.py dump --weights CKPT --images DIR --out OUT.pt
       python bench/solo_outputs.py compare BEFORE.pt AFTER.pt [--iou-min 0.999] [--score-tol 1e-4]
``compare`` pairs the detections of each image one to one (two detections with nearly equal scores may swap
places, and neighbouring cells give near-duplicate masks): among the pairs with mask IoU >= iou-min, the closest
scores first. It requires the same count, every pair with IoU >= iou-min, the same label and scores,
category scores and maskness within score-tol; prints one JSON line, exit 1 if not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def dump(args) -> None:
    from unsolo.data.images import load_image
    from unsolo.compat.solo_checkpoint import load_model
    from unsolo.predictor import Predictor

    pred = Predictor(load_model(args.weights, "cpu"))
    out = {}
    for name in sorted(os.listdir(args.images)):
        t = time.perf_counter()
        r = pred(load_image(os.path.join(args.images, name)))
        out[name] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in r.items()}
        print(name, len(r["scores"]), f"{time.perf_counter() - t:.1f}s", file=sys.stderr)
    torch.save(out, args.out)


def compare(args) -> int:
    a, b = torch.load(args.before), torch.load(args.after)
    report, ok = {}, set(a) == set(b)
    for name in sorted(a):
        x, y = a[name], b.get(name)
        if y is None or len(x["scores"]) != len(y["scores"]):
            ok = False
            report[name] = {"count": [len(x["scores"]), None if y is None else len(y["scores"])]}
            continue
        mx, my = x["masks"].flatten(1).float(), y["masks"].flatten(1).float()
        inter = mx @ my.t()
        ious = inter / (mx.sum(1)[:, None] + my.sum(1)[None] - inter).clamp(min=1)
        cost = (x["scores"][:, None] - y["scores"][None]).abs().double()
        cost[ious < args.iou_min] = float("inf")
        match = torch.full((len(mx),), -1)
        for flat in torch.argsort(cost.flatten()).tolist():  # greedy, closest scores first
            i, j = divmod(flat, cost.shape[1])
            if cost[i, j] == float("inf"):
                break
            if match[i] < 0 and j not in match:
                match[i] = j
        if bool((match < 0).any()):  # unmatched: pair by IoU alone to report how far off they are
            match[match < 0] = ious[match < 0].argmax(1)
        iou = ious[torch.arange(len(mx)), match]
        swapped = int((match != torch.arange(len(mx))).sum())
        diffs = {k: float((x[k] - y[k][match]).abs().max()) if len(x[k]) else 0.0
                 for k in ("scores", "category_scores", "maskness", "embeddings")}
        min_iou = float(iou.min()) if len(iou) else 1.0
        ok &= min_iou >= args.iou_min and max(diffs["scores"], diffs["category_scores"],
                                               diffs["maskness"]) <= args.score_tol
        ok &= bool((x["labels"] == y["labels"][match]).all())
        report[name] = {"count": len(x["scores"]), "min_iou": round(min_iou, 6), "order_changes": swapped,
                        "identical_masks": bool((x["masks"] == y["masks"]).all()), **diffs}
    print(json.dumps({"ok": bool(ok), "images": report}))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--weights", required=True)
    d.add_argument("--images", required=True)
    d.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--iou-min", type=float, default=0.999)
    c.add_argument("--score-tol", type=float, default=1e-4)
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
