"""``unsolo finetune --train LABELED.json --images ROOT --init CKPT|none | --init-backbone W --out RUN``."""

from __future__ import annotations

import argparse

from unsolo.cli.common import add_batch_size, add_device, add_set, add_training_precision, add_workers


def add_parser(sub) -> argparse.ArgumentParser:
    from unsolo.config import list_presets

    p = sub.add_parser(
        "finetune",
        help="few-label fine-tuning: class-aware SOLOv2 with supervised losses from a FreeSOLO checkpoint",
        description="Fine-tune a class-aware SOLOv2 (one class per category of the label file) with the supervised "
        "SOLOv2 losses (focal + Dice x3 on full masks; box-only losses for annotations with \"usemask\": 0), "
        "initialised from a FreeSOLO checkpoint (all but the classifier and embedding head), a backbone only, or "
        "random weights. Same engine and outputs as 'unsolo train' (torchrun, AMP, resume, metrics.jsonl). "
        "Then: unsolo predict ... and unsolo evaluate --class-aware.",
    )
    p.add_argument("--train", required=True, metavar="LABELED.json", help="labelled COCO file (e.g. from split-labels)")
    p.add_argument("--images", required=True, metavar="ROOT", help="folder holding the images of LABELED.json")
    p.add_argument("--out", required=True, help="run folder (created; an existing run is resumed)")
    p.add_argument("--init", default=None, metavar="CKPT|none",
                   help="FreeSOLO checkpoint (this project's model_final.pth or the official release), or 'none' "
                   "for random weights")
    p.add_argument("--init-backbone", default=None, metavar="W",
                   help="start from a backbone only (DenseCL backbone.pth, torchvision ResNet), heads random")
    p.add_argument("--preset", default="small_r18",
                   help=f"fine-tuning preset ({', '.join(list_presets('finetune'))}; default small_r18) or a YAML file")
    p.add_argument("--iters", type=int, default=None, help="iterations (the preset's LR steps are rescaled)")
    add_batch_size(p, None, "images per iteration over all processes")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's, scaled with the batch)")
    add_workers(p, None, "DataLoader workers per process", shown="the preset's")
    p.add_argument("--seed", type=int, default=None, help="run seed")
    add_device(p)
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA")
    add_training_precision(p)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from RUN/last_checkpoint if present (default); --no-resume starts again")
    add_set(p, "init_exclude=[ins_head.cate_pred.]", "training config")
    return p


def run(args) -> int:
    from unsolo.pipeline.finetune import finetune, resolve_finetune_config

    from unsolo.cli.train import engine_overrides

    extra = engine_overrides(args)
    cfg = resolve_finetune_config(args.train, args.preset, args.overrides, extra, init=args.init,
                                  init_backbone=args.init_backbone, iters=args.iters)
    finetune(cfg, args.train, args.images, args.out, device=args.device, resume=args.resume)
    return 0
