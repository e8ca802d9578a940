"""Pseudo-mask generators scored against ground truth: class-agnostic mask AP / AP50 / AR100 and seconds per image.

Each ``--row NAME:KEY=VALUE,KEY=VALUE`` runs one generator (``freemask``, ``maskcut``, ``felzenszwalb``) with its
``--preset`` and those overrides on ``IMAGES``, writes ``OUT/<tag>.json`` and prints one JSON line per row; the
table of docs/generators.md was made with

    python bench/generator_quality.py runs/abl/heldout/images --gt runs/abl/heldout/annotations.json \\
        --weights runs/abl/pretrain/backbone.pth --arch resnet18 --out runs/gen \\
        --row maskcut:tau=0.5,short_side=384 --row felzenszwalb:min_score=0.3 ...

The seconds include the backbone forward pass and the DataLoader (``--workers 0``); on a shared machine they are
comparable only within one call.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unsolo.evaluation.coco_eval import evaluate
from unsolo.generators import build_generator
from unsolo.pipeline.freemask import FreeMaskRun, run_freemask


def score_generator(generator, images: str, gt: str, out: Path, weights: str | None, arch: str) -> tuple[dict, dict]:
    """Run ``generator`` on ``images`` (masks to ``out``, reused when it exists) and score them against ``gt``:
    (class-agnostic COCO percentages, run summary or None when reused)."""
    summary = None
    if not out.is_file():
        summary = run_freemask(FreeMaskRun(input=images, out=str(out), weights=weights, arch=arch, workers=0,
                                           device="cpu"), generator)
    return evaluate(gt, str(out), iou_type="segm")["percent"], summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images")
    ap.add_argument("--gt", required=True)
    ap.add_argument("--weights", help="backbone checkpoint (freemask, maskcut)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--preset", default="small", help="preset of every row's generator (default small)")
    ap.add_argument("--out", required=True, help="folder for the pseudo-mask files")
    ap.add_argument("--row", action="append", required=True, metavar="GENERATOR:K=V,K=V")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    n_images = None
    for row in args.row:
        name, _, sets = row.partition(":")
        overrides = [s for s in sets.split(",") if s]
        generator = build_generator(name, args.preset, overrides)
        tag = "_".join([name, args.preset] + [s.replace("=", "") for s in overrides])
        out = Path(args.out) / f"{tag}.json"
        out.unlink(missing_ok=True)  # always a fresh run: the row reports its seconds per image
        t0 = time.perf_counter()
        res, summary = score_generator(generator, args.images, args.gt, out, args.weights, args.arch)
        seconds = time.perf_counter() - t0  # includes the evaluation, as before
        n_images = summary["images"]
        print(json.dumps({"row": row, "preset": args.preset, "AP": res["AP"], "AP50": res["AP50"],
                          "AR100": res["AR100"], "masks_per_image": round(summary["annotations"] / n_images, 2),
                          "s_per_image": round(seconds / n_images, 3), "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
    main()
