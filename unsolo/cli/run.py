"""``unsolo run``: folder of images -> pre-training -> Free Mask -> SOLO -> self-training -> predictions."""

from __future__ import annotations

import argparse

from unsolo.cli.common import add_device, add_image_root, add_set


def add_parser(sub) -> argparse.ArgumentParser:
    from unsolo.config import list_presets

    p = sub.add_parser(
        "run",
        help="the whole method on a folder of images: pretrain, Free Mask, SOLO, self-training, predictions",
        description="Run FreeSOLO end to end on a folder of unlabeled images (or a COCO JSON's images). Every stage "
        "writes into OUT and is skipped when its output is complete, so running the same command again after an "
        "interruption resumes where it stopped. With --gt, every stage is evaluated (class-agnostic COCO) and a "
        "report is written.",
    )
    p.add_argument("input", help="folder of unlabeled images, or a COCO JSON listing them")
    p.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    add_image_root(p)
    p.add_argument("--preset", default="cpu", help=f"run preset: {', '.join(list_presets('run'))} (default cpu; "
                   "'paper' is the official R-101 setting for GPUs) or a YAML file")
    p.add_argument("--backbone-weights", help="a pre-trained backbone (DenseCL release, MoCo, torchvision): skips "
                   "pre-training")
    p.add_argument("--gt", help="COCO ground truth of the evaluation images: evaluate every stage")
    p.add_argument("--eval-input", help="evaluation images (folder or COCO JSON; default: INPUT)")
    p.add_argument("--rounds", type=int, help="self-training rounds after round 0 (default: the preset's; cpu 0, paper 1)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall time of the whole run (e.g. 15m, 1h): pre-training and the generator run as set, then every "
                   "SOLO round trains for its share of what is left (time_budget; round_time_shares=[2,1] weights them)")
    add_device(p)
    add_set(p, "rounds=2; a stage's option as a nested key: train.solver.max_iter=500, pretrain.epochs=10, "
            "generator.maskness_threshold=0.7", "run config")
    return p


def run(args) -> int:
    from unsolo.pipeline.run import resolve_run_config, run_pipeline, print_summary

    cfg = resolve_run_config(args.preset, args.overrides, {"rounds": args.rounds, "time_budget": args.time_budget})
    summary = run_pipeline(args.input, args.out, cfg, image_root=args.image_root,
                           backbone_weights=args.backbone_weights, gt=args.gt, eval_input=args.eval_input,
                           device=args.device)
    if summary.get("main_process", True):
        print_summary(summary)
    return 0
