"""Beyond FreeSOLO, measured: pseudo-mask generator x DropLoss x self-training rounds, on held-out scenes.

Every variant is one ``unsolo run`` (the Python API, :func:`unsolo.pipeline.run.run_pipeline`) on the same training
images, with the same pre-trained backbone (``--backbone``, so pre-training is shared), scored stage by stage on
the same held-out images with their ground truth: the generator's masks (for Felzenszwalb that row *is* the
classical baseline), SOLO round 0, and each self-training round. The generator's output does not depend on the
SOLO switches, so it is computed once per generator and copied into each variant's folder (the run then skips
the stage).

Axes (``VARIANTS`` below): generator {freemask, maskcut, felzenszwalb} x DropLoss {off, IoU 0.01} x rounds (one
run with ``--rounds R`` reports rounds 0..R) x CutLER's round rules (thresholds 0.7 then 0.65 and kept old labels)
where named; the SOLO training seed varies over ``--seeds``.

    python bench/generator_ablation.py run --work runs/genabl --data runs/demo0/data \\
        --backbone runs/demo0/run/pretrain/backbone.pth --preset demo --rounds 1 --seeds 0 1 \\
        --variants freemask freemask_drop felzenszwalb felzenszwalb_drop maskcut maskcut_drop
    python bench/generator_ablation.py table --work runs/genabl        # Markdown: mean +- spread, seconds per stage

``--data`` holds ``train/images`` (no labels are read from it) and ``heldout/images`` + ``heldout/annotations.json``
(``unsolo synth``, or ``unsolo demo``'s ``data/`` folder). Results: ``WORK/<variant>_seed<s>/summary.json``
(metrics and seconds of every stage) and ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

#: variant -> (generator, extra run overrides, extra train overrides)
VARIANTS: dict[str, tuple[str, list[str], list[str]]] = {}
for _gen in ("freemask", "maskcut", "felzenszwalb"):
    VARIANTS[_gen] = (_gen, [], [])
    VARIANTS[f"{_gen}_drop"] = (_gen, [], ["model.loss.drop_loss_iou=0.01"])
    VARIANTS[f"{_gen}_cutler"] = (_gen, ["round_score_thrs=[0.7,0.65]", "merge_previous_labels=true"],
                                  ["model.loss.drop_loss_iou=0.01"])
GENERATOR_PRESETS = {"freemask": "small", "maskcut": "small", "felzenszwalb": "small"}
METRICS = ("AP", "AP50", "AR100")


def copy_masks(src: Path, dst: Path) -> bool:
    """Copy a generator's masks (``pseudo.json``, ``eval_pseudo.json``) from ``src`` to ``dst`` where ``dst`` lacks
    them; True when any was copied. Shares one generator's output between the variants and seeds that use it."""
    copied = False
    for f in ("pseudo.json", "eval_pseudo.json"):
        if (src / f).is_file() and not (dst / f).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, dst / f)
            copied = True
    return copied


def save_row(results: Path, row: dict) -> list[dict]:
    """Put ``row`` into ``results`` (a JSON list), replacing the row of the same variant and seed; atomic. Re-reads
    the file first: another process (a second lane on the same work folder) may have added rows meanwhile."""
    rows = json.loads(results.read_text()) if results.is_file() else []
    rows = [r for r in rows if (r["variant"], r["seed"]) != (row["variant"], row["seed"])] + [row]
    tmp = results.with_name(f".results.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(results)
    return rows


def run_variant(args, name: str, seed: int) -> dict:
    from unsolo.pipeline.run import resolve_run_config, run_pipeline

    gen, run_over, train_over = VARIANTS[name]
    work, data = Path(args.work), Path(args.data)
    out = work / f"{name}_seed{seed}"
    base = resolve_run_config(args.preset, [])
    overrides = [f"generator={gen}", f"generator_preset={GENERATOR_PRESETS[gen]}", f"rounds={args.rounds}", *run_over,
                 "train_overrides=" + json.dumps([*base.train_overrides, *train_over, *args.train_set, f"seed={seed}"]),
                 "generator_overrides=" + json.dumps(args.generator_set.get(gen, [])), *args.set]
    cfg = resolve_run_config(args.preset, overrides)
    # the generator's masks (training and held-out images) are shared by every variant and seed of that generator
    shared = work / f"_{gen}"
    copied = copy_masks(shared, out / "freemask")
    t0 = time.time()
    summary = run_pipeline(data / "train" / "images", out, cfg, backbone_weights=args.backbone,
                           gt=data / "heldout" / "annotations.json", eval_input=data / "heldout" / "images",
                           device="cpu", report=False)
    copy_masks(out / "freemask", shared)
    row = {"variant": name, "generator": gen, "seed": seed, "rounds": args.rounds, "preset": args.preset,
           "overrides": overrides, "metrics": summary.get("metrics", {}), "seconds": summary["seconds"],
           "generator_shared": copied,
           "wall_seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(row), flush=True)
    return row


def _stage_key(stage: str) -> str:
    return "generator" if stage.startswith("coarse masks") else stage.split(" (")[0]


def table(rows: list[dict]) -> str:
    """Mean +- half the range over seeds, per variant and stage; seconds: mean wall time of the stage."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    secs: dict[tuple[str, str], list[float]] = {}
    order: list[tuple[str, str]] = []
    seeds: dict[str, int] = {}
    for r in rows:
        seeds[r["variant"]] = seeds.get(r["variant"], 0) + 1
    for r in rows:
        for stage, m in r["metrics"].items():
            key = (r["variant"], _stage_key(stage))
            if key not in cells:
                order.append(key)
            c = cells.setdefault(key, {k: [] for k in METRICS})
            for k in METRICS:
                c[k].append(float(m.get(k, 0.0)))
        for stage, s in r["seconds"].items():
            if stage == "freemask" and r.get("generator_shared"):
                continue  # masks copied from the variant that made them: its row has the time
            secs.setdefault((r["variant"], "generator" if stage == "freemask" else stage), []).append(s)
        trained = sum(1 for stage in r["metrics"] if stage.startswith("round "))  # = rounds_trained with gt
        for k in range(trained, r["rounds"] + 1):
            key = (r["variant"], f"round {k}")
            if key not in cells:
                order.append(key)
                cells[key] = {m: [] for m in METRICS}

    def fmt(v: list[float]) -> str:
        mean = statistics.fmean(v)
        return f"{mean:.1f}" if len(v) == 1 else f"{mean:.1f} ± {(max(v) - min(v)) / 2:.1f}"

    lines = ["| variant | stage | seeds | AP | AP50 | AR100 | seconds |", "|---|---|---|---|---|---|---|"]
    for key in order:
        c = cells[key]
        s = secs.get(key)
        if not c["AP"]:
            lines.append(f"| `{key[0]}` | {key[1]} | | not run: the previous round kept no confident prediction | | | |")
            continue
        n = f"{len(c['AP'])}" if len(c["AP"]) == seeds[key[0]] else \
            f"{len(c['AP'])} of {seeds[key[0]]} (not run for the others: no confident prediction)"
        lines.append(f"| `{key[0]}` | {key[1]} | {n} | {fmt(c['AP'])} | {fmt(c['AP50'])} | {fmt(c['AR100'])} | "
                     + (f"{statistics.fmean(s):.0f} |" if s else "shared |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run", "table"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--data", help="folder with train/images and heldout/{images,annotations.json}")
    ap.add_argument("--backbone", help="pre-trained backbone shared by every variant")
    ap.add_argument("--preset", default="demo", help="run preset (unsolo/configs/run/)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=["freemask", "freemask_drop", "felzenszwalb", "felzenszwalb_drop"],
                    help=f"any of: {', '.join(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], help="extra run override for every variant")
    ap.add_argument("--train-set", action="append", default=[], help="extra train override for every variant")
    ap.add_argument("--generator-set", action="append", default=[], metavar="GEN:KEY=VALUE",
                    help="generator override, e.g. felzenszwalb:min_score=0.3")
    args = ap.parse_args()
    gsets: dict[str, list[str]] = {}
    for item in args.generator_set:
        gen, sep, kv = item.partition(":")
        if not sep or gen not in GENERATOR_PRESETS:
            raise SystemExit(f"--generator-set {item!r}: expected GEN:KEY=VALUE with GEN one of {', '.join(GENERATOR_PRESETS)}")
        gsets.setdefault(gen, []).append(kv)
    args.generator_set = gsets
    work = Path(args.work)
    results = work / "results.json"
    rows = json.loads(results.read_text()) if results.is_file() else []
    if args.command == "run":
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        work.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for name in args.variants:
                rows = save_row(results, run_variant(args, name, seed))
    print(table(rows))


if __name__ == "__main__":
    main()
