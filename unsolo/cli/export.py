"""``unsolo export MODEL --out model.onnx``: a trained SOLO model to ONNX, checked against PyTorch."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a trained SOLO model to ONNX (the network; post-processing in Python), checked with onnxruntime",
        description="Export a SOLO checkpoint (this project's or official FreeSOLO) to ONNX with dynamic batch and "
        "image size. The graph takes ImageNet-normalised RGB images zero-padded to multiples of 32 and returns the "
        "category scores, mask kernels and embeddings of every grid cell and the mask features; "
        "unsolo.pipeline.export.OnnxPredictor runs it with onnxruntime and the same post-processing as the "
        "PyTorch model. With --check, both run on the given images and the detections are compared (exit 1 when "
        "they differ beyond the tolerances).",
    )
    p.add_argument("model", help="checkpoint: model_final.pth of unsolo train, or an official FreeSOLO .pth")
    p.add_argument("--out", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--check", nargs="+", metavar="IMAGE", help="compare PyTorch and onnxruntime on these images")
    p.add_argument("--short-side", type=int, default=800, help="test resize for --check (default 800)")
    p.add_argument("--max-side", type=int, default=1333, help="test resize for --check (default 1333)")
    p.add_argument("--iou-min", type=float, default=0.99, help="--check: mask IoU of matched detections (default 0.99)")
    p.add_argument("--score-tol", type=float, default=1e-3, help="--check: score tolerance (default 1e-3)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    return p


def run(args) -> int:
    from unsolo.pipeline.export import OPSET, compare_on_images, export_onnx

    out = export_onnx(args.model, args.out, opset=args.opset or OPSET)
    summary = {"onnx": str(out), "bytes": out.stat().st_size}
    if args.check:
        summary["check"] = compare_on_images(args.model, out, args.check, args.short_side, args.max_side,
                                             args.iou_min, args.score_tol)
    print(json.dumps(summary, indent=2))
    return 0 if summary.get("check", {"ok": True})["ok"] else 1
