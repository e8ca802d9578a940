"""Few-label fine-tuning evidence on synthetic scenes (one class per shape family): FreeSOLO init vs DenseCL init vs
random init, at the same budget, with 5 % and 10 % of the labels, several seeds.

Steps (each skipped when its output exists, so the script resumes after an interruption):

1. ``unsolo synth``: an unlabeled pool (``--pool`` images, seed 0) and a held-out split with ground truth
   (``--heldout`` images, seed 1), ``--size`` px.
2. ``unsolo run`` on the pool (CPU preset, no self-training round, shortened pre-training and training): the
   DenseCL backbone ``base/pretrain/backbone.pth`` and the FreeSOLO model ``base/round0/model_final.pth``. No label
   is used here.
3. For every percent P and seed K: ``unsolo split-labels POOL/annotations.json --percent P --mode images --seed K``
   (the pool's ground truth plays the role of the human labels), then ``unsolo finetune`` three times with the
   same budget (``--iters``): ``--init freesolo``, ``--init-backbone densecl``, ``--init none``; then
   ``unsolo predict`` + ``unsolo evaluate --class-aware`` on the held-out split.
4. A table (mean and spread of class-aware mask AP / AP50 over the seeds) printed and written to
   ``OUT/finetune_evidence.json`` and ``OUT/finetune_evidence.md``.

Usage::

    python bench/finetune_evidence.py --out /tmp/ft_evidence                     # ~25 minutes on 2 CPU cores
    python bench/finetune_evidence.py --out /tmp/ft_evidence --stop-after base   # only steps 1-2
    # reuse an existing base (no step 2): synth folders, the DenseCL backbone and the FreeSOLO model trained from it
    python bench/finetune_evidence.py --out /tmp/ft192 --pool-dir runs/abl/train --heldout-dir runs/abl/heldout \
        --backbone runs/abl/backbone.pth --base-model runs/abl/round0/model_final.pth \
        --train-sizes 160,192,224 --test-short 224 --test-max 373
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# On 2 shared cores, spinning OpenMP threads cost several times the CPU time of a small training step (measured:
# 15 s/it -> 2.6 s/it for the self-supervised stage); set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")

INITS = ("freesolo", "densecl", "random")


def cli(*args: str) -> None:
    from unsolo.cli import main

    print("+ unsolo " + " ".join(map(str, args)), flush=True)
    rc = main([str(a) for a in args])
    if rc:
        raise SystemExit(f"unsolo {args[0]} failed with exit code {rc}")


def data_dirs(out: Path, a) -> tuple[Path, Path]:
    """The pool and held-out splits: ``--pool-dir``/``--heldout-dir`` (existing ``unsolo synth`` folders) or
    ``OUT/data/{pool,heldout}``."""
    return (Path(a.pool_dir) if a.pool_dir else out / "data" / "pool",
            Path(a.heldout_dir) if a.heldout_dir else out / "data" / "heldout")


def base_stage(out: Path, a) -> tuple[Path, Path]:
    # check an existing base before generating any data
    if bool(a.backbone) != bool(a.base_model):
        raise SystemExit("--backbone and --base-model go together (the DenseCL backbone the FreeSOLO model started from)")
    for f in (a.backbone, a.base_model):
        if f and not Path(f).is_file():
            raise SystemExit(f"not a file: {f}")
    pool, heldout = data_dirs(out, a)
    for folder, n, seed in ((pool, a.pool, 0), (heldout, a.heldout, 1)):
        if not (folder / "annotations.json").is_file():
            cli("synth", folder, "--num-images", n, "--size", a.size, "--seed", seed)
    if a.backbone and a.base_model:  # an existing base: nothing to train
        return Path(a.backbone), Path(a.base_model)
    base = out / "base"
    model = base / "round0" / "model_final.pth"
    if not model.is_file():
        cli("run", pool / "images", "--out", base, "--preset", "cpu", "--rounds", 0, "--device", "cpu",
            "--set", f"pretrain_overrides=[epochs={a.pretrain_epochs},batch_size=32,size=64,workers=1]",
            "--set", "generator_overrides=[short_side=256]",
            "--set", f"train_overrides=[solver.max_iter={a.base_iters},data.workers=1,'data.min_sizes=[128,160,192]',"
                     "data.max_size=320,solver.checkpoint_period=100000]",
            "--set", "test_short_side=192", "--set", "test_max_side=320", "--set", "workers=1")
    return base / "pretrain" / "backbone.pth", model


def finetune_stage(out: Path, a, densecl: Path, freesolo_model: Path) -> list[dict]:
    pool, heldout = data_dirs(out, a)
    pool_json = pool / "annotations.json"
    rows = []
    for seed in a.seeds:  # seed-major: an interrupted run still has every percent for the first seeds
        for pct in a.percents:
            split = out / "splits" / f"p{pct:g}_s{seed}.json"
            if not split.is_file():
                cli("split-labels", pool_json, "--percent", pct, "--mode", "images", "--seed", seed, "--out", split)
            for init in INITS:
                run = out / "ft" / f"p{pct:g}_s{seed}_{init}"
                metrics = run / "metrics_heldout.json"
                if not metrics.is_file():
                    t = time.time()
                    init_args = {"freesolo": ["--init", freesolo_model], "densecl": ["--init-backbone", densecl],
                                 "random": ["--init", "none"]}[init]
                    cli("finetune", "--train", split, "--images", pool / "images", "--out", run,
                        *init_args, "--preset", "small_r18", "--iters", a.iters, "--seed", seed, "--device", "cpu",
                        "--workers", 1, "--set", f"data.min_sizes=[{a.train_sizes}]", "--set", f"data.max_size={a.train_max}",
                        "--set", f"solver.warmup_iters={a.warmup}", "--lr", a.lr)
                    cli("predict", heldout / "images", "--model", run / "model_final.pth", "--out",
                        run / "pred_heldout.json", "--short-side", a.test_short, "--max-side", a.test_max, "--device", "cpu",
                        "--workers", 1)
                    cli("evaluate", "--gt", heldout / "annotations.json", "--pred", run / "pred_heldout.json",
                        "--out", run / "metrics_heldout_agnostic.json")
                    cli("evaluate", "--gt", heldout / "annotations.json", "--pred", run / "pred_heldout.json",
                        "--class-aware", "--out", metrics)
                    (run / "seconds.txt").write_text(f"{time.time() - t:.1f}\n")
                m = json.loads(metrics.read_text())
                ag = json.loads((run / "metrics_heldout_agnostic.json").read_text())
                rows.append({"percent": pct, "seed": seed, "init": init, "AP": m["AP"], "AP50": m["AP50"],
                             "agnostic_AP": ag["AP"], "seconds": float((run / "seconds.txt").read_text())})
    return rows


def summarise(rows: list[dict], percents, seeds) -> tuple[list[dict], str]:
    table = []
    lines = ["| labels | init | class-aware mask AP (mean ± sd) | AP50 (mean ± sd) | per seed AP | "
             "class-agnostic AP (mean ± sd) |", "|---|---|---|---|---|---|"]
    for pct in percents:
        for init in INITS:
            sel = [r for r in rows if r["percent"] == pct and r["init"] == init]
            if not sel:
                continue
            ap = [100 * r["AP"] for r in sel]
            ap50 = [100 * r["AP50"] for r in sel]
            ag = [100 * r["agnostic_AP"] for r in sel]
            sdag = statistics.stdev(ag) if len(ag) > 1 else 0.0
            sd = statistics.stdev(ap) if len(ap) > 1 else 0.0
            sd50 = statistics.stdev(ap50) if len(ap50) > 1 else 0.0
            table.append({"percent": pct, "init": init, "AP_mean": statistics.mean(ap), "AP_sd": sd,
                          "AP50_mean": statistics.mean(ap50), "AP50_sd": sd50, "seeds": [r["seed"] for r in sel],
                          "AP_per_seed": ap, "agnostic_AP_mean": statistics.mean(ag), "agnostic_AP_sd": sdag})
            lines.append(f"| {pct:g} % | {init} | {statistics.mean(ap):.1f} ± {sd:.1f} | "
                         f"{statistics.mean(ap50):.1f} ± {sd50:.1f} | {', '.join(f'{v:.1f}' for v in ap)} | "
                         f"{statistics.mean(ag):.1f} ± {sdag:.1f} |")
    return table, "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--pool", type=int, default=300, help="unlabeled pool images (also the label pool)")
    p.add_argument("--heldout", type=int, default=60, help="held-out images with ground truth")
    p.add_argument("--size", type=int, default=128, help="image side (px)")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--base-iters", type=int, default=150, help="FreeSOLO (self-supervised SOLO) iterations")
    p.add_argument("--iters", type=int, default=100, help="fine-tuning iterations (the same for every init)")
    p.add_argument("--warmup", type=int, default=20, help="fine-tuning LR warm-up iterations")
    p.add_argument("--lr", type=float, default=0.0025,
                   help="fine-tuning learning rate (4 images per iteration; 0.0025 is the rate the CPU FreeSOLO model "
                        "is trained at: 0.01 erased what it had learned, docs/finetune.md)")
    p.add_argument("--percents", type=float, nargs="+", default=[5.0, 10.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--stop-after", choices=["base"], default=None)
    p.add_argument("--pool-dir", help="an existing `unsolo synth` folder as the pool (default OUT/data/pool)")
    p.add_argument("--heldout-dir", help="an existing `unsolo synth` folder as the held-out split")
    p.add_argument("--backbone", help="an existing DenseCL backbone (with --base-model: skip the base stage)")
    p.add_argument("--base-model", help="an existing FreeSOLO model trained from --backbone on the pool")
    p.add_argument("--train-sizes", default="128,160,192", help="fine-tuning short sides (comma-separated)")
    p.add_argument("--train-max", type=int, default=320, help="fine-tuning longest side at most")
    p.add_argument("--test-short", type=int, default=160, help="held-out prediction short side")
    p.add_argument("--test-max", type=int, default=320, help="held-out prediction longest side at most")
    a = p.parse_args()
    import torch

    torch.set_num_threads(2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    densecl, freesolo_model = base_stage(out, a)
    print(f"base stage done after {time.time() - t0:.0f} s", flush=True)
    if a.stop_after == "base":
        return 0
    rows = finetune_stage(out, a, densecl, freesolo_model)
    table, md = summarise(rows, a.percents, a.seeds)
    result = {"args": vars(a), "rows": rows, "table": table, "wall_s": time.time() - t0}
    (out / "finetune_evidence.json").write_text(json.dumps(result, indent=1))
    (out / "finetune_evidence.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
