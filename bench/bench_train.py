"""Training throughput of ``unsolo train`` (images/s) and the cost of the per-image augmentations.

Generates a small set of synthetic shape images with pseudo-labels (or uses ``--input``/``--labels``), runs the
training loop for ``--iters`` iterations with a preset, and prints one JSON line:

* ``images_per_s``: unique images per second over the timed iterations (each is fed twice: strong + weak view),
  the first ``--skip`` iterations excluded (start-up, allocator warm-up);
* ``cpu_s_per_iter``: CPU seconds of the training process per iteration (all its threads; a figure that does not
  depend on other jobs sharing the machine, unlike the wall-clock ``images_per_s``);
* ``data_time_s``: mean time per iteration the loop waited for the DataLoader;
* ``strong_view_ms``: time of one strong photometric view on the CPU (what a worker pays per image) and, with
  CUDA, on the device; ``weak_view_ms``: decode + resize + flip + mask decoding per image (worker side).

Examples::

    python bench/bench_train.py --preset small_r18 --iters 12 --device cpu
    python bench/bench_train.py --preset freesolo_r101 --iters 30 --device cuda --amp --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import unsolo  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch starts its OpenMP runtime)
import numpy as np
import torch


def bench_augmentations(items, cmap, cfg, device: str, n: int = 20) -> dict:
    from unsolo.data.train_dataset import PseudoLabelDataset
    from unsolo.data.transforms import strong_view

    ds = PseudoLabelDataset(items, cmap, cfg.data.min_sizes, cfg.data.max_size, cfg.data.flip_prob, cfg.data.strong,
                            strong_in_workers=False, box_source=cfg.data.box_source, emb_dim=cfg.model.num_embs)
    t = time.perf_counter()
    samples = [ds[(i % len(ds), i)] for i in range(n)]
    weak_ms = (time.perf_counter() - t) / n * 1000
    out = {"weak_view_ms": round(weak_ms, 2), "image_size": list(samples[0]["weak"].shape[1:])}
    g = torch.Generator().manual_seed(0)
    strong_view(samples[0]["weak"], cfg.data.strong, g)  # warm-up (first-call allocations)
    t = time.perf_counter()
    for s in samples:
        strong_view(s["weak"], cfg.data.strong, g)
    out["strong_view_cpu_ms"] = round((time.perf_counter() - t) / n * 1000, 2)
    if device.startswith("cuda") and torch.cuda.is_available():
        g = torch.Generator().manual_seed(0)  # CPU draws, device ops (as the trainer)
        imgs = [s["weak"].cuda() for s in samples]
        strong_view(imgs[0], cfg.data.strong, g)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for im in imgs:
            strong_view(im, cfg.data.strong, g)
        torch.cuda.synchronize()
        out["strong_view_cuda_ms"] = round((time.perf_counter() - t) / n * 1000, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small_r18")
    ap.add_argument("--input", default=None, help="image folder (default: generated shapes)")
    ap.add_argument("--labels", default=None, help="pseudo-label JSON for --input")
    ap.add_argument("--images", type=int, default=16, help="generated images")
    ap.add_argument("--size", type=int, default=192, help="generated image short side")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2, help="first iterations left out of the timing")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--aug-only", action="store_true", help="only time the per-image views (no training)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    from unsolo.data.train_dataset import load_training_set
    from unsolo.pipeline.train import resolve_train_config, train

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if args.input:
        folder, labels = Path(args.input), Path(args.labels)
    else:
        from _common import make_shapes_dataset  # bench/_common.py (this script's folder is on sys.path)

        s = args.size
        folder, labels = make_shapes_dataset(tmp, n_images=args.images, sizes=((s, s * 4 // 3), (s * 4 // 3, s)), objects=(2, 3, 4))
    extra: dict = {"solver": {"max_iter": args.iters, "log_period": 1, "checkpoint_period": 10**9}, "data": {}, "amp": args.amp}
    if args.batch_size:
        extra["solver"]["ims_per_batch"] = args.batch_size
    if args.workers is not None:
        extra["data"]["workers"] = args.workers
    cfg = resolve_train_config(args.preset, args.overrides, extra)
    items, cmap = load_training_set(folder, labels)
    aug = bench_augmentations(items, cmap, cfg, args.device)
    if args.aug_only:
        print(json.dumps({"preset": args.preset, "torch_threads": torch.get_num_threads(),
                          "load_average": round(os.getloadavg()[0], 1), **aug}))
        return 0

    cpu0 = time.process_time()
    summary = train(cfg, folder, labels, tmp / "run", device=args.device, resume=False)
    cpu_per_iter = (time.process_time() - cpu0) / args.iters  # main process (all its threads), start-up included
    recs = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = recs[args.skip:] or recs
    it_time = float(np.mean([r["time"] for r in timed]))
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu",
        "amp": args.amp,
        "ims_per_batch": cfg.solver.ims_per_batch,
        "workers": cfg.data.workers,
        "iters": args.iters,
        "s_per_iter": round(it_time, 3),
        "images_per_s": round(cfg.solver.ims_per_batch / it_time, 2),
        "images_per_s_incl_startup": round(summary["images_per_s"], 2),
        "cpu_s_per_iter": round(cpu_per_iter, 3),
        "images_per_cpu_s": round(cfg.solver.ims_per_batch / cpu_per_iter, 3),
        "load_average": round(os.getloadavg()[0], 1),
        "data_time_s": round(float(np.mean([r["data_time"] for r in timed])), 4),
        "torch_threads": torch.get_num_threads(),
        **aug,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
