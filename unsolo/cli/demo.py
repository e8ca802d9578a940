"""``unsolo demo``: the whole method on built-in synthetic data, with a report."""

from __future__ import annotations

import argparse

from unsolo.cli.common import add_device, add_set


def add_parser(sub) -> argparse.ArgumentParser:
    from unsolo.pipeline.demo import DEMO_SIZES

    p = sub.add_parser(
        "demo",
        help="run the whole method on built-in synthetic scenes and write an HTML report (a 14-minute run on 2 CPU cores)",
        description="Generate synthetic scenes (an unlabeled training split and a held-out split with ground truth), "
        "run pre-training, Free Mask and self-supervised SOLO (and self-training with --size long) on the training split, evaluate every "
        "stage on the held-out split, print the metric table and write OUT/run/report.html. Running it again "
        "resumes or reuses finished stages.",
    )
    p.add_argument("--out", default="unsolo_demo", help="output folder (default ./unsolo_demo)")
    p.add_argument("--size", dest="demo_size", choices=sorted(DEMO_SIZES), default="default",
                   help="'default' (192 px scenes, a 14-minute run budget), 'quick' (checks that everything runs) or 'long' "
                        "(192 px scenes, 900 SOLO iterations per round and a self-training round: 88 minutes measured "
                        "in float32)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall time of the demo's run (e.g. 20m): the SOLO rounds train for what pre-training and Free Mask "
                   "leave of it (default: the size's own budget)")
    add_device(p)
    add_set(p, "train_images=200; the run's options under run.: run.rounds=0, run.train.solver.max_iter=300",
            "demo config")
    return p


def run(args) -> int:
    from unsolo.config import resolve
    from unsolo.pipeline.demo import DEMO_SIZES, DemoConfig, demo
    from unsolo.pipeline.run import print_summary

    extra = dict(DEMO_SIZES[args.demo_size])
    if args.time_budget is not None:
        extra["time_budget"] = args.time_budget
    cfg = resolve(DemoConfig, "demo", None, args.overrides, extra, nested={"run": "run_overrides"})
    summary = demo(args.out, cfg, device=args.device)
    if summary.get("main_process", True):
        print_summary(summary)
    return 0
