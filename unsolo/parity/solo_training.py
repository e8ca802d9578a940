"""The SOLO training step against the official FreeSOLO code: per-parameter gradients and a few SGD steps.

Inputs (``shared/parity/README.md``): ``solov2_grads_seed*.json`` holds, per parity image (one image per pass, the
Free Mask annotations as targets), the official total loss's gradient of every parameter (``norm``, ``sum``,
``absmax``, ``first8``) with the pairwise warm-up factor 1 and, under ``official_iter0``, at the official first
iteration (factor 1/1000); ``solov2_sgd3_seed*.json`` a 3-step SGD trajectory on one image (losses, global gradient
norm and the category bias at every step), with the optimiser settings written inside.

Parameter names: the official (detectron2) name of each of ours comes from
:func:`unsolo.compat.official.unmap_key`, the inverse of the checkpoint import's mapping, so that the one map of
the two layouts lives in one place.

Tolerances (defaults) are a few times the official code's own float32 noise, measured by the file's authors
against float64: norms within 2.2e-4 relative, ``first8`` within 1.2e-3 of the parameter's ``absmax``; sums cancel
(up to 26 % of the norm in float32) and are compared relative to the norm.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from unsolo.compat.official import unmap_key
from unsolo.data.coco import decode_segmentation
from unsolo.data.images import load_image
from unsolo.errors import UnsoloError

GRAD_NORM_RTOL = 1e-3  # |norm - norm_official| / norm_official
GRAD_FIRST8_TOL = 5e-3  # max |first8 - first8_official| / absmax_official
GRAD_SUM_TOL = 0.3  # |sum - sum_official| / norm_official (float32 sums cancel)
TRAJ_RTOL = 1e-3  # losses, total loss and gradient norm of every step, relative ...
TRAJ_NOISE_FACTOR = 3.0  # ... or this many times the official run's own float32-vs-float64 difference, if larger

#: parameter groups of the summary: official-name prefix -> group
GROUPS = (
    ("backbone.bottom_up.", "backbone"),
    ("backbone.fpn_", "fpn"),
    ("ins_head.cate_", "ins_head.cate"),
    ("ins_head.kernel_", "ins_head.kernel"),
    ("ins_head.emb_", "ins_head.emb"),
    ("mask_head.", "mask_head"),
)


def group_of(official_name: str) -> str:
    return next((g for prefix, g in GROUPS if official_name.startswith(prefix)), "other")


def official_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Our trainable parameters under their official (detectron2) names."""
    return {unmap_key(name): p for name, p in model.named_parameters() if p.requires_grad}


def parity_targets(coco: dict, file_name: str, height: int, width: int, num_embs: int = 128) -> dict:
    """The README's loss targets for one image: Free Mask masks, class 0, their ``emb``, tight XYXY boxes +1."""
    img = next((im for im in coco["images"] if im["file_name"] == file_name), None)
    anns = [a for a in coco["annotations"] if img is not None and a["image_id"] == img["id"]]
    masks = np.stack([decode_segmentation(a["segmentation"], height, width).astype(bool) for a in anns]) if anns \
        else np.zeros((0, height, width), bool)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {
        "masks": torch.from_numpy(masks),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(anns), dtype=torch.int64),
        "embs": torch.tensor([a.get("emb") or [0.0] * num_embs for a in anns], dtype=torch.float32).reshape(-1, num_embs),
    }


def parity_item(images_dir, name: str, targets: dict, num_embs: int) -> dict:
    """One training input as the official files were made: the RGB image as float 0-255, no resize, the Free Mask
    annotations of that image as targets (class 0, their ``emb``, tight boxes)."""
    img = load_image(Path(images_dir) / name)
    h, w = img.shape[:2]
    return {"image": torch.from_numpy(np.array(img)).permute(2, 0, 1).float(),
            "instances": parity_targets(targets, name, h, w, num_embs), "orig_size": (h, w)}


def official_total(losses: dict[str, torch.Tensor], order) -> torch.Tensor:
    """``sum(loss_dict.values())`` as the official trainer adds them: a Python sum from 0, in its key order."""
    missing = [k for k in order if k not in losses]
    if missing:
        raise UnsoloError(f"the official loss terms {missing} have no counterpart here")
    total = 0
    for k in order:
        total = total + losses[k]
    return total


def training_forward(model, item: dict, iter_before: float) -> dict[str, torch.Tensor]:
    """One training forward with the pairwise warm-up counter set to ``iter_before`` (it is incremented before it
    is read: 1000 gives the factor 1, 0 the official first iteration's 1/1000)."""
    model._iter.fill_(float(iter_before))
    return model([item])


def _grad_record(g: torch.Tensor | None, shape) -> dict:
    if g is None:
        g = torch.zeros(shape)
    g64 = g.detach().double()
    flat = g64.flatten()
    return {"norm": float(flat.norm()), "sum": float(flat.sum()), "absmax": float(flat.abs().max()) if flat.numel() else 0.0,
            "first8": flat[:8].tolist()}


def compare_grad_records(ours: dict, official: dict) -> dict:
    """Relative differences of one parameter's gradient summary."""
    n_off, a_off = float(official["norm"]), float(official["absmax"])
    if n_off == 0.0:  # the official gradient is exactly zero (the zeroed embedding loss): ours must be too
        return {"norm": ours["norm"], "first8": ours["absmax"], "sum": abs(ours["sum"]), "zero_expected": True}
    f8 = max(abs(a - b) for a, b in zip(ours["first8"], official["first8"])) / max(a_off, 1e-30)
    return {"norm": abs(ours["norm"] - n_off) / n_off, "first8": f8, "sum": abs(ours["sum"] - float(official["sum"])) / n_off}


def compare_gradients(model, images_dir, expected: dict, targets: dict, *, images=None, with_iter0: bool = True,
                      norm_rtol=GRAD_NORM_RTOL, first8_tol=GRAD_FIRST8_TOL, sum_tol=GRAD_SUM_TOL) -> dict:
    """Every parameter's gradient of the official total loss, per image, against ``expected`` (grads file).

    ``images``: the image names to check (default: all of the file); ``with_iter0``: also the records at the
    official first iteration (``official_iter0``) where the file has them.
    """
    model.cfg.loss.emb_loss_official_zero = True  # the released code returns 0 * sum(emb)
    model.train()
    params = official_parameters(model)
    recs = expected["images"]
    names = list(images or sorted(recs))
    unknown = [n for n in names if n not in recs]
    if unknown:
        raise UnsoloError(f"the gradients file has no record of {unknown[0]}")
    groups: dict[str, dict] = {}
    per_image: dict[str, dict] = {}
    failures: list[str] = []
    for name in names:
        rec = recs[name]
        item = parity_item(images_dir, name, targets, model.cfg.num_embs)
        passes = [("factor1", 1000.0, rec)]
        if with_iter0 and rec.get("official_iter0"):
            passes.append(("iter0", 0.0, rec["official_iter0"]))
        for tag, iter_before, exp in passes:
            off_names = set(exp["grads"])
            missing_here, missing_there = sorted(off_names - set(params)), sorted(set(params) - off_names)
            if missing_here or missing_there:
                raise UnsoloError(f"parameters differ from the official model: {len(missing_here)} official without "
                                    f"a counterpart (e.g. {missing_here[:1]}), {len(missing_there)} of ours not in the "
                                    f"file (e.g. {missing_there[:1]})")
            model.zero_grad(set_to_none=True)
            losses = training_forward(model, item, iter_before)
            total = official_total(losses, rec.get("loss_keys_summed") or list(exp["losses"]))
            total.backward()
            loss_diff = max(abs(float(losses[k].detach()) - v) / max(abs(v), 1e-12) if v else abs(float(losses[k].detach()))
                            for k, v in exp["losses"].items())
            worst = {"norm": 0.0, "first8": 0.0, "sum": 0.0}
            for pname, off in exp["grads"].items():
                p = params[pname]
                d = compare_grad_records(_grad_record(p.grad, p.shape), off)
                g = groups.setdefault(group_of(pname), {"params": set(), "norm": 0.0, "first8": 0.0, "sum": 0.0,
                                                        "worst_param": None})
                g["params"].add(pname)
                for k in ("norm", "first8", "sum"):
                    if d[k] > g[k]:
                        g[k] = d[k]
                        if k == "norm":
                            g["worst_param"] = pname
                    worst[k] = max(worst[k], d[k])
                tol = {"norm": norm_rtol, "first8": first8_tol, "sum": sum_tol}
                if d.get("zero_expected"):
                    tol = {"norm": 0.0, "first8": 0.0, "sum": 0.0}
                bad = [k for k in tol if d[k] > tol[k]]
                if bad:
                    failures.append(f"{name} {tag} {pname}: " + ", ".join(f"{k} {d[k]:.3g}" for k in bad))
            per_image.setdefault(name, {})[tag] = {"max_loss_rel_diff": loss_diff, **{f"max_{k}": v for k, v in worst.items()},
                                                   "total_loss": float(total.detach()), "official_total": exp["total_loss"]}
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"ok": not failures, "tolerances": {"norm_rtol": norm_rtol, "first8_of_absmax": first8_tol,
                                               "sum_of_norm": sum_tol},
            "groups": {k: {**g, "params": len(g["params"])} for k, g in sorted(groups.items())}, "images": per_image, "failures": failures[:20],
            "num_failures": len(failures), "num_parameters": len(params)}


def sgd_param_groups(model, settings: dict) -> list[dict]:
    """The official optimiser's groups: weight decay on every parameter except GroupNorm's (``weight_decay_norm``)."""
    from unsolo.engine.schedule import param_groups

    return param_groups(model, float(settings["weight_decay"]), float(settings.get("weight_decay_norm", 0.0)))


def run_trajectory(model, item: dict, settings: dict, steps: int, order, dtype=torch.float32) -> list[dict]:
    """``steps`` SGD steps on one input from the model's current weights (pairwise factor 1 throughout); the record
    of each forward ``0..steps`` as the official file writes it."""
    model.to(dtype)
    if dtype != torch.float32:
        item = {**item, "image": item["image"].to(dtype)}
    opt = torch.optim.SGD(sgd_param_groups(model, settings), lr=float(settings["lr"]),
                          momentum=float(settings["momentum"]), dampening=float(settings.get("dampening", 0.0)),
                          nesterov=bool(settings.get("nesterov", False)))
    bias = model.ins_head.cate_pred.bias
    model._iter.fill_(1000.0)
    out = []
    for step in range(steps + 1):
        losses = model([item])
        total = official_total(losses, order)
        rec = {"step": step, "losses": {k: float(v.detach()) for k, v in losses.items()}, "total_loss": float(total.detach()),
               "cate_pred_bias_before_update": bias.detach().tolist()}
        if step < steps:
            opt.zero_grad(set_to_none=True)
            total.backward()
            grads = [p.grad.detach().double() for p in model.parameters() if p.grad is not None]
            rec["grad_global_l2"] = float(torch.sqrt(sum((g * g).sum() for g in grads)))
            rec["cate_pred_bias_grad"] = bias.grad.detach().tolist()
            opt.step()
        out.append(rec)
    return out


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12) if b else abs(a)


def _twin_noise(run: dict, runs: dict) -> list[dict]:
    """Per step and quantity, how far the official float32 run is from its float64 twin (same lr) in the file:
    the official code's own float32 noise along that trajectory; empty without a twin."""
    twin = next((r for r in runs.values() if r.get("dtype") == "float64" and r.get("lr") == run["lr"]), None)
    if twin is None or run.get("dtype", "float32") != "float32":
        return []
    noise = []
    for a, b in zip(run["trajectory"], twin["trajectory"]):
        n = {k: _rel(v, b["losses"][k]) for k, v in a["losses"].items() if k in b["losses"]}
        n["total_loss"] = _rel(a["total_loss"], b["total_loss"])
        if "grad_global_l2" in a and "grad_global_l2" in b:
            n["grad_global_l2"] = _rel(a["grad_global_l2"], b["grad_global_l2"])
        noise.append(n)
    return noise


def compare_trajectory(model, images_dir, expected: dict, targets: dict, rtol=TRAJ_RTOL, runs=None,
                       noise_factor=TRAJ_NOISE_FACTOR) -> dict:
    """The official SGD trajectory (``trajectory``, plus the float32 ``extra_runs`` named in ``runs``; default:
    every float32 run of the file) from the checkpoint's weights, step by step.

    Each step's losses, total and global gradient norm must agree within ``rtol`` relative, or within
    ``noise_factor`` times the official float32 run's own distance from its float64 twin where the file has one
    (an overshooting run amplifies float32 rounding: at lr 0.01 the official pairwise term moves by 1e-3 at step 2).
    """
    model.cfg.loss.emb_loss_official_zero = True
    model.train()
    settings = expected["settings"]
    item = parity_item(images_dir, expected["image"], targets, model.cfg.num_embs)
    all_runs = {"trajectory": {"lr": settings["lr"], "dtype": "float32", "trajectory": expected["trajectory"]},
                **(expected.get("extra_runs") or {})}
    to_check = {name: run for name, run in all_runs.items()
                if name == "trajectory" or (run.get("dtype", "float32") == "float32" if runs is None else name in runs)}
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    results, ok = {}, True
    for name, run in to_check.items():
        model.load_state_dict(initial)
        exp = run["trajectory"]
        noise = _twin_noise(run, all_runs)
        dtype = torch.float64 if run.get("dtype") == "float64" else torch.float32
        order = list(exp[0]["losses"])
        ours = run_trajectory(model, item, {**settings, "lr": run["lr"]}, len(exp) - 1, order, dtype)
        model.to(torch.float32)
        steps, worst, run_ok = [], 0.0, len(ours) == len(exp)
        for i, (o, e) in enumerate(zip(ours, exp)):
            d = {k: _rel(o["losses"][k], v) for k, v in e["losses"].items()}
            d["total_loss"] = _rel(o["total_loss"], e["total_loss"])
            if "grad_global_l2" in e:
                d["grad_global_l2"] = _rel(o["grad_global_l2"], e["grad_global_l2"])
            if "cate_pred_bias_before_update" in e:  # absolute (the bias is of order 1)
                d["cate_pred_bias"] = max(abs(a - b) for a, b in zip(o["cate_pred_bias_before_update"],
                                                                    e["cate_pred_bias_before_update"]))
            tol = {k: max(rtol, noise_factor * noise[i].get(k, 0.0)) if i < len(noise) else rtol for k in d}
            bad = [k for k in d if not d[k] <= tol[k]]
            run_ok &= not bad and math.isfinite(o["total_loss"])
            worst_term = max(d, key=d.get)
            worst = max(worst, d[worst_term])
            steps.append({"step": e["step"], "total_loss": o["total_loss"], "official_total": e["total_loss"],
                          "max_rel_diff": d[worst_term], "worst_term": worst_term,
                          "tolerance_of_worst": tol[worst_term], "outside_tolerance": bad})
        ok &= run_ok
        results[name] = {"ok": run_ok, "lr": run["lr"], "dtype": run.get("dtype", "float32"), "max_rel_diff": worst,
                         "float64_twin": bool(noise), "steps": steps}
    model.load_state_dict(initial)
    model.eval()
    return {"ok": ok, "rtol": rtol, "noise_factor": noise_factor, "image": expected["image"], "runs": results}
