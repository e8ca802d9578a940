"""``unsolo pseudo-label``: a trained model's confident predictions become the next round's labels."""

from __future__ import annotations

import argparse

from unsolo.cli.common import add_batch_size, add_device, add_image_root, add_inference_precision, add_workers


def add_parser(sub) -> argparse.ArgumentParser:
    from unsolo.pipeline.pseudo_label import PseudoLabelConfig

    d = PseudoLabelConfig()
    p = sub.add_parser(
        "pseudo-label",
        help="self-training: turn a trained model's confident predictions into labels for the next round",
        description="Run a trained model on its training images and keep detections with decayed score >= "
        f"{d.score_thr}, at most {d.max_per_img} per image, narrower than {d.max_width_frac:.0%} of the image "
        "(the official self-training settings). Writes the Free Mask layout (RLE, tight XYWH box, score, emb), "
        "which 'unsolo train --labels' reads for the next round.",
    )
    p.add_argument("input", help="folder of images, or a COCO JSON listing them (the training images)")
    p.add_argument("--model", required=True, help="checkpoint of the previous round (this project's or official)")
    p.add_argument("--out", required=True, help="output pseudo-label JSON (COCO annotation file)")
    add_image_root(p)
    p.add_argument("--score-thr", type=float, default=d.score_thr, help=f"min decayed score (default {d.score_thr})")
    p.add_argument("--max-per-img", type=int, default=d.max_per_img, help=f"labels per image at most (default {d.max_per_img})")
    p.add_argument("--max-width-frac", type=float, default=d.max_width_frac,
                   help=f"drop labels at least this fraction of the image width (default {d.max_width_frac})")
    add_batch_size(p)
    add_device(p)
    p.add_argument("--amp", action="store_true", help="mixed precision for the network")
    add_inference_precision(p)
    p.add_argument("--short-side", type=int, default=800, help="test resize: shortest side (default 800)")
    p.add_argument("--max-side", type=int, default=1333, help="test resize: longest side at most (default 1333)")
    add_workers(p, 2)
    return p


def run(args) -> int:
    from unsolo.errors import UnsoloError
    from unsolo.pipeline.pseudo_label import PseudoLabelConfig, pseudo_label

    if not 0 < args.max_width_frac <= 1:
        raise UnsoloError("--max-width-frac must be in (0, 1]")
    if args.max_per_img < 1:
        raise UnsoloError("--max-per-img must be at least 1")
    cfg = PseudoLabelConfig(score_thr=args.score_thr, max_per_img=args.max_per_img, max_width_frac=args.max_width_frac)
    pseudo_label(args.input, args.model, args.out, cfg, image_root=args.image_root, batch_size=args.batch_size,
                 device=args.device, amp=args.amp, precision=args.precision, short_side=args.short_side, max_side=args.max_side,
                 workers=args.workers)
    return 0
