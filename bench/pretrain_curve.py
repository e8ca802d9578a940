"""What CPU pre-training buys (issue 22): Free Mask and MaskCut on held-out real-object scenes against DenseCL
wall minutes, one DenseCL run resumed leg by leg.

    bench/real_objects_data.sh 0 data/ro_s0
    python bench/pretrain_curve.py --data data/ro_s0 --work runs/curve_s0 --minutes 10 30 90

Point 0 is a random-init ResNet (BatchNorm statistics calibrated on the training images, as in
``pretrain_evidence.py``). Then DenseCL (``--preset``, default ``small_r18``: the cpu run preset's, bf16 where the
CPU has it) trains on ``DATA/train/images``: first ``--first-epochs`` epochs (default 40, the run preset's
length), then each leg resumes the same run with more epochs, chosen from the rate measured so far so that the
cumulative wall time reaches the next of ``--minutes``. More epochs extend the per-iteration cosine schedule, so
each resumed leg warms the learning rate back up from where the longer cosine stands: the points are one resumed
run, as a user would extend it, not independent runs of each length. After each leg the backbone is scored by
each ``--generator`` (its ``small`` preset) on ``DATA/heldout`` against its ground truth.

Every step is skipped when its output exists (the legs resume, the scored backbones are kept as
``WORK/backbone_e<epochs>.pth``), so the script can be re-run after an interruption; a leg interrupted and resumed
counts only its time after the restart. Results: ``WORK/results.json`` (one row per point and generator, with the
CPU), ``WORK/curve.png`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from generator_quality import score_generator
from pretrain_evidence import random_backbone
from train_wall import cpu_description

from unsolo.utils.io import atomic_write


def score(generator: str, weights: Path, arch: str, data: Path, out: Path) -> dict:
    """The generator's masks (its ``small`` preset) on the held-out images with these weights, scored."""
    from unsolo.generators import build_generator

    r, _ = score_generator(build_generator(generator, "small", []), str(data / "heldout" / "images"),
                           str(data / "heldout" / "annotations.json"), out, str(weights), arch)
    return {k: r[k] for k in ("AP", "AP50", "AR10", "AR100")}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for gen in sorted({r["generator"] for r in rows}):
        pts = sorted((r["minutes"], r["AP50"], r["AR100"]) for r in rows if r["generator"] == gen)
        for ax, k in zip(axes, (1, 2)):
            ax.plot([p[0] for p in pts], [p[k] for p in pts], "o-", label=gen)
    for ax, name in zip(axes, ("AP50", "AR100")):
        ax.set_xlabel("DenseCL wall minutes (0 = random init)")
        ax.set_ylabel(f"held-out mask {name}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("What CPU pre-training buys on real-object scenes", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a folder made by bench/real_objects_data.sh")
    ap.add_argument("--work", required=True)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 90], help="cumulative DenseCL wall minutes")
    ap.add_argument("--first-epochs", type=int, default=40)
    ap.add_argument("--preset", default="small_r18", help="pretrain preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="pretrain override (e.g. size=128)")
    ap.add_argument("--generator", action="append", choices=["freemask", "maskcut"],
                    help="the backbone's generator(s) to score (default both)")
    args = ap.parse_args()

    from unsolo.config import resolve
    from unsolo.data.images import list_images
    from unsolo.pipeline.pretrain import PretrainConfig, pretrain
    from unsolo.pipeline.run import fit_pretrain_batch

    data, work = Path(args.data), Path(args.work)
    images = data / "train" / "images"
    if not (data / "heldout" / "annotations.json").is_file():
        raise SystemExit(f"{data}: no heldout/annotations.json; make it with bench/real_objects_data.sh")
    work.mkdir(parents=True, exist_ok=True)
    generators = args.generator or ["freemask", "maskcut"]
    base = [*args.set, f"seed={args.seed}"]
    cfg = resolve(PretrainConfig, "pretrain", args.preset, base)
    n_images = len(list_images(images))
    iters_per_epoch = n_images // fit_pretrain_batch(cfg, n_images).batch_size
    legs_path, results = work / "legs.json", work / "results.json"
    legs = json.loads(legs_path.read_text()) if legs_path.is_file() else []  # [{epochs, seconds}], cumulative
    rows = json.loads(results.read_text()) if results.is_file() else []

    def record(epochs: int, minutes: float, weights: Path) -> None:
        nonlocal rows
        for gen in generators:
            if any(r["epochs"] == epochs and r["generator"] == gen for r in rows):
                continue
            t0 = time.time()
            metrics = score(gen, weights, cfg.arch, data, work / f"{gen}_e{epochs}.json")
            row = {"generator": gen, "epochs": epochs, "iterations": epochs * iters_per_epoch,
                   "minutes": round(minutes, 2), **metrics, "score_seconds": round(time.time() - t0, 1),
                   "preset": args.preset, "overrides": base, "data": str(data), "date": time.strftime("%Y-%m-%d"),
                   **cpu_description()}
            print(json.dumps(row), flush=True)
            rows = [*rows, row]
            atomic_write(results, lambda f: json.dump(rows, f, indent=1))
        plot(rows, work / "curve.png")

    rand = work / "backbone_e0.pth"
    if not rand.is_file():
        random_backbone(cfg.arch, images, rand, cfg.size, cfg.seed)
    record(0, 0.0, rand)

    targets = [None, *args.minutes]  # None: the first leg, --first-epochs
    for i, target in enumerate(targets):
        if i < len(legs):  # trained already: scored unless its rows exist
            record(legs[i]["epochs"], legs[i]["seconds"] / 60, work / f"backbone_e{legs[i]['epochs']}.pth")
            continue
        done_s = legs[-1]["seconds"] if legs else 0.0
        done_e = legs[-1]["epochs"] if legs else 0
        if target is None:
            epochs = args.first_epochs
        else:
            rate = done_s / done_e  # seconds per epoch, measured on the legs so far
            epochs = max(done_e + 1, round(target * 60 / rate))
        t0 = time.time()
        pretrain(images, work / "pretrain", fit_pretrain_batch(resolve(PretrainConfig, "pretrain", args.preset,
                                                                       [*base, f"epochs={epochs}"]), n_images),
                 device="cpu")
        legs.append({"epochs": epochs, "seconds": round(done_s + time.time() - t0, 1)})
        atomic_write(legs_path, lambda f: json.dump(legs, f, indent=1))
        weights = work / f"backbone_e{epochs}.pth"
        shutil.copyfile(work / "pretrain" / "backbone.pth", weights)
        record(epochs, legs[-1]["seconds"] / 60, weights)

    print(f"| DenseCL epochs | iterations | wall minutes | {' | '.join(f'{g} AP / AP50 / AR100' for g in generators)} |")
    print("|---" * (3 + len(generators)) + "|")
    for e in sorted({r["epochs"] for r in rows}):
        rs = {r["generator"]: r for r in rows if r["epochs"] == e}
        first = next(iter(rs.values()))
        cells = [f"{rs[g]['AP']:.1f} / {rs[g]['AP50']:.1f} / {rs[g]['AR100']:.1f}" if g in rs else "" for g in generators]
        print(f"| {e} | {first['iterations']} | {first['minutes']:.1f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
