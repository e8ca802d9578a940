"""``unsolo train``: self-supervised SOLO training on Free Mask (or self-training) pseudo-labels."""

from __future__ import annotations

import argparse

from unsolo.cli.common import add_batch_size, add_device, add_image_root, add_set, add_training_precision, add_workers
from unsolo.config import list_presets


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train SOLOv2 on pseudo-labels (strong/weak views, copy-paste; the paper's weak losses on a GPU, "
        "full-mask Dice with the CPU preset small_r18)",
        description="Train the self-supervised SOLOv2 of FreeSOLO on pseudo-labels (a COCO JSON with RLE masks from "
        "'unsolo freemask' or 'unsolo pseudo-label'). Writes RUN/config.yaml, RUN/metrics.jsonl, "
        "RUN/model_NNNNNNN.pth checkpoints, RUN/model_final.pth and RUN/loss_curves.png. Several GPUs or nodes: "
        "torchrun --nproc_per_node N -m unsolo train ...",
    )
    p.add_argument("input", metavar="INPUT", help="image folder (or a COCO JSON listing the images, with --image-root)")
    p.add_argument("--labels", required=True, help="pseudo-label COCO JSON (RLE masks, optional 'emb' and 'score')")
    p.add_argument("--out", required=True, help="run folder (created; an existing run is resumed)")
    add_image_root(p)
    p.add_argument("--backbone-weights", default=None,
                   help="torchvision-named ResNet weights to start from, e.g. the DenseCL backbone of 'unsolo pretrain' "
                   "(the method needs them; without them the backbone is random)")
    p.add_argument("--init-checkpoint", default=None,
                   help="start from a whole SOLO checkpoint (e.g. the previous self-training round's model_final.pth) "
                   "instead of backbone weights; the official self-training restarts from the DenseCL backbone")
    p.add_argument("--preset", default=None,
                   help=f"training preset ({', '.join(list_presets('train')) or 'none'}) or a path to a YAML file; "
                   "default: small_r18 on a CPU, the official R-101 recipe (freesolo_r101) on a GPU")
    p.add_argument("--iters", type=int, default=None, help="number of iterations (official: 30000)")
    add_batch_size(p, None, "unique images per iteration over all processes (official: 16 = 2 per GPU on 8 GPUs); "
                   "each is fed twice (strong + weak view); the LR scales linearly unless --lr is given")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.001 x batch / 16)")
    add_workers(p, None, "DataLoader workers per process", shown="4")
    p.add_argument("--seed", type=int, default=None, help="run seed (data order, augmentations, initialisation)")
    add_device(p)
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA (off on CPU)")
    add_training_precision(p)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from RUN/last_checkpoint if present (default); --no-resume starts again")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also log to RUN/tensorboard (if installed)")
    add_set(p, "solver.checkpoint_period=1000, data.min_sizes=[160,192]", "training config")
    return p


def engine_overrides(args, keys: tuple[str, ...] = ()) -> dict:
    """The training-engine fields given on the command line (``--batch-size``, ``--lr``, ``--workers``, ``--seed``,
    ``--amp``, ``--precision``, ``--time-budget`` and ``keys``) as a partial config dict; flags left out keep the preset's values. Shared with
    ``unsolo finetune``, which runs the same engine."""
    extra: dict = {"solver": {}, "data": {}}
    if args.batch_size is not None:
        extra["solver"]["ims_per_batch"] = args.batch_size
    if args.lr is not None:
        extra["solver"]["lr"] = args.lr
    if args.workers is not None:
        extra["data"]["workers"] = args.workers
    if getattr(args, "precision", None) is not None:
        extra["solver"]["precision"] = args.precision
    if getattr(args, "time_budget", None) is not None:
        extra["solver"]["max_time"] = args.time_budget
    for key in ("seed", "amp", *keys):
        if getattr(args, key) is not None:
            extra[key] = getattr(args, key)
    return extra


def run(args) -> int:
    from unsolo.pipeline.train import resolve_train_config, train

    extra = engine_overrides(args, ("tensorboard", "backbone_weights", "init_checkpoint"))
    if args.iters is not None:
        extra["solver"]["max_iter"] = args.iters
    from unsolo.config import preset_for_device

    cfg = resolve_train_config(preset_for_device("train", args.preset, args.device), args.overrides, extra)
    train(cfg, args.input, args.labels, args.out, image_root=args.image_root, device=args.device, resume=args.resume)
    return 0
