"""The real-object benchmark (issue 22): photographed cut-outs on photographs, the generators and SOLO on top.

Data: ``bench/real_objects_data.sh SEED DATA`` (600 training + 60 held-out scenes of 192 px from Debian's
``tuxpaint-stamps-default`` photo folders and ``opencv-doc``'s photographs; held-out objects never appear in the
training scenes). Every variant is one ``unsolo run`` (the Python API) on ``DATA/train/images``, scored stage by
stage on ``DATA/heldout`` with its ground truth: the generator's masks on the held-out images (for Felzenszwalb
that row *is* the classical baseline), SOLO round 0 and each self-training round. Nothing is read from the training
split's annotations.

Per data seed, DenseCL is pre-trained once (in ``WORK/_pretrain_s<seed>``, the run preset's DenseCL, bf16 where
the CPU has it) and shared by every variant; each generator's masks are made once and copied into each variant's
folder. ``--time-budget`` gives every variant's SOLO rounds the same wall time (``unsolo run --time-budget``: the
budget minus the shared stages' time, which each variant then spends on training).

    bench/real_objects_data.sh 0 data/ro_s0 && bench/real_objects_data.sh 1 data/ro_s1
    python bench/real_objects.py run --work runs/ro --data data/ro_s{seed} --seeds 0 1 --time-budget 20m \\
        --variants fz_objects fz_objects_r1
    python bench/real_objects.py table --work runs/ro         # Markdown: mean +- half-range, seconds per stage

The data seed is also the training seed of every stage (one seed = one data set + one training run). Results:
``WORK/<variant>_seed<s>/summary.json`` and ``WORK/results.json`` (one row per variant and seed, with the overrides
and the CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# the same Markdown table (mean +- half-range per variant and stage), mask sharing and results file
from generator_ablation import copy_masks, save_row, table
from train_wall import cpu_description

#: variant -> (generator, generator preset, run overrides, train overrides)
VARIANTS: dict[str, tuple[str, str, list[str], list[str]]] = {
    # the generators as they ship, SOLO with full-mask Dice (the cpu train preset)
    "freemask": ("freemask", "small", [], []),
    "maskcut": ("maskcut", "small", [], []),
    "fz": ("felzenszwalb", "small", [], []),
    # Felzenszwalb without fragments and background regions (the 'objects' preset), then SOLO
    "fz_objects": ("felzenszwalb", "objects", [], []),
    "fz_objects_r1": ("felzenszwalb", "objects", ["rounds=1"], []),
    "fz_objects_weak": ("felzenszwalb", "objects", [], ["model.loss.mask_loss=weak"]),
    "fz_objects_drop": ("felzenszwalb", "objects", [], ["model.loss.drop_loss_iou=0.01"]),
    "fz_objects_cutler": ("felzenszwalb", "objects", ["rounds=1", "round_score_thrs=[0.3]",
                                                      "merge_previous_labels=true"], ["model.loss.drop_loss_iou=0.01"]),
    "fz_span": ("felzenszwalb", "small", [], ["data.max_label_span=0.7"]),
    "freemask_weak": ("freemask", "small", [], ["model.loss.mask_loss=weak"]),
}


def shared_backbone(args, data: Path, seed: int) -> Path:
    """DenseCL pre-trained once per data seed (the run preset's pre-training), shared by every variant."""
    from unsolo.config import resolve
    from unsolo.data.images import list_images
    from unsolo.pipeline.pretrain import PretrainConfig, pretrain
    from unsolo.pipeline.run import fit_pretrain_batch, resolve_run_config

    run_cfg = resolve_run_config(args.preset, args.set)
    out = Path(args.work) / f"_pretrain_s{seed}"
    backbone = out / "backbone.pth"
    if not backbone.is_file():
        pcfg = resolve(PretrainConfig, "pretrain", run_cfg.pretrain_preset,
                       [*run_cfg.pretrain_overrides, f"seed={seed}"], {"arch": run_cfg.arch})
        images = data / "train" / "images"
        pcfg = fit_pretrain_batch(pcfg, len(list_images(images)))
        t0 = time.time()
        pretrain(images, out, pcfg, device="cpu")
        (out / "seconds.json").write_text(json.dumps({"seconds": round(time.time() - t0, 1)}))
    return backbone


def run_variant(args, name: str, seed: int) -> dict:
    from unsolo.pipeline.run import resolve_run_config, run_pipeline

    gen, gen_preset, run_over, train_over = VARIANTS[name]
    work = Path(args.work)
    data = Path(args.data.format(seed=seed))
    backbone = shared_backbone(args, data, seed)
    out = work / f"{name}_seed{seed}"
    base = resolve_run_config(args.preset, [])
    overrides = [f"generator={gen}", f"generator_preset={gen_preset}", "rounds=0", *run_over,
                 "train_overrides=" + json.dumps([*base.train_overrides, *train_over, *args.train_set, f"seed={seed}"]),
                 *args.set]
    if args.time_budget:
        overrides.append(f"time_budget={args.time_budget}")
    cfg = resolve_run_config(args.preset, overrides)
    shared = work / f"_{gen}_{gen_preset}_s{seed}"  # the generator's masks, shared by its variants
    copied = copy_masks(shared, out / "freemask")
    t0 = time.time()
    summary = run_pipeline(data / "train" / "images", out, cfg, backbone_weights=backbone,
                           gt=data / "heldout" / "annotations.json", eval_input=data / "heldout" / "images",
                           device="cpu", report=True, report_title=f"real objects: {name}, seed {seed}")
    copy_masks(out / "freemask", shared)
    seconds = dict(summary["seconds"])
    pre = backbone.parent / "seconds.json"
    if pre.is_file():
        seconds["pretrain (shared)"] = json.loads(pre.read_text())["seconds"]
    row = {"variant": name, "generator": gen, "generator_preset": gen_preset, "seed": seed,
           "rounds": cfg.rounds, "preset": args.preset, "overrides": overrides, "data": str(data),
           "metrics": summary.get("metrics", {}), "seconds": seconds, "generator_shared": copied,
           "wall_seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d"), **cpu_description()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run", "table"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--data", help="the data folder of each seed, '{seed}' filled in (bench/real_objects_data.sh)")
    ap.add_argument("--preset", default="cpu", help="run preset (unsolo/configs/run/; default cpu)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=["fz", "fz_objects"], help=f"any of: {', '.join(VARIANTS)}")
    ap.add_argument("--time-budget", help="wall time of each variant's run (e.g. 20m); default: iterations as set")
    ap.add_argument("--set", action="append", default=[], help="extra run override for every variant")
    ap.add_argument("--train-set", action="append", default=[], help="extra train override for every variant")
    args = ap.parse_args()
    work = Path(args.work)
    results = work / "results.json"
    rows = json.loads(results.read_text()) if results.is_file() else []
    if args.command == "run":
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if not args.data:
            raise SystemExit("run needs --data (e.g. data/ro_s{seed}, made by bench/real_objects_data.sh)")
        for seed in args.seeds:
            data = Path(args.data.format(seed=seed))
            if not (data / "heldout" / "annotations.json").is_file():
                raise SystemExit(f"{data}: no heldout/annotations.json; make it with bench/real_objects_data.sh {seed} {data}")
        work.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for name in args.variants:
                rows = save_row(results, run_variant(args, name, seed))
    print(table(rows))


if __name__ == "__main__":
    main()
