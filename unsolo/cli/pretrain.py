"""``unsolo pretrain``: DenseCL pre-training of a ResNet backbone on unlabeled images."""

from __future__ import annotations

import argparse
import json

from unsolo.cli.common import add_batch_size, add_device, add_image_root, add_set, add_workers
from unsolo.config import list_presets, resolve


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pretrain",
        help="pre-train a ResNet backbone with DenseCL on unlabeled images (writes RUN/backbone.pth)",
        description="DenseCL self-supervised pre-training (global + dense contrastive losses, momentum encoder, "
        "two queues). Writes RUN/backbone.pth in the public DenseCL layout, loadable by 'unsolo freemask "
        "--weights'. Run the same command again to resume. Multi-GPU: torchrun --nproc_per_node N -m unsolo "
        "pretrain ... (--batch-size is the global batch).",
    )
    p.add_argument("input", help="folder of images (searched recursively) or a COCO JSON file")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pth, log.jsonl, loss.png, backbone.pth")
    add_image_root(p)
    p.add_argument(
        "--preset",
        default=None,
        help=f"config preset ({', '.join(list_presets('pretrain'))}) or a YAML file; default: small_r18 on a CPU "
        "(useful features on small data in CPU minutes), the official ImageNet recipe (densecl_r50) on a GPU",
    )
    p.add_argument("--arch", default=None, help="backbone: resnet18, resnet34, resnet50 (official), resnet101")
    p.add_argument("--epochs", type=int, default=None, help="passes over the images (official: 200)")
    add_batch_size(p, None, "global batch size (official: 256); lr scales with it")
    p.add_argument("--size", type=int, default=None, help="crop side in pixels (official: 224)")
    add_workers(p, None, "data-loading processes per GPU/process", shown="4")
    add_device(p)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="float16 mixed precision on CUDA (default on)")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default=None,
                   help="the encoders' forward on a CPU: auto (default) = bfloat16 autocast where the CPU has native bf16 "
                   "(AMX, AVX512-BF16), float32 elsewhere; losses stay float32 (on CUDA use --amp)")
    p.add_argument("--stop-after", type=int, default=None, metavar="ITERS", help="stop after this many iterations in total (resumable)")
    add_set(p, "queue_len=4096")
    return p


def run(args) -> int:
    from unsolo.pipeline.pretrain import PretrainConfig, pretrain

    extra = {"arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size, "size": args.size, "workers": args.workers, "amp": args.amp,
             "precision": args.precision}
    from unsolo.config import preset_for_device

    cfg = resolve(PretrainConfig, "pretrain", preset_for_device("pretrain", args.preset, args.device), args.overrides,
                  extra)
    summary = pretrain(args.input, args.out, cfg, image_root=args.image_root, device=args.device, stop_after=args.stop_after)
    from unsolo.utils.dist import is_main_process

    if is_main_process():
        print(json.dumps({k: summary[k] for k in ("iterations", "total_iterations", "finished", "backbone")}))
    return 0
