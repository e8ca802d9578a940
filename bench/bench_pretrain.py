"""Speed of DenseCL pre-training, part by part (images/s; one "image" = one image of the batch, i.e. two views).

    OMP_NUM_THREADS=1 python bench/bench_pretrain.py [--images DIR] [--preset small_r18] [--device cpu]

1. worker side: decode + two random resized crops to uint8 (one process; multiply by --workers);
2. device side: the batched photometric augmentation (jitter, grayscale, blur, flip) of both views;
3. one training iteration of the model (momentum update, both encoders, losses, backward, SGD step);
Results go to stdout as a table and JSON; copy them to docs/benchmarks.md with the machine's description.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, repeats: int) -> tuple[float, float]:
    """Seconds per call: (wall clock, CPU time of this process). On a shared machine the CPU figure is what
    the process would get from free cores (with one torch thread, one core)."""
    fn()  # warm-up
    t, c = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats, (time.process_time() - c) / repeats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="image folder (default: 96 synthetic 192 px scenes in a temp dir)")
    ap.add_argument("--preset", default="small_r18", help="pretrain preset giving arch, size and batch size")
    ap.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from unsolo.config import resolve
    from unsolo.data.images import list_images
    from unsolo.data.views import TwoViewDataset, photometric_augment
    from unsolo.modeling.backbone import normalize_image
    from unsolo.pipeline.pretrain import PretrainConfig, build_model

    cfg = resolve(PretrainConfig, "pretrain", args.preset, [], {"batch_size": args.batch_size})
    dev = torch.device(args.device)
    images = args.images
    if images is None:
        tmp = tempfile.mkdtemp(prefix="bench_pretrain_")
        subprocess.run([sys.executable, "-m", "unsolo", "synth", tmp, "--num-images", "96", "--size", "192"], check=True,
                       capture_output=True)
        images = str(Path(tmp) / "images")
    recs = list_images(images)
    bsz = min(cfg.batch_size, len(recs))

    ds = TwoViewDataset(recs, cfg.size, cfg.augment, cfg.seed)
    t_load = timed(lambda: [ds[(i, 0)] for i in range(bsz)], args.repeats)
    views = torch.stack([ds[(i, 0)]["views"] for i in range(bsz)]).to(dev)  # (B, 2, 3, S, S)

    gen = torch.Generator(device=dev).manual_seed(0)

    def augment():
        x = normalize_image(photometric_augment(views.flatten(0, 1), cfg.augment, gen))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return x

    t_aug = timed(augment, args.repeats)
    x = augment().view(bsz, 2, 3, cfg.size, cfg.size)

    if cfg.queue_len % bsz:  # fewer images than the preset's batch: keep the queue a multiple of it
        cfg = dataclasses.replace(cfg, queue_len=bsz * max(1, cfg.queue_len // bsz))
    model = build_model(cfg).to(dev)
    opt = torch.optim.SGD([p for p in model.encoder_q.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def step():
        loss = model(x[:, 0], x[:, 1])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t_step = timed(step, args.repeats)

    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "device": str(dev),
        "preset": args.preset,
        "arch": cfg.arch,
        "crop": cfg.size,
        "batch": bsz,
        "decode_crop_images_per_s_per_worker": [round(bsz / t, 1) for t in t_load],
        "photometric_images_per_s": [round(bsz / t, 1) for t in t_aug],
        "train_step_images_per_s": [round(bsz / t, 1) for t in t_step],
        # the workers run in parallel with the main process: the slower side sets the pace
        "end_to_end_images_per_s": [round(bsz / max(a + s, l / max(1, cfg.workers)), 1) for a, s, l in zip(t_aug, t_step, t_load)],
    }
    print("rates as [per wall-clock second, per CPU second of the process]")
    for k, v in res.items():
        print(f"{k:40s} {v}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
