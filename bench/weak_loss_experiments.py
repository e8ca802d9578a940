"""Why the weak losses collapse at CPU scale, and a recipe in which they learn (issue: weak-loss SOLO recipe).

Every run trains SOLO (``small_r18`` train preset, the weak losses unless the row says otherwise) on the same
training images and backbone, then predicts and scores the held-out split (class-agnostic mask AP / AP50 / AR100)
and keeps the collapse monitor's curve (``fg_pred`` / ``fg_target`` of ``metrics.jsonl``).

Three families (``RUNS`` below names every row and its overrides):

* schedule: learning rate {0.0025, 0.001, 0.00025 at 4 images} x pairwise warm-up {100, 1000}, and the pairwise
  term off;
* label precision: ``labels`` writes label files with a chosen share of ground-truth object masks (the rest:
  coarse masks that match no object at IoU >= 0.5), the same number of labels per image as the coarse masks where
  the image has enough objects (else fewer, at the same share), trained with the weak losses and with full-mask Dice;
* warm start / phase: full-mask Dice for 600 iterations, then 300 more either with full-mask Dice or with the weak
  losses (``model.loss.full_dice_iters=600``); both resume the same 600-iteration run, so the budget is equal.

    python bench/weak_loss_experiments.py labels --work runs/abl               # label files + their statistics
    OMP_NUM_THREADS=1 python bench/weak_loss_experiments.py run --work runs/abl --runs weak_lr2.5e-3_wu100 ...
    python bench/weak_loss_experiments.py table --work runs/abl                # Markdown table + monitor figure
    python bench/weak_loss_experiments.py fork --work runs/abl --fork full500_weak100 full600 model_0000499.pth

``--work`` must hold the 192 px setting of docs/ablations.md: ``train/`` and ``heldout/`` (``unsolo synth``),
``pretrain/backbone.pth`` and ``coarse_t07.json`` (Free Mask labels at maskness >= 0.7).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

ITERS = 300
#: name -> (train overrides, labels file stem, iterations, run it resumes from or None)
RUNS: dict[str, tuple[list[str], str, int, str | None]] = {
    # schedule (weak losses; the preset's lr is 0.0025 at 4 images, its pairwise warm-up 100)
    "weak_lr2.5e-3_wu100": (["model.loss.mask_loss=weak"], "coarse_t07", ITERS, None),
    "weak_lr2.5e-3_wu1000": (["model.loss.mask_loss=weak", "model.loss.warmup_iters=1000"], "coarse_t07", ITERS, None),
    "weak_lr1e-3_wu100": (["model.loss.mask_loss=weak", "solver.lr=0.001"], "coarse_t07", ITERS, None),
    "weak_lr1e-3_wu1000": (["model.loss.mask_loss=weak", "solver.lr=0.001", "model.loss.warmup_iters=1000"],
                           "coarse_t07", ITERS, None),
    "weak_lr2.5e-4_wu100": (["model.loss.mask_loss=weak", "solver.lr=0.00025"], "coarse_t07", ITERS, None),
    "weak_lr2.5e-4_wu1000": (["model.loss.mask_loss=weak", "solver.lr=0.00025", "model.loss.warmup_iters=1000"],
                             "coarse_t07", ITERS, None),
    "weak_nopair": (["model.loss.mask_loss=weak", "model.loss.use_pairwise=false"], "coarse_t07", ITERS, None),
    "full": (["model.loss.mask_loss=full"], "coarse_t07", ITERS, None),
    # label filtering: the labels whose box spans > 70 % of the image along both axes left out (data.max_label_span)
    "weak_span70": (["model.loss.mask_loss=weak", "data.max_label_span=0.7"], "coarse_t07", ITERS, None),
    "full_span70": (["model.loss.mask_loss=full", "data.max_label_span=0.7"], "coarse_t07", ITERS, None),
    # warm start: 600 full-mask Dice iterations, then 300 more of full Dice or of the weak losses
    "full600": (["model.loss.mask_loss=full"], "coarse_t07", 600, None),
    "full900": (["model.loss.mask_loss=full"], "coarse_t07", 900, "full600"),
    "full600_weak300": (["model.loss.mask_loss=weak", "model.loss.full_dice_iters=600"], "coarse_t07", 900, "full600"),
    "full600_weak150": (["model.loss.mask_loss=weak", "model.loss.full_dice_iters=600", "solver.checkpoint_period=50"],
                        "coarse_t07", 750, "full600"),
    "full750": (["model.loss.mask_loss=full"], "coarse_t07", 750, "full600"),
    # the same question at a 600-iteration budget: the last 100 iterations with the weak losses instead of full Dice
    # (forks full600 at its iteration-500 checkpoint: run it while full600 is still going, see fork_at_checkpoint)
    "full500_weak100": (["model.loss.mask_loss=weak", "model.loss.full_dice_iters=500", "solver.checkpoint_period=50"],
                        "coarse_t07", 600, "full600"),
}
# other pseudo-mask generators (unsolo freemask --generator felzenszwalb --preset small --set min_score=0.3)
RUNS["full_felz"] = (["model.loss.mask_loss=full"], "felzenszwalb_s03", ITERS, None)
RUNS["weak_felz"] = (["model.loss.mask_loss=weak"], "felzenszwalb_s03", ITERS, None)
PRECISIONS = (100, 60, 40, 21)
for _p in PRECISIONS:
    RUNS[f"weak_p{_p}"] = (["model.loss.mask_loss=weak"], f"precision{_p}", ITERS, None)
    RUNS[f"full_p{_p}"] = (["model.loss.mask_loss=full"], f"precision{_p}", ITERS, None)
METRICS = ("AP", "AP50", "AR100")


# ------------------------------------------------------------------------------------------ label files
def _masks(coco: dict, anns: list[dict], image: dict) -> np.ndarray:
    from unsolo.data.coco import decode_segmentation

    h, w = image["height"], image["width"]
    return np.stack([decode_segmentation(a["segmentation"], h, w).astype(bool) for a in anns]) if anns \
        else np.zeros((0, h, w), bool)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float32)
    b = b.reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / np.maximum(union, 1)


def spans_image(mask: np.ndarray, frac: float = 0.7) -> bool:
    """Whether a mask's projection box covers more than ``frac`` of the image along both axes."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return False
    return (ys.max() - ys.min() + 1) > frac * mask.shape[0] and (xs.max() - xs.min() + 1) > frac * mask.shape[1]


def make_label_files(work: Path, seed: int = 0) -> dict:
    """``precision{P}.json`` for each P of :data:`PRECISIONS`, and the statistics of every label set."""
    from unsolo.data.coco import annotations_by_image, encode_mask, mask_to_xywh, load_annotation_file

    coarse = load_annotation_file(work / "coarse_t07.json")
    gt = load_annotation_file(work / "train" / "annotations.json")
    gt_by_file = {im["file_name"]: im for im in gt["images"]}
    gt_anns, coarse_anns = annotations_by_image(gt), annotations_by_image(coarse)
    rng = np.random.default_rng(seed)
    per_image = []  # (image, coarse masks, is-object flags, gt masks)
    for im in coarse["images"]:
        anns = coarse_anns.get(im["id"], [])
        g_im = gt_by_file[im["file_name"]]
        cm, gm = _masks(coarse, anns, im), _masks(gt, gt_anns.get(g_im["id"], []), g_im)
        obj = (_iou(cm, gm).max(1) >= 0.5) if len(cm) and len(gm) else np.zeros(len(cm), bool)
        per_image.append((im, cm, obj, gm))
    stats = {"coarse_t07": _label_stats([(cm, obj) for _, cm, obj, _ in per_image])}
    for p in PRECISIONS:
        images, anns, sets = [], [], []
        for im, cm, obj, gm in per_image:
            # the image's coarse-label count at precision p where it has enough objects; where it has fewer, its
            # objects and as many non-objects as keep the precision at p (precision first: it is the variable)
            n = len(cm)
            n_obj = min(int(round(p / 100 * n)), len(gm))
            non = np.flatnonzero(~obj)
            n_non = min(n - n_obj if n_obj == round(p / 100 * n) else int(round(n_obj * (100 - p) / p)), len(non))
            chosen_gt = rng.choice(len(gm), n_obj, replace=False) if n_obj else []
            chosen_non = rng.choice(non, n_non, replace=False) if n_non else []
            masks = [gm[i] for i in chosen_gt] + [cm[i] for i in chosen_non]
            flags = [True] * len(chosen_gt) + [False] * len(chosen_non)
            images.append(im)
            for m in masks:
                anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 1,
                             "segmentation": encode_mask(m), "bbox": mask_to_xywh(m), "area": float(m.sum()),
                             "iscrowd": 0, "score": 1.0})
            sets.append((np.stack(masks) if masks else np.zeros((0,) + cm.shape[1:], bool), np.asarray(flags, bool)))
        out = {"images": images, "annotations": anns, "categories": coarse["categories"]}
        (work / f"precision{p}.json").write_text(json.dumps(out))
        stats[f"precision{p}"] = _label_stats(sets)
    (work / "label_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def _label_stats(sets) -> dict:
    n = sum(len(m) for m, _ in sets)
    obj = sum(int(f.sum()) for _, f in sets)
    span = sum(int(spans_image(x)) for m, _ in sets for x in m)
    border = sum(int(x[0].any() or x[-1].any() or x[:, 0].any() or x[:, -1].any()) for m, _ in sets for x in m)
    return {"labels": n, "precision": obj / max(n, 1), "spanning_70pct_both_axes": span / max(n, 1),
            "touching_border": border / max(n, 1)}


# -------------------------------------------------------------------------------------------------- runs
def run_one(work: Path, name: str, seed: int) -> dict:
    from unsolo.evaluation.coco_eval import evaluate
    from unsolo.pipeline.predict import predict
    from unsolo.pipeline.train import resolve_train_config, train

    overrides, labels, iters, parent = RUNS[name]
    rdir = work / "weak_exp" / f"{name}_seed{seed}"
    if parent and not (rdir / "last_checkpoint").is_file():  # resume a copy of the parent run: equal first phase
        pdir = work / "weak_exp" / f"{parent}_seed{seed}"
        if not (pdir / "model_final.pth").is_file():
            run_one(work, parent, seed)
        shutil.copytree(pdir, rdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("eval_*", "result.json"))
    cfg = resolve_train_config("small_r18", overrides + [f"solver.max_iter={iters}", f"seed={seed}",
                                                       "data.workers=0"])
    cfg.backbone_weights = str(work / "pretrain" / "backbone.pth")
    t0 = time.time()
    train(cfg, work / "train" / "images", work / f"{labels}.json", rdir, device="cpu")
    train_s = time.time() - t0
    preds = rdir / "eval_predictions.json"
    predict(work / "heldout" / "images", rdir / "model_final.pth", preds, device="cpu", workers=0,
            short_side=224, max_side=373)
    res = evaluate(str(work / "heldout" / "annotations.json"), str(preds), iou_type="segm")["percent"]
    recs = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tail = [r for r in recs if "fg_pred" in r][-5:]
    out = {"run": name, "seed": seed, "overrides": overrides, "labels": labels, "iterations": iters,
           **{m: float(res[m] or 0.0) for m in METRICS}, "train_seconds": round(train_s, 1),
           "final_fg_pred": statistics.fmean(r["fg_pred"] for r in tail) if tail else None,
           "final_fg_target": statistics.fmean(r["fg_target"] for r in tail) if tail else None,
           "final_loss_ins_max": statistics.fmean(r["loss_ins_max"] for r in recs[-5:]) if recs else None,
           "date": time.strftime("%Y-%m-%d")}
    (rdir / "result.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out), flush=True)
    return out


def fork_at_checkpoint(work: Path, name: str, parent: str, checkpoint: str, seed: int) -> None:
    """Start run ``name`` from ``parent``'s intermediate ``checkpoint`` (e.g. ``model_0000499.pth``): a copy of the
    parent's folder whose ``last_checkpoint`` names it, so that ``run`` resumes there (the parent may still run)."""
    src, dst = work / "weak_exp" / f"{parent}_seed{seed}", work / "weak_exp" / f"{name}_seed{seed}"
    if not (src / checkpoint).is_file():
        raise SystemExit(f"{src / checkpoint} does not exist yet")
    dst.mkdir(parents=True, exist_ok=True)
    for f in (checkpoint, "metrics.jsonl", "config.yaml"):
        shutil.copy2(src / f, dst / f)
    (dst / "last_checkpoint").write_text(checkpoint)


def table(work: Path) -> str:
    """Markdown rows (mean ± population sd over seeds) and ``weak_exp/monitor.png`` with every run's fg curve."""
    results: dict[str, list[dict]] = {}
    for d in sorted(p for p in (work / "weak_exp").glob("*_seed*") if (p / "metrics.jsonl").is_file()):
        if (d / "result.json").is_file():
            r = json.loads((d / "result.json").read_text())
        else:  # a run stopped before the end: its monitor curve only
            name, seed = d.name.rsplit("_seed", 1)
            last = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]
            r = {"run": name, "seed": int(seed), "stopped_at": last["iteration"] + 1, "final_fg_pred": None}
        if r["run"] in RUNS:
            results.setdefault(r["run"], []).append(r)
    lines = ["| run | seeds | mask AP | AP50 | AR100 | fg pred / target (last 50 it.) |", "|---|---|---|---|---|---|"]
    for name in RUNS:
        rs = results.get(name)
        if not rs:
            continue
        if any("stopped_at" in r for r in rs):
            lines.append(f"| {name} | {', '.join(str(r['seed']) for r in rs)} | stopped at "
                         f"{', '.join(str(r.get('stopped_at', '-')) for r in rs)} iterations | | | |")
            continue
        cells = []
        for m in METRICS:
            v = [r[m] for r in rs]
            cells.append(f"{statistics.fmean(v):.1f} ± {statistics.pstdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}")
        fg = " ; ".join(f"{r['final_fg_pred']:.2f} / {r['final_fg_target']:.2f}" for r in rs if r["final_fg_pred"] is not None)
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + f" | {fg} |")
    _monitor_figure(work, results)
    return "\n".join(lines)


def _monitor_figure(work: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in RUNS if n in results]
    if not names:
        return
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for r in results[name]:
            recs = [json.loads(x) for x in (work / "weak_exp" / f"{name}_seed{r['seed']}" / "metrics.jsonl")
                    .read_text().splitlines() if x.strip()]
            recs = [x for x in recs if "fg_pred" in x]
            it = [x["iteration"] for x in recs]
            ax.plot(it, [x["fg_pred"] for x in recs], label=f"pred s{r['seed']}")
            ax.plot(it, [x["fg_target"] for x in recs], "--", label=f"target s{r['seed']}")
        aps = " / ".join(f"{r['AP']:.1f} AP" if "AP" in r else f"stopped at {r['stopped_at']}" for r in results[name])
        ax.set_title(f"{name} ({aps})", fontsize=8)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supxlabel("iteration", fontsize=8)
    fig.supylabel("foreground fraction (p > 0.5), positive cells", fontsize=8)
    fig.tight_layout()
    fig.savefig(work / "weak_exp" / "monitor.png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("labels", "run", "table", "fork"))
    ap.add_argument("--fork", nargs=3, metavar=("RUN", "PARENT", "CHECKPOINT"),
                    help="with 'fork': start RUN from PARENT's CHECKPOINT, then run it")
    ap.add_argument("--work", required=True, help="folder with the 192 px setting (see above)")
    ap.add_argument("--runs", nargs="+", default=[], help=f"runs to do, in order: {', '.join(RUNS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    work = Path(args.work)
    if args.what == "labels":
        print(json.dumps(make_label_files(work), indent=2))
    elif args.what == "run":
        unknown = [r for r in args.runs if r not in RUNS]
        if unknown:
            raise SystemExit(f"unknown run(s): {', '.join(unknown)}")
        for seed in args.seeds:
            for name in args.runs:
                if not (work / "weak_exp" / f"{name}_seed{seed}" / "result.json").is_file():
                    run_one(work, name, seed)
    elif args.what == "fork":
        name, parent, ckpt = args.fork
        for seed in args.seeds:
            fork_at_checkpoint(work, name, parent, ckpt, seed)
            run_one(work, name, seed)
    else:
        print(table(work))


if __name__ == "__main__":
    main()
