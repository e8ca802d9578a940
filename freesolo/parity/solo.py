"""``freesolo parity solo``: SOLOv2 inference and training losses against the official FreeSOLO outputs.

Inputs (see ``shared/parity/README.md``): the parity images, the official checkpoint written by
``make_official_checkpoint.py SEED``, ``solov2_predictions_seed*.json.gz`` (official detections) and
``solov2_losses_seed*.json`` (official losses of one training forward per image, with the Free Mask
annotations as targets, tight boxes, pairwise warm-up factor 1 and the embedding loss zeroed).

Predictions: every official detection must be matched by one of ours (same image, mask IoU >= ``iou_min``, best
IoU first, one-to-one) with the score within ``score_tol``. Losses: within ``loss_rtol`` relative.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import torch

from freesolo.data.coco import decode_segmentation
from freesolo.data.images import load_image
from freesolo.errors import FreesoloError

IOU_MIN = 0.99
SCORE_TOL = 1e-3
LOSS_RTOL = 1e-3


def add_arguments(p) -> None:
    p.add_argument("--images", required=True, help="folder of the parity images (shared/parity/images)")
    p.add_argument("--weights", required=True, help="official checkpoint from make_official_checkpoint.py")
    p.add_argument("--expected-predictions", help="solov2_predictions_seed*.json(.gz) of the official model")
    p.add_argument("--expected-losses", help="solov2_losses_seed*.json of the official model")
    p.add_argument("--targets", help="freemask_seed*.json: the Free Mask annotations used as loss targets")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--iou-min", type=float, default=IOU_MIN, help=f"mask IoU for a match (default {IOU_MIN})")
    p.add_argument("--score-tol", type=float, default=SCORE_TOL, help=f"absolute score tolerance (default {SCORE_TOL})")
    p.add_argument("--loss-rtol", type=float, default=LOSS_RTOL, help=f"relative loss tolerance (default {LOSS_RTOL})")


def _read_json(path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FreesoloError(f"file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``(N, HW)`` and ``(M, HW)`` bool masks."""
    a = torch.from_numpy(a).float()
    b = torch.from_numpy(b).float()
    inter = a @ b.t()
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return (inter / union.clamp(min=1)).numpy()


def compare_predictions(model, images_dir, expected: list[dict], iou_min=IOU_MIN, score_tol=SCORE_TOL) -> dict:
    from freesolo.predictor import Predictor

    # the official embeddings come from its channel-first reshape: reproduce it to compare them
    model.cfg.inference.official_emb_layout = True
    pred = Predictor(model, device=next(model.parameters()).device)
    by_file: dict[str, list[dict]] = {}
    for rec in expected:
        by_file.setdefault(rec["file_name"], []).append(rec)
    per_image = {}
    worst_iou, worst_score, worst_emb, unmatched = 1.0, 0.0, 0.0, 0
    for name in sorted(by_file):
        img = load_image(Path(images_dir) / name)
        out = pred(img)
        exp = by_file[name]
        h, w = img.shape[:2]
        em = np.stack([decode_segmentation(r["segmentation"], h, w).astype(bool).reshape(-1) for r in exp])
        om = out["masks"].reshape(len(out["masks"]), -1)
        iou = _mask_iou(em, om) if len(om) else np.zeros((len(exp), 0))
        used: set[int] = set()
        n_ok = 0
        # greedy one-to-one matching: the pairs with the highest IoU first
        pairs = sorted(((iou[i, j], i, j) for i in range(iou.shape[0]) for j in range(iou.shape[1]) if iou[i, j] > 0.5),
                       reverse=True)
        matched: dict[int, int] = {}
        for v, i, j in pairs:
            if i in matched or j in used:
                continue
            matched[i] = j
            used.add(j)
        img_worst_iou, img_worst_score, emb_diff = 1.0, 0.0, 0.0
        for i, r in enumerate(exp):
            j = matched.get(i)
            if j is None:
                unmatched += 1
                img_worst_iou = 0.0
                continue
            ds = abs(float(out["scores"][j]) - float(r["score"]))
            if "emb" in r:
                emb_diff = max(emb_diff, float(np.abs(out["embeddings"][j] - np.asarray(r["emb"])).max()))
            img_worst_iou = min(img_worst_iou, float(iou[i, j]))
            img_worst_score = max(img_worst_score, ds)
            if iou[i, j] >= iou_min and ds <= score_tol:
                n_ok += 1
        per_image[name] = {"expected": len(exp), "ours": int(len(om)), "matched_within_tolerance": n_ok,
                           "min_iou": round(img_worst_iou, 6), "max_score_diff": img_worst_score, "max_emb_diff": emb_diff}
        worst_iou, worst_score = min(worst_iou, img_worst_iou), max(worst_score, img_worst_score)
        worst_emb = max(worst_emb, emb_diff)
    ok = all(v["matched_within_tolerance"] == v["expected"] for v in per_image.values())
    model.cfg.inference.official_emb_layout = False
    return {"ok": ok, "min_iou": worst_iou, "max_score_diff": worst_score, "max_emb_diff": worst_emb,
            "unmatched": unmatched, "images": per_image}


def parity_targets(coco: dict, file_name: str, height: int, width: int, num_embs: int = 128) -> dict:
    """The README's loss targets for one image: Free Mask masks, class 0, their ``emb``, tight XYXY boxes +1."""
    img = next((im for im in coco["images"] if im["file_name"] == file_name), None)
    anns = [a for a in coco["annotations"] if img is not None and a["image_id"] == img["id"]]
    masks = np.stack([decode_segmentation(a["segmentation"], height, width).astype(bool) for a in anns]) if anns \
        else np.zeros((0, height, width), bool)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {
        "masks": torch.from_numpy(masks),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(anns), dtype=torch.int64),
        "embs": torch.tensor([a.get("emb") or [0.0] * num_embs for a in anns], dtype=torch.float32).reshape(-1, num_embs),
    }


def compare_losses(model, images_dir, expected: dict, targets: dict, rtol=LOSS_RTOL) -> dict:
    model.cfg.loss.emb_loss_official_zero = True
    model.train()
    out = {}
    worst = 0.0
    for name in sorted(expected):
        img = load_image(Path(images_dir) / name)
        h, w = img.shape[:2]
        inst = parity_targets(targets, name, h, w, model.cfg.num_embs)
        # warm-up factor 1: the counter is past the warm-up (it is incremented before use)
        model._iter.fill_(float(model.cfg.loss.warmup_iters))
        item = {"image": torch.from_numpy(np.array(img)).permute(2, 0, 1).float(), "instances": inst, "orig_size": (h, w)}
        with torch.no_grad():
            losses = {k: float(v) for k, v in model([item]).items()}
        diffs = {}
        for k, v in expected[name].items():
            ours = losses[k]
            rel = abs(ours - v) / max(abs(v), 1e-12) if v != 0 else abs(ours)
            diffs[k] = {"official": v, "ours": ours, "rel_diff": rel}
            worst = max(worst, rel)
        out[name] = diffs
    model.eval()
    return {"ok": worst <= rtol, "max_rel_diff": worst, "images": out}


def run(args) -> dict:
    from freesolo.modeling.solov2 import load_model

    if not (args.expected_predictions or args.expected_losses):
        raise FreesoloError("give --expected-predictions and/or --expected-losses")
    if args.expected_losses and not args.targets:
        raise FreesoloError("--expected-losses needs --targets (the Free Mask JSON used as loss targets)")
    if not os.path.isdir(args.images):
        raise FreesoloError(f"image folder not found: {args.images}")
    torch.set_grad_enabled(True)
    model = load_model(args.weights, args.device)
    summary: dict = {"target": "solo"}
    ok = True
    if args.expected_predictions:
        summary["predictions"] = compare_predictions(model, args.images, _read_json(args.expected_predictions),
                                                     args.iou_min, args.score_tol)
        ok &= summary["predictions"]["ok"]
    if args.expected_losses:
        summary["losses"] = compare_losses(model, args.images, _read_json(args.expected_losses),
                                           _read_json(args.targets), args.loss_rtol)
        ok &= summary["losses"]["ok"]
    summary["ok"] = bool(ok)
    return summary
