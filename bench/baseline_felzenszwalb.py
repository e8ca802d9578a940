"""Classical baseline: Felzenszwalb-Huttenlocher segments as class-agnostic instance proposals.

The segments and their score are ``unsolo.generators.felzenszwalb.felzenszwalb_masks`` (also the ``felzenszwalb`` pseudo-mask
generator of ``unsolo freemask --generator``). Every segment of ``skimage.segmentation.felzenszwalb`` (computed on the RGB image) with at least ``--min-area``
pixels becomes one proposal. Score (a simple shape heuristic, no learning):

    score = fill * border_penalty,   fill = area / area of the segment's tight box (1 for a full rectangle)

where ``border_penalty`` is 0.5 when the segment touches two or more image sides (such segments are mostly
background) and 1 otherwise. The top ``--max-dets`` (100, as COCO) proposals per image are kept.

The same run also scores the ground truth itself as predictions (sanity check: 100 AP).

    python bench/baseline_felzenszwalb.py --size 128 --num-images 100 --seed 2024
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from unsolo.generators.felzenszwalb import FelzenszwalbConfig, felzenszwalb_masks
from unsolo.data.coco import instance_records
from unsolo.data.images import load_image
from unsolo.data.synthetic import generate
from unsolo.evaluation import evaluate, format_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--num-images", type=int, default=100)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--scale", type=float, default=None, help="felzenszwalb scale (default: 8 x size, chosen on seed 7)")
    ap.add_argument("--sigma", type=float, default=0.8)
    ap.add_argument("--min-size", type=int, default=None, help="felzenszwalb min_size (default: size / 8)")
    ap.add_argument("--min-area", type=int, default=16)
    ap.add_argument("--max-dets", type=int, default=100)
    ap.add_argument("--out", default=None, help="also write the metrics JSON here")
    args = ap.parse_args()
    scale = args.scale if args.scale is not None else 8.0 * args.size
    min_size = args.min_size if args.min_size is not None else max(8, args.size // 8)
    with tempfile.TemporaryDirectory() as tmp:
        gt = generate(Path(tmp) / "set", args.num_images, args.size, args.seed)
        t0 = time.perf_counter()
        preds = []
        for img in gt["images"]:
            image = load_image(Path(tmp) / "set" / "images" / img["file_name"])
            res = felzenszwalb_masks(image, image.shape[:2], FelzenszwalbConfig(
                scale=scale, sigma=args.sigma, min_size=min_size, min_area=args.min_area, max_masks=args.max_dets))
            recs = instance_records(img["id"], res.masks.numpy(), scores=res.scores.numpy())
            for r in recs:
                r.pop("area"), r.pop("iscrowd")
            preds += recs
        dt = time.perf_counter() - t0
        res = evaluate(gt, preds, iou_type="segm")
        sanity = evaluate(gt, [dict(a, score=1.0) for a in gt["annotations"]], iou_type="segm")
    print(f"felzenszwalb scale={scale:g} sigma={args.sigma:g} min_size={min_size} on {args.num_images} images "
          f"of {args.size} px (seed {args.seed}): {len(preds)} proposals, {args.num_images / dt:.1f} img/s")
    print(format_table(res))
    print("ground truth as predictions (sanity):")
    print(format_table(sanity))
    if args.out:
        Path(args.out).write_text(json.dumps({"baseline": res, "gt_sanity": sanity}, indent=2))


if __name__ == "__main__":
    main()
