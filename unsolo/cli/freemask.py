"""``unsolo freemask``: Free Mask pseudo-masks for a folder of images -> COCO annotation file."""

from __future__ import annotations

import argparse
import json
import re

from unsolo.cli.common import add_batch_size, add_device, add_image_root, add_set, add_workers
from unsolo.config import list_presets
from unsolo.errors import UnsoloError
from unsolo.generators import GENERATORS, build_generator
from unsolo.modeling.backbone import ARCHS


def _shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N (e.g. 0/8), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "freemask",
        help="coarse masks from a self-supervised backbone (Free Mask, or --generator maskcut|felzenszwalb) -> COCO pseudo-labels",
        description="Free Mask (FreeSOLO Sec. 3.1): masks from the feature similarity of a self-supervised "
        "ResNet (e.g. DenseCL), written as a COCO annotation file with RLE masks, scores and 128-d embeddings. "
        "--generator maskcut: normalized cuts on the same features (CutLER); --generator felzenszwalb: classical "
        "graph segments, no backbone. "
        "Resumable (run the same command again after an interruption); scale out with "
        "'torchrun --nproc_per_node N -m unsolo freemask ...' or --shard i/N job arrays.",
    )
    p.add_argument("input", help="folder of images (searched recursively) or a COCO JSON listing them")
    p.add_argument("--generator", default="freemask", choices=list(GENERATORS),
                   help="pseudo-mask generator (default freemask, the official one); --preset and --set apply to it")
    p.add_argument("--weights", help="backbone checkpoint: DenseCL release/training, MoCo, torchvision or detectron2 .pkl")
    p.add_argument("--arch", default="resnet101", choices=ARCHS, help="backbone depth (default resnet101, as the official code)")
    p.add_argument("--out", required=True, help="output COCO annotation file (.json); the config goes next to it")
    add_image_root(p)
    p.add_argument(
        "--preset",
        help=f"config preset of the generator, e.g. {', '.join(list_presets('freemask'))} (default: its defaults); "
        "use 'small' for small images on CPU",
    )
    add_set(p, "maskness_threshold=0.5", "generator config")
    p.add_argument("--official-bbox", action="store_true", help="write the official XYXY projection box as bbox (quirk Q1) instead of tight XYWH")
    add_batch_size(p, 1, "images per forward pass (default 1; only identical resized sizes are batched)")
    add_workers(p, 2, "DataLoader workers decoding and resizing images")
    add_device(p)
    p.add_argument("--amp", action="store_true", help="mixed precision backbone (fp16 on CUDA, bf16 on CPU): faster, but the masks differ from float32")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW memory layout")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep BatchNorm separate from the convolutions")
    p.add_argument("--vis", metavar="DIR", help="also write mask overlays (one .jpg per image) to DIR")
    p.add_argument("--chunk-size", type=int, default=64, help="images per resumable chunk file (default 64)")
    p.add_argument("--shard", type=_shard, metavar="i/N", help="cluster job arrays: process only shard i of N (no merge)")
    p.add_argument("--merge", action="store_true", help="only merge the chunks written by --shard jobs into --out")
    p.add_argument("--keep-parts", action="store_true", help="keep the <out>.parts/ chunk folder after merging")
    return p


def run(args) -> int:
    from unsolo.pipeline.freemask import FreeMaskRun, run_freemask

    if args.merge and args.shard:
        raise UnsoloError("--merge and --shard exclude each other: merge after all shards are done")
    if args.official_bbox and args.generator != "freemask":
        raise UnsoloError("--official-bbox is Free Mask's quirk; it does not apply to --generator " + args.generator)
    extra = {"official_bbox": True} if args.official_bbox else None
    generator = build_generator(args.generator, args.preset, args.overrides, extra)
    summary = run_freemask(
        FreeMaskRun(
            input=args.input,
            out=args.out,
            weights=args.weights,
            arch=args.arch,
            image_root=args.image_root,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            amp=args.amp,
            channels_last=args.channels_last,
            fold_bn=args.fold_bn,
            vis_dir=args.vis,
            chunk_size=args.chunk_size,
            shard=args.shard,
            merge_only=args.merge,
            keep_parts=args.keep_parts,
        ),
        generator,
    )
    if "annotations" in summary:
        print(json.dumps(summary))
    return 0
