"""``unsolo parity solo``: SOLOv2 inference, training losses, gradients and SGD steps against the official outputs.

Inputs (see ``shared/parity/README.md``): the parity images, the official checkpoint written by
``make_official_checkpoint.py SEED``, ``solov2_predictions_seed*.json.gz`` (official detections) and
``solov2_losses_seed*.json`` (official losses of one training forward per image, with the Free Mask
annotations as targets, tight boxes, pairwise warm-up factor 1 and the embedding loss zeroed).

Predictions: every official detection must be matched by one of ours (same image, mask IoU >= ``iou_min``, best
IoU first, one-to-one) with the score within ``score_tol``. Losses: within ``loss_rtol`` relative. Gradients and
the SGD trajectory: :mod:`unsolo.parity.solo_training`.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import torch

from unsolo.data.coco import decode_segmentation
from unsolo.data.images import load_image
from unsolo.errors import UnsoloError
from unsolo.utils.masks import greedy_match, mask_iou
from unsolo.parity import solo_training
from unsolo.parity.solo_training import parity_item, training_forward

IOU_MIN = 0.99
SCORE_TOL = 1e-3
LOSS_RTOL = 1e-3


def add_arguments(p) -> None:
    p.add_argument("--images", required=True, help="folder of the parity images (shared/parity/images)")
    p.add_argument("--weights", required=True, help="official checkpoint from make_official_checkpoint.py")
    p.add_argument("--expected-predictions", help="solov2_predictions_seed*.json(.gz) of the official model")
    p.add_argument("--expected-losses", help="solov2_losses_seed*.json of the official model")
    p.add_argument("--expected-grads", help="solov2_grads_seed*.json: the official per-parameter training gradients")
    p.add_argument("--expected-trajectory", help="solov2_sgd3_seed*.json: the official SGD trajectory on one image")
    p.add_argument("--targets", help="freemask_seed*.json: the Free Mask annotations used as loss targets "
                   "(needed by --expected-losses/-grads/-trajectory)")
    p.add_argument("--grad-images", nargs="+", metavar="NAME", help="check the gradients of these images only "
                   "(default: every image of the file)")
    p.add_argument("--no-iter0", action="store_true", help="skip the gradients at the official first iteration "
                   "(pairwise warm-up factor 1/1000)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--iou-min", type=float, default=IOU_MIN, help=f"mask IoU for a match (default {IOU_MIN})")
    p.add_argument("--score-tol", type=float, default=SCORE_TOL, help=f"absolute score tolerance (default {SCORE_TOL})")
    p.add_argument("--loss-rtol", type=float, default=LOSS_RTOL, help=f"relative loss tolerance (default {LOSS_RTOL})")
    st = solo_training
    p.add_argument("--grad-norm-rtol", type=float, default=st.GRAD_NORM_RTOL,
                   help=f"relative tolerance on each gradient's L2 norm (default {st.GRAD_NORM_RTOL})")
    p.add_argument("--grad-first8-tol", type=float, default=st.GRAD_FIRST8_TOL,
                   help=f"tolerance on the first 8 gradient values, as a fraction of the official absmax "
                   f"(default {st.GRAD_FIRST8_TOL})")
    p.add_argument("--traj-rtol", type=float, default=st.TRAJ_RTOL,
                   help=f"relative tolerance on every step's losses and gradient norm (default {st.TRAJ_RTOL})")


def _read_json(path) -> object:
    path = Path(path)
    if not path.is_file():
        raise UnsoloError(f"file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def compare_predictions(model, images_dir, expected: list[dict], iou_min=IOU_MIN, score_tol=SCORE_TOL) -> dict:
    from unsolo.predictor import Predictor

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
        iou = mask_iou(em, om)
        n_ok = 0
        matched = greedy_match(iou)  # one-to-one, the pairs with the highest IoU first
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


def compare_losses(model, images_dir, expected: dict, targets: dict, rtol=LOSS_RTOL) -> dict:
    model.cfg.loss.emb_loss_official_zero = True
    model.train()
    out = {}
    worst = 0.0
    for name in sorted(expected):
        item = parity_item(images_dir, name, targets, model.cfg.num_embs)
        with torch.no_grad():  # warm-up factor 1: the counter is past the warm-up (it is incremented before use)
            losses = {k: float(v) for k, v in training_forward(model, item, model.cfg.loss.warmup_iters).items()}
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
    from unsolo.compat.solo_checkpoint import load_model

    if not (args.expected_predictions or args.expected_losses or args.expected_grads or args.expected_trajectory):
        raise UnsoloError("give at least one of --expected-predictions, --expected-losses, --expected-grads, "
                            "--expected-trajectory")
    if (args.expected_losses or args.expected_grads or args.expected_trajectory) and not args.targets:
        raise UnsoloError("--expected-losses/-grads/-trajectory need --targets (the Free Mask JSON used as loss targets)")
    if not os.path.isdir(args.images):
        raise UnsoloError(f"image folder not found: {args.images}")
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
    if args.expected_grads:
        summary["gradients"] = solo_training.compare_gradients(
            model, args.images, _read_json(args.expected_grads), _read_json(args.targets), images=args.grad_images,
            with_iter0=not args.no_iter0, norm_rtol=args.grad_norm_rtol, first8_tol=args.grad_first8_tol)
        ok &= summary["gradients"]["ok"]
    if args.expected_trajectory:  # last: it changes the weights (and restores them)
        summary["trajectory"] = solo_training.compare_trajectory(
            model, args.images, _read_json(args.expected_trajectory), _read_json(args.targets), args.traj_rtol)
        ok &= summary["trajectory"]["ok"]
    summary["ok"] = bool(ok)
    return summary
