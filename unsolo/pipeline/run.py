"""``unsolo run``: from a folder of images to a trained class-agnostic segmenter, the whole method in one call.

Stages, each writing into ``DIR`` and skipped when its output is complete (an interrupted run resumes where it
stopped; each stage also resumes inside itself: pre-training and training from their checkpoints, Free Mask from
its chunk files)::

    DIR/pretrain/backbone.pth        (1) DenseCL pre-training            (skipped with --backbone-weights)
    DIR/freemask/pseudo.json         (2) Free Mask coarse masks (or the ``generator`` chosen)
    DIR/round0/model_final.pth       (3) self-supervised SOLO on the coarse masks
    DIR/round0/pseudo_labels.json    (4) its confident predictions ...
    DIR/round1/model_final.pth           ... train round 1 on them (``rounds`` times)
    DIR/predictions.json             (5) the final model's predictions (on ``eval_input`` when given)
    DIR/metrics.json, DIR/report.html    with ground truth: every stage evaluated (coarse masks, round 0, 1, ...)

With ground truth (``gt``), every stage is scored on the evaluation images: the coarse masks by running Free Mask
on them (it needs no training), each round by its predictions.

Every stage's config is resolved before the first stage starts (:func:`resolve_stages`), so an unknown generator or
option key fails at once, with one line.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from unsolo.config import resolve, save_config
from unsolo.data.images import list_images
from unsolo.engine.budget import check_budget, share_of_budget
from unsolo.engine.precision import check_precision
from unsolo.errors import UnsoloError
from unsolo.generators import MaskGenerator, build_generator, get_generator
from unsolo.pipeline.pretrain import PretrainConfig
from unsolo.pipeline.pseudo_label import PseudoLabelConfig
from unsolo.pipeline.run_report import write_run_report
from unsolo.pipeline.train import TrainConfig, resolve_train_config
from unsolo.utils.dist import barrier, broadcast_object, distributed, get_world_size, is_main_process
from unsolo.utils.io import atomic_write, read_json, write_json

log = logging.getLogger("unsolo.run")


@dataclass
class RunConfig:
    """Which preset each stage uses, plus overrides; defaults = the paper's setting (ResNet-101 everywhere)."""

    arch: str = "resnet101"  # backbone of every stage (pre-training, Free Mask, SOLO)
    pretrain_preset: str = "densecl_r101"  # unsolo/configs/pretrain/
    pretrain_overrides: list[str] = field(default_factory=list)  # e.g. ["epochs=100"]; or --set pretrain.epochs=100
    generator: str = "freemask"  # stage-2 pseudo-mask generator: freemask (official) | maskcut | felzenszwalb
    generator_preset: str = "official"  # the generator's preset: unsolo/configs/<generator>/
    generator_overrides: list[str] = field(default_factory=list)  # ... and overrides of its config
    train_preset: str = "freesolo_r101"  # unsolo/configs/train/ (used for every round)
    train_overrides: list[str] = field(default_factory=list)
    rounds: int = 1  # self-training rounds after round 0 (paper: 1 helps, a 2nd does not)
    self_training_init: str = "backbone"  # "backbone": each round restarts from the pre-trained backbone (official);
    #                                       "previous": each round continues from the previous round's model
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)  # official self-training thresholds
    round_score_thrs: list[float] = field(default_factory=list)  # pseudo-label score threshold of each round's
    #                                 labels (after round 0, 1, ...; the last repeats); empty: pseudo_label.score_thr
    #                                 every round (official). CutLER lowers it round by round (0.7, then 0.65)
    merge_previous_labels: bool = False  # CutLER: keep each previous label that no new label overlaps (IoU > 0.5)
    test_short_side: int = 800  # inference resize (detectron2 MIN_SIZE_TEST)
    test_max_side: int = 1333  # inference resize (MAX_SIZE_TEST)
    batch_size: int = 1  # inference batch (Free Mask, pseudo-labels, predictions)
    workers: int = 2  # DataLoader workers of every stage
    vis_images: int = 6  # images shown in the report
    inference_precision: str = "auto"  # SOLO inference (evaluation, pseudo-labels, predictions): auto = bfloat16
    #   autocast on CPUs with native bf16, float32 elsewhere (engine/precision.py); float32 = exact
    time_budget: float | str | None = None  # wall time of the whole run (600, "15m", "1h"): pre-training and the
    #   generator run as configured; each SOLO round then trains for its share of what is left (solver.max_time),
    #   less what its inference steps (evaluation, pseudo-labels) are expected to take. None: iterations as set
    round_time_shares: list[float] = field(default_factory=list)  # relative shares of the rounds' training time
    #   (round 0, 1, ...; the last repeats); empty: equal shares


#: options renamed since: old name -> new name (the old ones are still accepted, with a one-line warning)
RENAMED_OPTIONS = {"freemask_preset": "generator_preset", "freemask_overrides": "generator_overrides"}

#: a stage's options as nested keys: `--set train.solver.max_iter=600` is appended to train_overrides, and so on
STAGE_OPTIONS = {"pretrain": "pretrain_overrides", "generator": "generator_overrides", "train": "train_overrides"}


def resolve_run_config(preset: str | None = None, overrides=(), extra: dict | None = None) -> RunConfig:
    return resolve(RunConfig, "run", preset, overrides, extra, renamed=RENAMED_OPTIONS, nested=STAGE_OPTIONS)


@dataclass
class StageConfigs:
    """Every stage's resolved config, known before the first stage starts."""

    pretrain: PretrainConfig  # DenseCL (used unless a backbone is given)
    generator: MaskGenerator  # stage 2, with its settings
    train: TrainConfig  # every SOLO round (the backbone / init checkpoint are set per round)


T = TypeVar("T")


def _resolved(options: str, build: Callable[[], T]) -> T:
    """``build()``, its one-line error prefixed with the run options it came from."""
    try:
        return build()
    except UnsoloError as e:
        raise UnsoloError(f"{options}: {e}") from None


def resolve_stages(cfg: RunConfig) -> StageConfigs:
    """Resolve every stage's config from the run config, and so validate it: an unknown generator, preset or option
    key fails here, in one line naming the run option, before any stage runs (not after a pre-training)."""
    if cfg.rounds < 0:
        raise UnsoloError("rounds must be >= 0")
    if cfg.self_training_init not in ("backbone", "previous"):
        raise UnsoloError("self_training_init must be 'backbone' or 'previous'")
    generator = _resolved("generator", lambda: get_generator(cfg.generator)).name
    _resolved("time_budget", lambda: check_budget(cfg.time_budget))
    _resolved("inference_precision", lambda: check_precision(cfg.inference_precision))
    if any(not (x > 0) for x in cfg.round_time_shares):
        raise UnsoloError(f"round_time_shares must be positive numbers, got {cfg.round_time_shares}")
    return StageConfigs(
        pretrain=_resolved("pretrain_preset / pretrain_overrides", lambda: resolve(
            PretrainConfig, "pretrain", cfg.pretrain_preset, cfg.pretrain_overrides, {"arch": cfg.arch})),
        generator=_resolved("generator_preset / generator_overrides", lambda: build_generator(
            generator, cfg.generator_preset, cfg.generator_overrides)),
        train=_resolved("train_preset / train_overrides", lambda: resolve_train_config(
            cfg.train_preset, cfg.train_overrides, {"model": {"arch": cfg.arch}})),
    )


def fit_pretrain_batch(pcfg: PretrainConfig, num_images: int, world: int = 1) -> PretrainConfig:
    """A folder with fewer images than a DenseCL batch (batches drop the remainder, so not one would be drawn): the
    batch becomes the images' count (rounded down to a multiple of the processes) and the queue, which must hold a
    whole number of batches, the largest such multiple not above its length. Said in one line; else ``pcfg``."""
    if num_images >= pcfg.batch_size:
        return pcfg
    batch = num_images // world * world
    if batch < 1:
        raise UnsoloError(f"pre-training needs at least one image per process: {num_images} images, {world} processes")
    queue = pcfg.queue_len if pcfg.queue_len % batch == 0 else max(batch, pcfg.queue_len // batch * batch)
    log.warning("[pretrain] %d images, fewer than a batch of %d: batch %d instead%s", num_images, pcfg.batch_size,
                batch, f", queue {queue} (a multiple of it)" if queue != pcfg.queue_len else "")
    return dataclasses.replace(pcfg, batch_size=batch, queue_len=queue)


def _done(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _stage(name: str, output: Path) -> bool:
    """Log whether a stage runs or is skipped (its output complete); True when it must run."""
    if _done(output):
        log.info("[%s] done already (%s), skipped", name, output)
        return False
    log.info("[%s] running -> %s", name, output)
    return True


def run_pipeline(
    source: str | os.PathLike,
    out: str | os.PathLike,
    cfg: RunConfig | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    eval_input: str | os.PathLike | None = None,
    device: str = "auto",
    report: bool = True,
    report_title: str = "unsolo run",
) -> dict:
    """Run the whole method on ``source`` (a folder of images or a COCO JSON + ``image_root``) into ``out``.

    Args:
        backbone_weights: a pre-trained backbone (DenseCL release layout, MoCo, torchvision): skips pre-training.
        gt: COCO ground truth of the evaluation images; enables per-stage evaluation, ``metrics.json`` and the
            report's table. ``eval_input``: the evaluation images (default: ``source``).
    Returns a summary with the paths of every output and, with ``gt``, the metrics of every stage.
    """
    cfg = cfg or RunConfig()
    with distributed(device):  # one process group for every stage under torchrun (each stage reuses it)
        return _run_pipeline(source, out, cfg, image_root, backbone_weights, gt, eval_input, device, report,
                             report_title)


def _run_pipeline(source, out, cfg: RunConfig, image_root, backbone_weights, gt, eval_input, device: str,
                  report: bool, report_title: str) -> dict:
    from unsolo.pipeline.freemask import FreeMaskRun, run_freemask
    from unsolo.pipeline.predict import predict
    from unsolo.pipeline.pretrain import pretrain
    from unsolo.pipeline.pseudo_label import pseudo_label
    from unsolo.pipeline.train import train

    main = is_main_process()
    stages = resolve_stages(cfg)  # every stage's config, validated before anything runs
    if backbone_weights is not None and not Path(backbone_weights).is_file():
        raise UnsoloError(f"backbone weights not found: {backbone_weights}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        save_config(cfg, out / "run_config.yaml")
    if gt is not None and not Path(gt).is_file():
        raise UnsoloError(f"ground truth not found: {gt}")
    eval_src = eval_input if eval_input is not None else source
    eval_root = None if eval_input is not None else image_root
    timings: dict[str, float] = {}
    metrics: dict[str, dict] = {}
    tic = time.time()

    # (1) DenseCL pre-training ------------------------------------------------------------------------------
    if backbone_weights is None:
        backbone = out / "pretrain" / "backbone.pth"
        if _stage("pretrain", backbone):
            pcfg = fit_pretrain_batch(stages.pretrain, len(list_images(source, image_root)), get_world_size())
            pretrain(source, out / "pretrain", pcfg, image_root=image_root, device=device)
        timings["pretrain"] = time.time() - tic
    else:
        backbone = Path(backbone_weights)

    # (2) pseudo-masks: Free Mask (or the generator chosen) -------------------------------------------------
    gen = stages.generator

    def freemask(src, root, dest: Path) -> None:
        if _stage("freemask", dest):
            run_freemask(FreeMaskRun(input=str(src), out=str(dest), weights=str(backbone), arch=cfg.arch,
                                     image_root=str(root) if root else None, batch_size=cfg.batch_size,
                                     workers=cfg.workers, device=device), gen)

    t = time.time()
    coarse = out / "freemask" / "pseudo.json"
    freemask(source, image_root, coarse)
    if not read_json(coarse, f"{gen.name} output")["annotations"]:
        hint = ("check the backbone weights, or lower maskness_threshold with "
                "--set generator.maskness_threshold=0.5") if gen.name == "freemask" else \
            "check the images and the generator's settings (generator_overrides)"
        raise UnsoloError(f"the {gen.name} generator found no object in any image ({coarse}); {hint}")
    if gt is not None:
        coarse_eval = coarse if eval_input is None else out / "freemask" / "eval_pseudo.json"
        freemask(eval_src, eval_root, coarse_eval)
        if main:
            metrics[f"coarse masks ({gen.label})"] = _evaluate(gt, coarse_eval)
    timings["freemask"] = time.time() - t

    # (3)-(4) SOLO rounds ------------------------------------------------------------------------------------
    labels = coarse
    model_path = None
    logs: dict[str, Path] = {}
    budget_s = check_budget(cfg.time_budget)
    inference_s = 0.5 * timings["freemask"] if budget_s is not None else 0.0  # first guess; measured after round 0
    for r in range(cfg.rounds + 1):
        t = time.time()
        rdir = out / f"round{r}"
        tcfg = copy.deepcopy(stages.train)
        if budget_s is not None:
            shares = [cfg.round_time_shares[min(k, len(cfg.round_time_shares) - 1)] if cfg.round_time_shares else 1.0
                      for k in range(r, cfg.rounds + 1)]
            share = share_of_budget(out / "time_plan.json", f"round {r}", budget_s - (time.time() - tic), shares,
                                    inference_s, is_main_process()) if is_main_process() else None
            tcfg.solver.max_time = broadcast_object(share)  # every process trains rank 0's share
        if r > 0 and cfg.self_training_init == "previous":
            tcfg.init_checkpoint = str(model_path)
            tcfg.backbone_weights = None
        else:
            tcfg.backbone_weights = str(backbone)
        model_path = rdir / "model_final.pth"
        trained_s = None
        if _stage(f"train round {r}", model_path):
            trained_s = train(tcfg, source, labels, rdir, image_root=image_root, device=device)["seconds"]
        logs[f"round {r}"] = rdir / "metrics.jsonl"
        if gt is not None:
            preds = rdir / "eval_predictions.json"
            if _stage(f"predict round {r}", preds):
                predict(eval_src, model_path, preds, image_root=eval_root, batch_size=cfg.batch_size, device=device,
                        short_side=cfg.test_short_side, max_side=cfg.test_max_side, workers=cfg.workers,
                        precision=cfg.inference_precision)
            if main:
                metrics[f"round {r}" + (" (SOLO on coarse masks)" if r == 0 else " (self-training)")] = _evaluate(gt, preds)
        last_round = r
        if r < cfg.rounds:
            previous = labels
            labels = rdir / "pseudo_labels.json"
            plcfg = round_pseudo_label_config(cfg, r)
            if _stage(f"pseudo-label round {r}", labels):
                pseudo_label(source, model_path, labels, plcfg, image_root=image_root,
                             batch_size=cfg.batch_size, device=device, short_side=cfg.test_short_side,
                             max_side=cfg.test_max_side, workers=cfg.workers, precision=cfg.inference_precision)
            if not read_json(labels, "pseudo-labels")["annotations"]:
                log.warning("round %d kept no prediction with score >= %.2f as a pseudo-label: self-training stops, "
                            "the round-%d model is the final one (train longer, or lower pseudo_label.score_thr)",
                            r, plcfg.score_thr, r)
                timings[f"round {r}"] = time.time() - t
                break
            if cfg.merge_previous_labels:
                merged = rdir / "pseudo_labels_merged.json"
                if _stage(f"merge labels round {r}", merged) and main:
                    from unsolo.data.coco import write_annotation_file
                    from unsolo.pipeline.pseudo_label import merge_with_previous

                    coco, kept = merge_with_previous(read_json(labels, "pseudo-labels"),
                                                     read_json(previous, "previous labels"))
                    write_annotation_file(merged, coco)
                    log.info("round %d labels: %d new + %d kept from the previous round -> %s", r,
                             len(coco["annotations"]) - kept, kept, merged)
                barrier()  # every process trains on the file rank 0 wrote
                labels = merged
        timings[f"round {r}"] = time.time() - t
        if trained_s is not None:  # what this round spent outside its training loop
            inference_s = max(timings[f"round {r}"] - trained_s, 0.0)

    # (5) final predictions ----------------------------------------------------------------------------------
    final = out / "predictions.json"
    if _stage("predict", final):
        last_eval = out / f"round{last_round}" / "eval_predictions.json"
        if _done(last_eval):  # already computed on the same images for the evaluation
            if main:
                data = last_eval.read_bytes()
                atomic_write(final, lambda f: f.write(data), mode="wb")
        else:
            predict(eval_src, model_path, final, image_root=eval_root, batch_size=cfg.batch_size, device=device,
                    short_side=cfg.test_short_side, max_side=cfg.test_max_side, workers=cfg.workers,
                        precision=cfg.inference_precision)

    summary = {
        "out": str(out),
        "backbone": str(backbone),
        "coarse_masks": str(coarse),
        "model": str(model_path),
        "rounds_trained": last_round + 1,
        "predictions": str(final),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    summary["main_process"] = main
    if not main:
        return summary
    if metrics:
        summary["metrics"] = metrics
        write_json(out / "metrics.json", metrics, indent=2)
    if report:
        summary["report"] = str(write_run_report(out, report_title, metrics, logs, gt, eval_src, eval_root, coarse,
                                                 final, cfg.vis_images, gen.label))
    write_json(out / "summary.json", summary, indent=2)
    return summary


def round_pseudo_label_config(cfg: RunConfig, r: int) -> PseudoLabelConfig:
    """The pseudo-label settings for the labels made after round ``r``: ``round_score_thrs[r]`` (the last value
    repeats) as the score threshold when given, else ``cfg.pseudo_label`` as it is."""
    import dataclasses

    if not cfg.round_score_thrs:
        return cfg.pseudo_label
    thr = cfg.round_score_thrs[min(r, len(cfg.round_score_thrs) - 1)]
    return dataclasses.replace(cfg.pseudo_label, score_thr=float(thr))


def _evaluate(gt, pred) -> dict:
    from unsolo.evaluation.coco_eval import evaluate

    res = evaluate(str(gt), str(pred), iou_type="segm")
    return {k: v for k, v in res["percent"].items() if v is not None}


def print_summary(summary: dict) -> None:
    """The end-of-run table (metrics per stage) and where the outputs are, on stdout."""
    from unsolo.utils.report import metrics_table_text

    if summary.get("metrics"):
        print(metrics_table_text(summary["metrics"]))
    print(f"model:       {summary['model']}")
    print(f"predictions: {summary['predictions']}")
    if "report" in summary:
        print(f"report:      {summary['report']}")
    print("time (s):    " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()))
