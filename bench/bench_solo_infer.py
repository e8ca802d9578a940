"""Speed of SOLOv2 inference (Predictor: resize, network, post-processing, masks at the original size).

usage: python bench/bench_solo_infer.py [--weights CKPT] [--preset freesolo_r101] [--height 800 --width 1200]
                                        [--runs 3] [--device cpu|cuda] [--amp] [--threads N] [--set KEY=VALUE ...]
Without --weights the official R-101 configuration is built with random weights (few candidates pass the score
threshold); with an official/own checkpoint (e.g. make_official_checkpoint.py 0) the post-processing is loaded
with the full 500 candidates / 100 detections. ``--set inference.fold_bn=false`` (repeatable) changes a model config
field. Prints one JSON line: per-image wall seconds and process CPU seconds (all threads; on a shared machine the
CPU time is the steadier figure, CPU / threads estimates the wall time of an idle machine) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from unsolo.compat.solo_checkpoint import load_model
from unsolo.modeling.solov2 import build_model, model_config
from unsolo.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--preset", default="freesolo_r101")
    ap.add_argument("--image", help="an image file instead of a random --height x --width one")
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after timing, profile one call and print the N operators with the most self time "
                    "(device time on CUDA, else CPU time)")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="images per forward pass (Predictor.predict_batch; same-size images); rates are per image")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model config field, e.g. inference.channels_last=false")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = load_model(args.weights, dev) if args.weights else build_model(model_config(args.preset)).to(dev).eval()
    for item in args.set:
        key, value = item.split("=", 1)
        *path, leaf = key.split(".")
        obj = model.cfg
        for part in path:
            obj = getattr(obj, part)
        old = getattr(obj, leaf)
        setattr(obj, leaf, type(old)(value.lower() in ("1", "true", "yes")) if isinstance(old, bool) else type(old)(value))
    pred = Predictor(model, dev, amp=args.amp)
    if args.image:
        from unsolo.data.images import load_image

        img = load_image(args.image)
    else:
        img = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    bs = max(1, args.batch_size)

    def call():
        return pred(img) if bs == 1 else pred.predict_batch([img] * bs)[-1]

    for _ in range(args.warmup):
        call()
    times, cpu, dets = [], [], 0
    load = [os.getloadavg()[0]]
    for _ in range(args.runs):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        out = call()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / bs)
        cpu.append((time.process_time() - c) / bs)
        dets = len(out["scores"])
    load.append(os.getloadavg()[0])
    if args.profile:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            call()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile))
        if dev.type == "cuda":
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    print(json.dumps({
        "model": args.weights or args.preset, "image": args.image or [args.height, args.width], "device": str(dev), "amp": args.amp,
        "threads": torch.get_num_threads(), "runs": args.runs, "batch_size": bs,
        "images_per_s": round(1.0 / float(np.mean(times)), 2), "s_per_image_mean": round(float(np.mean(times)), 3),
        "s_per_image_min": round(float(np.min(times)), 3), "cpu_s_per_image_mean": round(float(np.mean(cpu)), 3),
        "cpu_s_per_image_min": round(float(np.min(cpu)), 3), "load_avg_1min_before_after": load,
        "nproc": os.cpu_count(), "set": args.set, "detections": dets, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
