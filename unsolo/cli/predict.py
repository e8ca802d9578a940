"""``unsolo predict``: run a trained model (this project's or official FreeSOLO) on images -> COCO results."""

from __future__ import annotations

import argparse

from unsolo.cli.common import add_batch_size, add_device, add_image_root, add_inference_precision, add_set, add_workers


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="segment images with a trained SOLO model (COCO results JSON, optional overlays)",
        description="Run a trained FreeSOLO SOLOv2 (a checkpoint of this project or an official FreeSOLO .pth) on "
        "a folder of images or a COCO JSON's images; write a COCO results list (category 1, RLE masks, tight XYWH "
        "boxes, scores) that 'unsolo evaluate' scores.",
    )
    p.add_argument("input", help="folder of images, or a COCO JSON listing them")
    p.add_argument("--model", required=True, help="checkpoint (.pth) of this project or of the official FreeSOLO")
    p.add_argument("--out", required=True, help="output results JSON")
    add_image_root(p, " (default: <json dir>/images or its dir)")
    p.add_argument("--vis", help="folder for mask overlays (one JPEG per image)")
    add_batch_size(p)
    add_device(p)
    p.add_argument("--amp", action="store_true", help="mixed precision for the network (fp16 on CUDA, bf16 on CPU)")
    add_inference_precision(p)
    p.add_argument("--score-thr", type=float, help="minimum category score of a candidate (default 0.1)")
    p.add_argument("--update-thr", type=float, help="minimum score after Matrix NMS (default 0.05; 0.3 for pseudo-labels)")
    p.add_argument("--max-per-img", type=int, help="detections kept per image (default 100; 20 for pseudo-labels)")
    p.add_argument("--short-side", type=int, default=800, help="test resize: shortest side (default 800)")
    p.add_argument("--max-side", type=int, default=1333, help="test resize: longest side at most (default 1333)")
    p.add_argument("--embeddings", action="store_true", help="also write each detection's 128-d embedding ('emb')")
    add_workers(p, 2)
    add_set(p, "inference.nms_sigma=2.0", "model config")
    return p


def run(args) -> int:
    from unsolo.pipeline.predict import predict

    predict(args.input, args.model, args.out, image_root=args.image_root, vis=args.vis, batch_size=args.batch_size,
            device=args.device, amp=args.amp, precision=args.precision, score_thr=args.score_thr, update_thr=args.update_thr,
            max_per_img=args.max_per_img, short_side=args.short_side, max_side=args.max_side,
            with_embeddings=args.embeddings, workers=args.workers, overrides=args.overrides)
    return 0
