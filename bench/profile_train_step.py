"""CPU-time breakdown of one ``freesolo train`` iteration at the demo scale, phase by phase.

Generates synthetic scenes (``freesolo.data.synthetic.generate``, 128 px by default), builds the training views
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
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import freesolo  # noqa: E402,F401  (first: sets OMP_WAIT_POLICY before torch starts its OpenMP runtime)
import numpy as np  # noqa: E402
import torch  # noqa: E402


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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from freesolo.data.copy_paste import copy_paste_batch
    from freesolo.data.samplers import mix_seed
    from freesolo.data.synthetic import generate
    from freesolo.data.train_dataset import PseudoLabelDataset, load_training_set
    from freesolo.modeling.backbone import normalize_image
    from freesolo.modeling.solov2 import build_model, pad_images
    from freesolo.pipeline.train import learning_rate, param_groups, resolve_train_config

    cfg = resolve_train_config(args.preset, args.overrides)
    tmp = Path(tempfile.mkdtemp(prefix="profile_train_"))
    generate(tmp, args.images, size=args.size, seed=0)
    items, cmap = load_training_set(tmp / "images", tmp / "annotations.json")
    cmap = {cid: 0 for cid in cmap}  # class-agnostic, as the trainer by default
    ds = PseudoLabelDataset(items, cmap, cfg.data.min_sizes, cfg.data.max_size, cfg.data.flip_prob, cfg.data.strong,
                            strong_in_workers=True, box_source=cfg.data.box_source, emb_dim=cfg.model.num_embs)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    if cfg.channels_last is not False:  # as the trainer on the CPU
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, cfg.solver.weight_decay, cfg.solver.weight_decay_norm),
                          lr=learning_rate(cfg.solver, cfg.solver.ims_per_batch), momentum=cfg.solver.momentum)
    per = cfg.solver.ims_per_batch
    phases = ["data", "copy_paste", "network", "targets", "losses", "backward", "optimizer"]
    totals = {k: 0.0 for k in phases}
    n_targets = 0
    prof = cProfile.Profile() if args.cprofile else None
    wall = 0.0
    for it in range(args.warmup + args.iters):
        timed = it >= args.warmup
        if timed and prof is not None:
            prof.enable()
        t = {}
        w0 = time.perf_counter()
        c = time.process_time()
        batch = [ds[((it * per + k) % len(ds), mix_seed(0, it, k))] for k in range(per)]
        t["data"] = time.process_time() - c
        c = time.process_time()
        weak = [b["weak"] for b in batch]
        insts = [b["instances"] for b in batch]
        g = torch.Generator().manual_seed(mix_seed(0, it, 2))
        strong, strong_insts = copy_paste_batch([b["strong"] for b in batch], insts, weak, insts, g,
                                                cfg.data.max_occlusion)
        model_batch = [{"image": im, "instances": ins, "orig_size": b["orig_size"]}
                       for im, ins, b in zip(strong + weak, strong_insts + insts, batch + batch)]
        t["copy_paste"] = time.process_time() - c
        c = time.process_time()
        model._iter += 1
        raw = [item["image"].float() for item in model_batch]
        x = pad_images([normalize_image(im[None])[0] for im in raw])
        cates, kernels, embs, mask_feat = model.predict_raw(x)
        t["network"] = time.process_time() - c
        c = time.process_time()
        targets, sims = model.prepare_targets(model_batch, raw, tuple(x.shape[-2:]))
        t["targets"] = time.process_time() - c
        c = time.process_time()
        losses = model.losses(cates, kernels, embs, mask_feat, targets, sims)
        total = sum(losses.values())
        t["losses"] = time.process_time() - c
        c = time.process_time()
        opt.zero_grad(set_to_none=True)
        total.backward()
        t["backward"] = time.process_time() - c
        c = time.process_time()
        opt.step()
        t["optimizer"] = time.process_time() - c
        if timed:
            wall += time.perf_counter() - w0
            if prof is not None:
                prof.disable()
            for k in phases:
                totals[k] += t[k]
            n_targets += sum(lt.grid_order.numel() for per_img in targets for lt in per_img)
    out = {k + "_cpu_s": round(v / args.iters, 3) for k, v in totals.items()}
    out["total_cpu_s"] = round(sum(totals.values()) / args.iters, 3)
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
