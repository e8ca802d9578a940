"""The paper's ablations (Table 7b-7e) reproduced at small scale on synthetic scenes, several seeds.

Same data, same backbone and same training budget for every variant; only the switch under study changes:

* 7b  Free Mask queries: pyramid (1, 0.5, 0.25) vs single scale (1.0)          -> coarse-mask metrics
* 7c  coarse masks vs SOLO round 0 vs one round of self-training (for the weak and the full-mask losses)
* 7d  weak losses (projection Dice + pairwise) vs Dice on the full coarse masks  -> round-0 metrics
* 7e  without the average-projection term                                         -> round-0 metrics

Class-agnostic mask AP / AP50 / AR100 on a held-out split with ground truth; mean and spread over the seeds
(the SOLO training seed; data and backbone fixed). Writes ``OUT/ablations.json`` and a Markdown table
(``OUT/ablations.md``) to paste into docs/ablations.md.

    python bench/ablations.py --out runs/ablations --seeds 0 1 --iters 400            # ~1 h on 2 CPU cores
    python bench/ablations.py --out runs/ablations --backbone runs/demo/run/pretrain/backbone.pth
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from unsolo.data.synthetic import generate
from unsolo.evaluation.coco_eval import evaluate
from unsolo.pipeline.freemask import FreeMaskRun, run_freemask
from unsolo.pipeline.predict import predict
from unsolo.pipeline.pretrain import PretrainConfig, pretrain
from unsolo.pipeline.pseudo_label import pseudo_label
from unsolo.pipeline.run import resolve_run_config
from unsolo.config import resolve
from unsolo.generators import FreeMask, FreeMaskConfig
from unsolo.pipeline.train import resolve_train_config, train

METRICS = ("AP", "AP50", "AR100")


def score(gt: Path, pred: Path) -> dict:
    res = evaluate(str(gt), str(pred), iou_type="segm")["percent"]
    return {m: float(res[m] or 0.0) for m in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--train-images", type=int, default=300)
    ap.add_argument("--eval-images", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iters", type=int, default=400, help="SOLO iterations per training run (same for every variant)")
    ap.add_argument("--backbone", help="a pre-trained backbone (default: pre-train one with the cpu run preset)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    out = Path(args.out)
    run_cfg = resolve_run_config("cpu")
    data = out / "data"
    for name, n, seed in (("train", args.train_images, 100), ("heldout", args.eval_images, 101)):
        if not (data / name / "annotations.json").is_file():
            generate(data / name, num_images=n, size=args.size, seed=seed)
    train_imgs, eval_imgs, gt = data / "train" / "images", data / "heldout" / "images", data / "heldout" / "annotations.json"

    backbone = Path(args.backbone) if args.backbone else out / "pretrain" / "backbone.pth"
    if not backbone.is_file():
        pretrain(train_imgs, out / "pretrain", resolve(PretrainConfig, "pretrain", run_cfg.pretrain_preset),
                 device=args.device)

    results: dict[str, list[dict]] = {}
    t0 = time.time()

    def freemask(name: str, overrides: list[str], src: Path) -> Path:
        dest = out / "freemask" / f"{name}_{src.parent.name}.json"
        if not dest.is_file():
            cfg = resolve(FreeMaskConfig, "freemask", run_cfg.generator_preset, overrides)
            run_freemask(FreeMaskRun(input=str(src), out=str(dest), weights=str(backbone), arch=run_cfg.arch,
                                     workers=0, device=args.device), FreeMask(cfg))
        return dest

    # 7b: pyramid vs single-scale queries (no training: deterministic, one "seed")
    for name, ov in (("pyramid queries (1, .5, .25)", []), ("single-scale queries (1)", ["query_scales=[1.0]"])):
        key = "7b " + name
        results[key] = [score(gt, freemask(name.split()[0], ov, eval_imgs))]
    coarse_train = freemask("pyramid", [], train_imgs)

    def solo(tag: str, seed: int, labels: Path, overrides: list[str]) -> Path:
        rdir = out / "solo" / f"{tag}_seed{seed}"
        cfg = resolve_train_config(run_cfg.train_preset, list(overrides) + [f"solver.max_iter={args.iters}",
                                   f"seed={seed}", "data.workers=0"], {"model": {"arch": run_cfg.arch}})
        cfg.backbone_weights = str(backbone)
        if not (rdir / "model_final.pth").is_file():
            train(cfg, train_imgs, labels, rdir, device=args.device)
        preds = rdir / "eval_predictions.json"
        if not preds.is_file():
            predict(eval_imgs, rdir / "model_final.pth", preds, device=args.device, workers=0,
                    short_side=run_cfg.test_short_side, max_side=run_cfg.test_max_side)
        return rdir

    # every variant names its mask loss: the CPU train preset defaults to full-mask Dice (docs/ablations.md)
    variants = {  # tag -> (row name, train overrides)
        "weak": ("weak losses (FreeSOLO)", ["model.loss.mask_loss=weak"]),
        "full": ("7d full-mask Dice (CPU preset default)", ["model.loss.mask_loss=full"]),
        "noavg": ("7e weak losses without avg-projection", ["model.loss.mask_loss=weak",
                                                            "model.loss.use_avg_proj=false"]),
    }
    results["7c coarse masks"] = [score(gt, freemask("pyramid", [], eval_imgs))]
    for seed in args.seeds:
        for tag, (name, ov) in variants.items():
            rdir = solo(tag, seed, coarse_train, ov)
            results.setdefault(name, []).append(score(gt, rdir / "eval_predictions.json"))
            if tag == "noavg":
                continue
            # 7c: one round of self-training on this round 0's confident predictions, with the same losses
            labels = rdir / "pseudo_labels.json"
            if not labels.is_file():
                pseudo_label(train_imgs, rdir / "model_final.pth", labels, run_cfg.pseudo_label, device=args.device,
                             workers=0, short_side=run_cfg.test_short_side, max_side=run_cfg.test_max_side)
            if json.loads(labels.read_text())["annotations"]:  # else: no confident prediction, no round 1
                r1 = solo(f"round1_{tag}", seed, labels, ov)
                results.setdefault(f"7c round 1 after {tag}", []).append(score(gt, r1 / "eval_predictions.json"))

    table = ["| variant | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name, runs in results.items():
        cells = []
        for m in METRICS:
            vals = [r[m] for r in runs]
            mean = statistics.fmean(vals)
            cells.append(f"{mean:.1f} ± {statistics.pstdev(vals):.1f}" if len(vals) > 1 else f"{mean:.1f}")
        table.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    text = "\n".join(table)
    (out / "ablations.json").write_text(json.dumps(results, indent=2))
    (out / "ablations.md").write_text(text + "\n")
    print(text)
    print(f"total {time.time() - t0:.0f} s; iterations per SOLO run: {args.iters}; seeds {args.seeds}")


if __name__ == "__main__":
    main()
