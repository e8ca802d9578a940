"""CPU-time breakdown of one ``unsolo train`` iteration at the demo scale, phase by phase.

Generates synthetic scenes (``unsolo.data.synthetic.generate``, 128 px by default), builds the training views
exactly as the loop does (weak + strong view per image, copy-paste into the strong views), and times with
``time.process_time()`` (CPU seconds of this process, all threads: insensitive to other jobs on the machine):

* ``data``: the DataLoader work of one batch (decode, resize, flip, strong view) done in this process;
* ``copy_paste``; ``network``: backbone + FPN + heads forward; ``targets``: target assignment + colour similarity;
* ``losses``: the loss terms from the predictions and targets; ``backward``; ``optimizer``: the SGD step.

Prints one JSON line with the mean CPU seconds per phase over ``--iters`` iterations (after ``--warmup``), the
per-iteration total and the number of mask targets (positive cells) per iteration. ``--cprofile N`` prints the
N most expensive functions of the timed iterations (cumulative) instead of nothing.

Example::

    python bench/profile_train_step.py --iters 4 --size 128
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

import unsolo  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch starts its OpenMP runtime)
import numpy as np
import torch


def count_ops(profiler, phases) -> dict[str, dict[str, int]]:
    """Per phase: tensor operations (top-level aten calls, roughly one kernel launch each on a GPU) and host-device
    synchronisations (``aten::_local_scalar_dense``), from a CPU profile with ``phase::NAME`` ranges."""
    events = profiler.events()
    ranges = {e.name[len("phase::"):]: e.time_range for e in events if e.name.startswith("phase::")}
    out = {p: {"ops": 0, "syncs": 0, "nonzero": 0} for p in phases}
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        for p, r in ranges.items():
            if r.start <= e.time_range.start and e.time_range.end <= r.end:
                if e.cpu_parent is None or e.cpu_parent.name.startswith("phase::"):
                    out[p]["ops"] += 1
                if e.name == "aten::_local_scalar_dense":
                    out[p]["syncs"] += 1
                if e.name == "aten::nonzero":
                    out[p]["nonzero"] += 1
                break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small_r18")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=128, help="generated scene size (px)")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--cprofile", type=int, default=0, help="print the N top functions by cumulative time")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--bf16", action="store_true", help="run the network's forward under bfloat16 autocast (losses "
                    "in float32, as solver.precision=bfloat16 trains)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: on CUDA each phase is timed in wall seconds "
                    "(synchronised at its end) as well")
    ap.add_argument("--ops", action="store_true", help="also count, per phase, the tensor operations (each a kernel "
                    "launch on a GPU) and the host-device synchronisations (aten::_local_scalar_dense: .item(), "
                    "bool(t), int(t)) of one iteration")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from unsolo.data.copy_paste import copy_paste_batch
    from unsolo.data.samplers import mix_seed
    from unsolo.data.synthetic import generate
    from unsolo.data.train_dataset import PseudoLabelDataset, load_training_set
    from unsolo.modeling.backbone import normalize_image
    from unsolo.modeling.solov2 import build_model, pad_images
    from unsolo.pipeline.train import build_optimizer, learning_rate, resolve_train_config

    cfg = resolve_train_config(args.preset, args.overrides)
    tmp = Path(tempfile.mkdtemp(prefix="profile_train_"))
    generate(tmp, args.images, size=args.size, seed=0)
    items, cmap = load_training_set(tmp / "images", tmp / "annotations.json")
    cmap = {cid: 0 for cid in cmap}  # class-agnostic, as the trainer by default
    ds = PseudoLabelDataset(items, cmap, cfg.data.min_sizes, cfg.data.max_size, cfg.data.flip_prob, cfg.data.strong,
                            strong_in_workers=True, box_source=cfg.data.box_source, emb_dim=cfg.model.num_embs)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = build_model(cfg.model).to(dev).train()
    if cfg.channels_last is not False:  # as the trainer
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.solver, model, learning_rate(cfg.solver, cfg.solver.ims_per_batch))
    per = cfg.solver.ims_per_batch
    phases = ["data", "copy_paste", "network", "targets", "losses", "backward", "optimizer"]
    totals = {k: 0.0 for k in phases}
    walls = {k: 0.0 for k in phases}
    op_counts: dict[str, dict[str, int]] = {}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def phase_end(name, c, w, t, tw):
        sync()
        t[name] = time.process_time() - c
        tw[name] = time.perf_counter() - w
        return time.process_time(), time.perf_counter()
    n_targets = 0
    prof = cProfile.Profile() if args.cprofile else None
    wall = 0.0
    for it in range(args.warmup + args.iters):
        timed = it >= args.warmup
        counting = args.ops and it == args.warmup + args.iters - 1
        if timed and prof is not None:
            prof.enable()
        t, tw = {}, {}
        w0 = time.perf_counter()
        c, w = time.process_time(), time.perf_counter()
        batch = [ds[((it * per + k) % len(ds), mix_seed(0, it, k))] for k in range(per)]
        batch = [dict(b, weak=b["weak"].to(dev), strong=b["strong"].to(dev),
                      instances={k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b["instances"].items()})
                 for b in batch]
        c, w = phase_end("data", c, w, t, tw)
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if counting else None
        if profiler is not None:
            profiler.__enter__()
        marks = []

        def mark(name):
            if profiler is not None:
                marks.append((name, torch.autograd.profiler.record_function("phase::" + name)))
                marks[-1][1].__enter__()

        def unmark():
            if marks:
                marks[-1][1].__exit__(None, None, None)

        mark("copy_paste")
        weak = [b["weak"] for b in batch]
        insts = [b["instances"] for b in batch]
        g = torch.Generator().manual_seed(mix_seed(0, it, 2))  # CPU draws, device ops (as the trainer)
        strong, strong_insts = copy_paste_batch([b["strong"] for b in batch], insts, weak, insts, g,
                                                cfg.data.max_occlusion)
        model_batch = [{"image": im, "instances": ins, "orig_size": b["orig_size"]}
                       for im, ins, b in zip(strong + weak, strong_insts + insts, batch + batch)]
        unmark()
        c, w = phase_end("copy_paste", c, w, t, tw)
        mark("network")
        model._iter += 1
        raw = [item["image"].float() for item in model_batch]
        x = pad_images([normalize_image(im[None])[0] for im in raw])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            cates, kernels, embs, mask_feat = model.predict_raw(x)
        cates, kernels, embs = [[t.float() for t in ts] for ts in (cates, kernels, embs)]
        mask_feat = mask_feat.float()
        unmark()
        c, w = phase_end("network", c, w, t, tw)
        mark("targets")
        targets, sims = model.prepare_targets(model_batch, raw, tuple(x.shape[-2:]))
        unmark()
        c, w = phase_end("targets", c, w, t, tw)
        mark("losses")
        losses = model.losses(cates, kernels, embs, mask_feat, targets, sims)
        total = sum(losses.values())
        unmark()
        c, w = phase_end("losses", c, w, t, tw)
        mark("backward")
        opt.zero_grad(set_to_none=True)
        total.backward()
        unmark()
        c, w = phase_end("backward", c, w, t, tw)
        mark("optimizer")
        opt.step()
        unmark()
        c, w = phase_end("optimizer", c, w, t, tw)
        if profiler is not None:
            profiler.__exit__(None, None, None)
            op_counts = count_ops(profiler, phases[1:])
        if timed:
            wall += time.perf_counter() - w0
            if prof is not None:
                prof.disable()
            for k in phases:
                totals[k] += t[k]
                walls[k] += tw[k]
            n_targets += sum(lt.grid_order.numel() for per_img in targets for lt in per_img)
    out = {k + "_cpu_s": round(v / args.iters, 3) for k, v in totals.items()}
    out["total_cpu_s"] = round(sum(totals.values()) / args.iters, 3)
    out.update({k + "_wall_s": round(v / args.iters, 4) for k, v in walls.items()})
    out["device"] = str(dev)
    if op_counts:
        out["ops_per_phase"] = op_counts
    out["wall_s"] = round(wall / args.iters, 3)
    out["mask_targets_per_iter"] = n_targets / args.iters
    out["torch_threads"] = torch.get_num_threads()
    out["channels_last"] = cfg.channels_last is not False
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    out["load_average"] = round(os.getloadavg()[0], 1)
    out["image_size"] = list(batch[0]["weak"].shape[1:])
    print(json.dumps(out))
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
