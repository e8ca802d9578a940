"""``unsolo synth OUT``: write a synthetic image set with exact instance ground truth (COCO, RLE).

Two kinds of scene: procedural shapes (the default, :mod:`unsolo.data.synthetic`) or, with ``--objects`` and
``--backgrounds``, photographed RGBA cut-outs pasted onto crops of photographs (:mod:`unsolo.data.real_objects`).
"""

from __future__ import annotations

import argparse
import logging

from unsolo.cli.common import add_workers
from unsolo.data.synthetic import CATEGORIES, SceneConfig, generate
from unsolo.errors import UnsoloError

log = logging.getLogger("unsolo.synth")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "synth",
        help="generate synthetic scenes with exact instance masks (COCO JSON + PNGs): procedural shapes, "
        "or real cut-outs on photographs",
        description="Generate scenes of occluding objects with their visible masks as ground truth: "
        "OUT/images/000001.png ... and OUT/annotations.json. By default procedural shapes (ellipse, rectangle, "
        "triangle, star, ring, blob) on textures; with --objects DIR --backgrounds DIR, photographed RGBA cut-outs "
        "(mask: alpha >= 128) pasted onto random crops of photographs. The same seed gives the same bytes.",
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--num-images", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--size", type=int, default=128, help="image width in pixels, >= 32 (default 128, square)")
    p.add_argument("--seed", type=int, default=0, help="base seed; image i uses the pair (seed, i) (default 0)")
    p.add_argument(
        "--aspect-jitter",
        type=float,
        default=0.0,
        help="draw each image's log aspect ratio in [-A, A] (height = size * exp(a)); 0 keeps squares (default)",
    )
    p.add_argument("--min-objects", type=int, default=None, help="objects drawn per image, lower bound (default 2)")
    p.add_argument("--max-objects", type=int, default=None,
                   help="objects drawn per image, upper bound (default 6; 5 with --objects)")
    p.add_argument("--background", choices=("procedural", "photo"), default=None,
                   help="procedural textures (default) or crops of photographs shipped with scikit-image "
                   "(objects stay synthetic, with exact masks)")
    add_workers(p, 0, "worker processes", shown="0: this process")
    g = p.add_argument_group("real objects on photographs (docs/synthetic.md)")
    g.add_argument("--objects", action="append", metavar="DIR",
                   help="folder of RGBA cut-outs (.png with alpha, searched recursively); repeatable")
    g.add_argument("--backgrounds", action="append", metavar="DIR",
                   help="folder of photographs (jpg/png/..., recursively); repeatable; needed with --objects")
    g.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out cut-outs whose name (folder name/path below it) matches this shell pattern, "
                   "e.g. '*/cartoon/*'; repeatable")
    g.add_argument("--object-split", choices=("all", "train", "heldout"), default=None,
                   help="use all cut-outs (default), or only the training or the held-out ones (split by a hash of "
                   "the file name, disjoint)")
    g.add_argument("--heldout-fraction", type=float, default=None,
                   help="fraction of cut-outs held out by --object-split (default 0.2)")
    g.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="object long side as a fraction of the image side, log-uniform (default 0.2 0.6)")
    return p


def run(args) -> int:
    if args.objects or args.backgrounds:
        return _run_objects(args)
    given = (("--scale-range", args.scale_range), ("--exclude", args.exclude),
             ("--object-split", args.object_split), ("--heldout-fraction", args.heldout_fraction))
    only = [o for o, v in given if v not in (None, [])]
    if only:
        raise UnsoloError(f"{only[0]} applies to real-object scenes: give --objects DIR --backgrounds DIR")
    cfg = SceneConfig(aspect_jitter=args.aspect_jitter,
                      min_objects=SceneConfig.min_objects if args.min_objects is None else args.min_objects,
                      max_objects=SceneConfig.max_objects if args.max_objects is None else args.max_objects,
                      background=args.background or "procedural")
    coco = generate(args.out, args.num_images, args.size, args.seed, workers=args.workers, config=cfg)
    counts = {c["id"]: 0 for c in CATEGORIES}
    for a in coco["annotations"]:
        counts[a["category_id"]] += 1
    per = ", ".join(f"{c['name']} {counts[c['id']]}" for c in CATEGORIES)
    print(f"wrote {len(coco['images'])} images and {len(coco['annotations'])} instances ({per}) to {args.out}")
    return 0


def _run_objects(args) -> int:
    from unsolo.data.real_objects import ObjectSceneConfig, generate_object_scenes

    if not args.objects or not args.backgrounds:
        raise UnsoloError("--objects DIR and --backgrounds DIR go together (cut-outs and the photographs under them)")
    if args.background is not None or args.aspect_jitter:
        raise UnsoloError("--background and --aspect-jitter apply to procedural scenes, not to --objects scenes")
    d = ObjectSceneConfig()
    split = args.object_split or "all"
    fraction = 0.2 if args.heldout_fraction is None else args.heldout_fraction
    cfg = ObjectSceneConfig(min_objects=d.min_objects if args.min_objects is None else args.min_objects,
                            max_objects=d.max_objects if args.max_objects is None else args.max_objects,
                            scale_range=d.scale_range if args.scale_range is None else tuple(args.scale_range))
    coco = generate_object_scenes(args.out, args.num_images, args.objects, args.backgrounds, size=args.size,
                                  seed=args.seed, split=split, heldout_fraction=fraction,
                                  exclude=args.exclude, workers=args.workers, config=cfg)
    info = coco["info"]
    print(f"wrote {len(coco['images'])} images and {len(coco['annotations'])} objects "
          f"({len(info['objects'])} cut-outs, {split} split; {len(info['backgrounds'])} photographs) "
          f"to {args.out}")
    return 0
