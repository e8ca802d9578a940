"""Speed of synthetic scene generation on one core: render + PNG encode + RLE records, and full ``generate``.

Rates are given per wall-clock second and per CPU second of this process (``time.process_time``): on a shared,
loaded machine the second is what one free core would do.

    OMP_NUM_THREADS=1 python bench/bench_synth.py --sizes 128 192 256 --num-images 200
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from unsolo.data.coco import instance_records
from unsolo.data.synthetic import generate, png_bytes, render_scene, scene_rng


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256])
    ap.add_argument("--num-images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
          f"python {platform.python_version()}, numpy {np.__version__}; one process")
    print("| size | render only (img/s wall / cpu) | render + PNG + RLE (img/s wall / cpu) "
          "| generate() to disk (img/s wall / cpu) | objects/img |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        n = args.num_images
        t0, c0 = time.perf_counter(), time.process_time()
        scenes = [render_scene(scene_rng(args.seed, i), size) for i in range(1, n + 1)]
        t_render, c_render = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(1, n + 1):
            img, masks, cats = render_scene(scene_rng(args.seed, i), size)
            png_bytes(img)
            instance_records(i, masks, category_ids=cats.tolist())
        t_all, c_all = time.perf_counter() - t0, time.process_time() - c0
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            generate(Path(tmp) / "set", n, size, args.seed)
            t_gen, c_gen = time.perf_counter() - t0, time.process_time() - c0
        objs = np.mean([len(s[1]) for s in scenes])
        print(f"| {size} | {n / t_render:.0f} / {n / c_render:.0f} | {n / t_all:.0f} / {n / c_all:.0f} "
              f"| {n / t_gen:.0f} / {n / c_gen:.0f} | {objs:.2f} |")


if __name__ == "__main__":
    main()
