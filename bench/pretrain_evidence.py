"""Evidence that DenseCL pre-training learns: Free Mask with the pre-trained backbone vs the same backbone at
random initialisation, on synthetic scenes, scored class-agnostically (mask AR100 / AP50 / AP) against the
scenes' ground truth.

    OMP_NUM_THREADS=1 python bench/pretrain_evidence.py --work runs/evidence

Steps (each skipped when its output exists, so the script can be re-run after an interruption):
1. ``unsolo synth``: a training set (pre-training only; its labels are never used) and an evaluation set;
2. ``unsolo pretrain`` with the ``small_r18`` preset on the training images;
3. a random-init ResNet of the same depth (BatchNorm statistics calibrated on the training images, so that
   the comparison is about the weights, not about uncalibrated BN), exported in the same DenseCL layout;
4. ``unsolo freemask --preset small`` on the evaluation images with each backbone;
5. class-agnostic COCO evaluation (``unsolo.evaluation``); results printed and written to ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "unsolo", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


@torch.no_grad()
def random_backbone(arch: str, images: Path, out: Path, size: int, seed: int, max_images: int = 256) -> None:
    """A random-init ResNet (torchvision init, seeded) whose BN statistics are averaged over the images."""
    from unsolo.data.images import list_images, load_image
    from unsolo.modeling.backbone import ResNetBackbone, normalize_image
    from unsolo.modeling.densecl import export_checkpoint

    torch.manual_seed(seed)
    net = ResNetBackbone(arch, norm="bn")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all calibration batches
    net.train()
    recs = list_images(images)[:max_images]
    for i in range(0, len(recs), 32):
        batch = [np.asarray(Image.fromarray(load_image(r.path)).resize((size, size), Image.BILINEAR)) for r in recs[i : i + 32]]
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()
        net(normalize_image(x))
    torch.save(export_checkpoint({k: v.cpu() for k, v in net.state_dict().items()}), out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/evidence", help="working folder (data, runs, predictions, results.json)")
    ap.add_argument("--train-images", type=int, default=512, help="synthetic images for pre-training")
    ap.add_argument("--eval-images", type=int, default=60, help="synthetic images with ground truth for evaluation")
    ap.add_argument("--image-size", type=int, default=192, help="synthetic image side")
    ap.add_argument("--preset", default="small_r18", help="pretrain preset")
    ap.add_argument("--pretrain-run", default=None, help="use this finished pretrain run folder instead of training")
    ap.add_argument("--freemask-preset", default="small", help="freemask preset for small images")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="pretrain config override")
    args = ap.parse_args()

    from unsolo.config import resolve
    from unsolo.evaluation.coco_eval import evaluate
    from unsolo.pipeline.pretrain import PretrainConfig

    work = Path(args.work)
    train, evalset = work / "synth_train", work / "synth_eval"
    if not (train / "annotations.json").is_file():
        cli("synth", str(train), "--num-images", str(args.train_images), "--size", str(args.image_size), "--seed", "0")
    if not (evalset / "annotations.json").is_file():
        cli("synth", str(evalset), "--num-images", str(args.eval_images), "--size", str(args.image_size), "--seed", "1")

    cfg = resolve(PretrainConfig, "pretrain", args.preset, args.overrides)
    run = Path(args.pretrain_run) if args.pretrain_run else work / "pretrain"
    t0 = time.perf_counter()
    if not args.pretrain_run:
        sets = [x for o in args.overrides for x in ("--set", o)]
        cli("pretrain", str(train / "images"), "--out", str(run), "--preset", args.preset, *sets)
    pretrain_s = time.perf_counter() - t0
    summary = json.loads((run / "summary.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]

    rand = work / "random_backbone.pth"
    if not rand.is_file():
        random_backbone(cfg.arch, train / "images", rand, args.image_size, cfg.seed)

    results = {}
    for name, weights in (("random init", rand), ("DenseCL", run / "backbone.pth")):
        pred = work / f"freemask_{name.split()[0].lower()}.json"
        if not pred.is_file():
            cli("freemask", str(evalset / "images"), "--weights", str(weights), "--arch", cfg.arch,
                "--preset", args.freemask_preset, "--out", str(pred))  # fmt: skip
        r = evaluate(str(evalset / "annotations.json"), str(pred), iou_type="segm")
        results[name] = {k: r["percent"][k] for k in ("AP", "AP50", "AR1", "AR10", "AR100")}

    out = {
        "pretrain": {
            "preset": args.preset,
            "iterations": summary["iterations"],
            "images": summary["images"],
            "seconds_this_call": round(pretrain_s, 1),
            "loss_first": log[0]["loss"],
            "loss_last_mean10": float(np.mean([r["loss"] for r in log[-10:]])),
        },
        "freemask_preset": args.freemask_preset,
        "eval_images": args.eval_images,
        "results": results,
    }
    (work / "results.json").write_text(json.dumps(out, indent=2))
    print(f"\n| backbone | mask AP | AP50 | AR1 | AR10 | AR100 |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['AP']} | {r['AP50']} | {r['AR1']} | {r['AR10']} | {r['AR100']} |")
    print(json.dumps(out["pretrain"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
