"""``unsolo demo``: the whole method on built-in synthetic scenes, evaluated stage by stage, with a report.

Generates an unlabeled training split and a held-out split with ground truth (``unsolo synth``), runs
``unsolo run`` with the ``demo`` preset (the CPU preset under a 14-minute time budget on 2 CPU cores),
evaluates the coarse masks and every SOLO round on the held-out split, and writes ``report.html``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from unsolo.engine.precision import cpu_has_native_bf16
from unsolo.errors import UnsoloError
from unsolo.pipeline.run import RunConfig, resolve_run_config, resolve_stages, run_pipeline
from unsolo.pipeline.predict import resolve_device

log = logging.getLogger("unsolo.demo")


@dataclass
class DemoConfig:
    train_images: int = 512  # unlabeled training split
    eval_images: int = 60  # held-out split with ground truth
    size: int = 192  # image side (px)
    seed: int = 0  # synthetic data seed (the held-out split uses seed + 1)
    run_preset: str = "demo"  # unsolo/configs/run/ (the cpu preset sized for the demo's budget)
    run_overrides: list[str] = field(default_factory=list)  # applied to the run preset
    time_budget: float | str | None = None  # the run's time_budget (None: the run preset's)


#: Named sizes: "quick" checks that everything runs (a minute or two), "default" shows the method working.
DEMO_SIZES: dict[str, dict] = {
    "default": {},
    "quick": {
        "train_images": 8,
        "eval_images": 3,
        "size": 96,
        "run_overrides": [
            "pretrain_overrides=[epochs=1,batch_size=8,queue_len=64,size=64,workers=0]",
            "train_overrides=[solver.max_iter=3,solver.ims_per_batch=2,solver.warmup_iters=1,data.workers=0,"
            "'data.min_sizes=[96]',data.max_size=160]",
            "generator_overrides=[short_side=192,max_size=320]",
            "test_short_side=96",
            "test_max_side=160",
            "workers=0",
            "time_budget=null",
        ],
    },
    # The smallest setting measured in which SOLO beats its coarse masks on 2 CPU cores (docs/ablations.md): 192 px
    # scenes, the CPU run preset (full DenseCL small_r18, Free Mask `small`), labels at maskness >= 0.7 and 900
    # iterations per round. About an hour on 2 CPU cores (88 minutes measured with other jobs on the cores): coarse
    # masks 4.0 AP / 8.9 AP50, round 0 6.1 / 12.0, round 1 5.5 / 12.9 (docs/results.md).
    "long": {
        "train_images": 512,
        "eval_images": 60,
        "size": 192,
        "run_preset": "cpu",
        "run_overrides": [
            # the cpu preset as it was when this demo was measured (it now uses Felzenszwalb's filtered segments,
            # no self-training round and inference at 256, chosen on real-object scenes)
            "generator=freemask", "generator_preset=small", "rounds=1", "test_short_side=224", "test_max_side=373",
            "generator_overrides=[maskness_threshold=0.7]",
            "train_overrides=[solver.max_iter=900,solver.checkpoint_period=300]",
        ],
    },
}


def demo(out: str | os.PathLike = "unsolo_demo", cfg: DemoConfig | None = None, device: str = "auto") -> dict:
    """Run the demo into ``out``; returns the ``run_pipeline`` summary (metrics per stage, report path)."""
    from unsolo.data.synthetic import generate

    cfg = cfg or DemoConfig()
    if cfg.train_images < 1 or cfg.eval_images < 1:
        raise UnsoloError(f"train_images and eval_images must be at least 1 (got {cfg.train_images}, {cfg.eval_images})")
    budget = [f"time_budget={cfg.time_budget}"] if cfg.time_budget is not None else []  # --time-budget wins
    run_cfg: RunConfig = resolve_run_config(cfg.run_preset, [*cfg.run_overrides, *budget])
    resolve_stages(run_cfg)  # every stage's settings checked before any scene is drawn
    out = Path(out)
    data = out / "data"
    splits = {"train": (cfg.train_images, cfg.seed), "heldout": (cfg.eval_images, cfg.seed + 1)}
    for name, (n, seed) in splits.items():
        if not (data / name / "annotations.json").is_file():
            log.info("[synth] %s split: %d images of %d px (seed %d)", name, n, cfg.size, seed)
            generate(data / name, num_images=n, size=cfg.size, seed=seed)
    if run_cfg.time_budget is not None and resolve_device(device).type == "cpu" and not cpu_has_native_bf16():
        log.warning("this CPU has no native bfloat16 (AMX / AVX512-BF16): the demo trains in float32 and its %s "
                    "budget affords about half the SOLO iterations it was sized for, so it may not beat its coarse "
                    "masks (docs/results.md); --time-budget 20m gives it about the same iterations", run_cfg.time_budget)
    return run_pipeline(
        data / "train" / "images",
        out / "run",
        run_cfg,
        gt=data / "heldout" / "annotations.json",
        eval_input=data / "heldout" / "images",
        device=device,
        report_title="unsolo demo: FreeSOLO on synthetic scenes",
    )
