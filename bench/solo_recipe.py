"""How fast does SOLO learn on a CPU? Learning curves of training recipes (optimizer, learning rate, frozen
backbone stages, image scale) on the same data, scored on held-out scenes at several iterations.

A run trains the ``small_r18`` train preset plus the recipe's overrides (``RECIPES`` below) on one label file, saves
a checkpoint every ``--eval-every`` iterations, and scores each one on the held-out split (class-agnostic mask AP /
AP50 / AR100), so one run gives the whole curve. Score the labels' generator on the held-out images (``unsolo
freemask`` + ``unsolo evaluate``) for the bar a learned model has to clear.

    # the setting: `unsolo demo` data (128 px) or the 192 px setting of docs/ablations.md
    OMP_NUM_THREADS=1 python bench/solo_recipe.py run --work runs/recipe --train D/data/train \\
        --heldout D/data/heldout --backbone D/run/pretrain/backbone.pth --labels gt=D/data/train/annotations.json \\
        --sizes 112,128,144 --max-size 240 --test-size 128 --iters 300 --eval-every 100 --runs sgd@gt adamw@gt
    python bench/solo_recipe.py table --work runs/recipe

Results go to ``WORK/<recipe>@<labels>_seed<s>/curve.json`` (one row per scored checkpoint, with the run's total
training seconds); ``table`` prints the Markdown table of every run and draws ``WORK/curves.png`` (AP and AP50
against iterations).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: recipe -> train overrides on top of the small_r18 preset (full-mask Dice, SGD lr 0.0025 at 4 images)
RECIPES: dict[str, list[str]] = {
    "sgd": [],  # the preset (solver.precision=auto: bf16 on CPUs with native bf16, float32 elsewhere)
    "fp32": ["solver.precision=float32"],  # the preset in float32 ...
    "bf16": ["solver.precision=bfloat16"],  # ... and in bfloat16 autocast (docs/benchmarks.md)
    "sgd_lr5e-3_clip": ["solver.lr=0.005", "solver.clip_grad_norm=5.0"],
    "sgd_dice3": ["model.loss.dice_weight=3.0"],  # SOLOv2's DICE_WEIGHT (FreeSOLO: 1.0)
    "sgd_dice3_freeze2": ["model.loss.dice_weight=3.0", "model.freeze_at=2"],
    "sgd_freeze2": ["model.freeze_at=2"],
    "sgd_freeze5": ["model.freeze_at=5"],
    "adamw_lr1e-4": ["solver.optimizer=adamw", "solver.lr=0.0001", "solver.weight_decay=0.05"],
    "adamw_lr3e-4": ["solver.optimizer=adamw", "solver.lr=0.0003", "solver.weight_decay=0.05"],
    "adamw_lr1e-3": ["solver.optimizer=adamw", "solver.lr=0.001", "solver.weight_decay=0.05"],
    "adamw_lr3e-4_freeze2": ["solver.optimizer=adamw", "solver.lr=0.0003", "solver.weight_decay=0.05",
                             "model.freeze_at=2"],
}
METRICS = ("AP", "AP50", "AR100")


def run_one(args, recipe: str, labels: str, label_file: str, seed: int) -> list[dict]:
    from unsolo.evaluation.coco_eval import evaluate
    from unsolo.pipeline.predict import predict
    from unsolo.pipeline.train import checkpoint_name, resolve_train_config, train

    rdir = Path(args.work) / f"{recipe}@{labels}_seed{seed}"
    sizes = [int(s) for s in args.sizes.split(",")]
    overrides = RECIPES[recipe] + list(args.set) + [
        f"solver.max_iter={args.iters}", f"seed={seed}", "data.workers=0", f"solver.checkpoint_period={args.eval_every}",
        f"data.min_sizes={sizes}", f"data.max_size={args.max_size}"]
    cfg = resolve_train_config("small_r18", overrides)
    cfg.backbone_weights = args.backbone
    t0 = time.time()
    train(cfg, Path(args.train) / "images", label_file, rdir, device="cpu")
    train_s = time.time() - t0
    curve = []
    for it in range(args.eval_every, args.iters + 1, args.eval_every):
        ckpt = rdir / ("model_final.pth" if it == args.iters else checkpoint_name(it - 1))
        preds = rdir / f"eval_{it:05d}.json"
        if not preds.is_file():
            predict(Path(args.heldout) / "images", ckpt, preds, device="cpu", workers=0,
                    short_side=args.test_size, max_side=int(args.test_size * 5 / 3))
        res = evaluate(str(Path(args.heldout) / "annotations.json"), str(preds), iou_type="segm")["percent"]
        curve.append({"recipe": recipe, "labels": labels, "seed": seed, "iteration": it,
                      **{m: round(float(res[m] or 0.0), 2) for m in METRICS}, "overrides": RECIPES[recipe] + list(args.set),
                      "train_seconds_total": round(train_s, 1), "date": time.strftime("%Y-%m-%d")})
    (rdir / "curve.json").write_text(json.dumps(curve, indent=1))
    for row in curve:
        print(json.dumps(row), flush=True)
    return curve


def table(work: Path) -> str:
    rows = []
    for f in sorted(work.glob("*/curve.json")):
        rows += json.loads(f.read_text())
    by_run: dict[tuple, list[dict]] = {}
    for r in rows:
        by_run.setdefault((r["recipe"], r["labels"], r["seed"]), []).append(r)
    its = sorted({r["iteration"] for r in rows})
    head = "| recipe | labels | seed | " + " | ".join(f"it {i}: AP / AP50 / AR100" for i in its) + " | train s |"
    lines = [head, "|" + "---|" * (4 + len(its))]
    for (recipe, labels, seed), rs in sorted(by_run.items()):
        cells = {r["iteration"]: f"{r['AP']:.1f} / {r['AP50']:.1f} / {r['AR100']:.1f}" for r in rs}
        lines.append(f"| `{recipe}` | {labels} | {seed} | " + " | ".join(cells.get(i, "") for i in its)
                     + f" | {rs[0]['train_seconds_total']:.0f} |")
    return "\n".join(lines)


def plot(work: Path, out: Path, refs: dict[str, tuple[float, float]] | None = None) -> None:
    """AP and AP50 against iterations, one line per run, and dashed reference levels (``refs``: name -> (AP, AP50),
    e.g. the labels' own held-out score): ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict]] = {}
    for f in sorted(work.glob("*/curve.json")):
        rows = json.loads(f.read_text())
        if rows:
            runs[f"{rows[0]['recipe']}@{rows[0]['labels']} s{rows[0]['seed']}"] = rows
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, (ax, metric) in enumerate(zip(axes, ("AP", "AP50"))):
        for name, rows in runs.items():
            ax.plot([r["iteration"] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        for name, levels in (refs or {}).items():
            ax.axhline(levels[k], color="k", ls="--", lw=1)
            ax.annotate(name, (0.01, levels[k]), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"held-out mask {metric} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run", "table"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--train", help="folder with images/ (the training split)")
    ap.add_argument("--heldout", help="folder with images/ and annotations.json")
    ap.add_argument("--backbone", help="DenseCL backbone weights")
    ap.add_argument("--labels", nargs="+", default=[], help="NAME=label-file.json")
    ap.add_argument("--runs", nargs="+", default=[], help=f"RECIPE@LABELS; recipes: {', '.join(RECIPES)}")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--sizes", default="112,128,144", help="training short sides")
    ap.add_argument("--max-size", type=int, default=240)
    ap.add_argument("--test-size", type=int, default=128)
    ap.add_argument("--set", action="append", default=[], help="extra train override for every run")
    ap.add_argument("--ref", action="append", default=[], metavar="NAME=AP,AP50",
                    help="table: a dashed reference level in the figure, e.g. 'coarse masks=2.4,6.1'")
    args = ap.parse_args()
    work = Path(args.work)
    if args.command == "table":
        print(table(work))
        refs = {}
        for item in args.ref:
            name, _, vals = item.rpartition("=")
            try:
                ap_, ap50 = (float(v) for v in vals.split(","))
            except ValueError:
                raise SystemExit(f"--ref {item!r}: expected NAME=AP,AP50") from None
            refs[name] = (ap_, ap50)
        plot(work, work / "curves.png", refs)
        print(f"figure: {work / 'curves.png'}")
        return
    label_files = dict(x.split("=", 1) for x in args.labels if "=" in x)
    specs = [spec.partition("@")[::2] for spec in args.runs]  # checked before the first (long) run starts
    for recipe, labels in specs:
        if recipe not in RECIPES:
            raise SystemExit(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        if labels not in label_files:
            raise SystemExit(f"run {recipe}@{labels}: no --labels {labels}=FILE given (have: {', '.join(label_files) or 'none'})")
    work.mkdir(parents=True, exist_ok=True)
    for recipe, labels in specs:
        for seed in (int(s) for s in args.seeds.split(",")):
            run_one(args, recipe, labels, label_files[labels], seed)


if __name__ == "__main__":
    main()
