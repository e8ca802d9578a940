"""``unsolo split-labels FULL.json --percent P --mode images|masks --seed K --out OUT.json``: few-label splits."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "split-labels",
        help="keep P%% of a labelled COCO file (images, or masks with usemask flags) for few-label fine-tuning",
        description="Write a few-label split of a labelled COCO file. --mode images keeps P% of the images with "
        "all their annotations; --mode masks keeps every image, class and box but marks the annotations of all but "
        "P% of the images with \"usemask\": 0 (trained from their box with the projection and pairwise losses). "
        "The same file, percent and seed always give the same split.",
    )
    p.add_argument("input", metavar="FULL.json", help="labelled COCO annotation file")
    p.add_argument("--percent", type=float, required=True, help="percent of the images that keep labels/masks, in (0, 100]")
    p.add_argument("--mode", choices=("images", "masks"), default="images",
                   help="images: drop the other images; masks: keep them with boxes only (usemask 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--out", required=True, help="output COCO JSON (written atomically)")
    return p


def run(args) -> int:
    from unsolo.data.splits import check_coco, split_labels
    from unsolo.utils.io import read_json, write_json

    coco = check_coco(read_json(args.input, "label file"), f"label file {args.input}")
    out = split_labels(coco, args.percent, args.mode, args.seed)
    write_json(args.out, out)
    s = out["info"]["unsolo_split"]
    n_mask = sum(1 for a in out["annotations"] if a.get("usemask", 1))
    print(f"{args.mode} split, {args.percent:g}% (seed {args.seed}): {s['selected_images']} of {s['total_images']} "
          f"images selected; {len(out['images'])} images, {len(out['annotations'])} annotations "
          f"({n_mask} with masks) written to {args.out}")
    return 0
