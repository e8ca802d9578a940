"""Free Mask speed: seconds per image for the backbone, the Free Mask step and the COCO records.

Compares the straightforward computation (eager NCHW ResNet with separate frozen BN, as the official detectron2
path runs it) with this package's defaults (BN folded into the convolutions, channels-last), on the same
inputs, interleaved so that a noisy shared machine affects both alike. Also times the whole CLI stage on a
folder of generated images (decoding, resizing in workers, chunk files, merge).

    python bench/bench_freemask.py --arch resnet101 --size 800x1200 --images 4 [--weights W] [--device cuda --amp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unsolo.generators.freemask import FreeMaskConfig, free_mask
from unsolo.pipeline.freemask import backbone_features, build_backbone, result_records
from unsolo.modeling.backbone import normalize_image


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_variant(model, images, cfg, device, channels_last, amp, batch_size, clock=time.perf_counter):
    """(backbone s/img, free mask s/img, records s/img, masks) over ``images`` (uint8 HWC, all one size)."""
    tb = tf = tr = 0.0
    n_masks = 0
    for k in range(0, len(images), batch_size):
        batch = images[k : k + batch_size]
        t0 = clock()
        x = normalize_image(torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float())
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if amp:
                with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16):
                    feats = backbone_features(model, x, cfg.feature_level)
            else:
                feats = backbone_features(model, x, cfg.feature_level)
            feats = feats.float().contiguous()
            sync(device)
            t1 = clock()
            results = [free_mask(f, im.shape[:2], cfg) for f, im in zip(feats, batch)]
            sync(device)
        t2 = clock()
        for r in results:
            n_masks += len(result_records(0, r))
        t3 = clock()
        tb, tf, tr = tb + t1 - t0, tf + t2 - t1, tr + t3 - t2
    n = len(images)
    return tb / n, tf / n, tr / n, n_masks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet101")
    ap.add_argument("--weights", help="backbone checkpoint (default: random weights; timing barely depends on them)")
    ap.add_argument("--size", default="800x1200", help="HxW of the (already resized) test images")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the median is reported")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="autocast the backbone (bf16 on CPU, fp16 on CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="report process CPU seconds instead of wall seconds (robust on a shared machine; use --threads 1)")
    ap.add_argument("--skip-cli", action="store_true", help="do not time the whole CLI stage")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    images = []
    for _ in range(args.images):  # smooth random scenes (blocks of colour), not white noise
        small = rng.integers(0, 255, (h // 50 + 1, w // 50 + 1, 3), dtype=np.uint8)
        images.append(np.ascontiguousarray(np.kron(small, np.ones((50, 50, 1), np.uint8))[:h, :w]))
    cfg = FreeMaskConfig()
    plain = build_backbone(args.arch, args.weights, device, channels_last=False, fold_bn=False)
    fast = build_backbone(args.arch, args.weights, device, channels_last=True, fold_bn=True)
    variants = {"plain (NCHW, separate BN)": (plain, False), "unsolo (folded BN, channels-last)": (fast, True)}
    for model, cl in variants.values():  # warm-up
        time_variant(model, images[:1], cfg, device, cl, args.amp, 1)
    clock = time.process_time if args.cpu_time else time.perf_counter
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (model, cl) in variants.items():
            runs[name].append(time_variant(model, images, cfg, device, cl, args.amp, args.batch_size, clock))
    print(f"# {args.arch}, {h}x{w}, {args.images} images x {args.repeats}, batch {args.batch_size}, device {device}"
          f"{', amp' if args.amp else ''}, torch threads {torch.get_num_threads()}, "
          f"{'process CPU' if args.cpu_time else 'wall'} seconds")  # fmt: skip
    print("| variant | backbone s/img | free mask s/img | records s/img | total s/img | img/s |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        b, f, r = (statistics.median(x[i] for x in rs) for i in range(3))
        print(f"| {name} | {b:.3f} | {f:.3f} | {r:.3f} | {b + f + r:.3f} | {1 / (b + f + r):.2f} |")
    if args.skip_cli:
        return
    from PIL import Image

    from unsolo.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        folder.mkdir()
        for i, im in enumerate(images, start=1):
            Image.fromarray(im).save(folder / f"{i:06d}.png")
        argv = ["freemask", str(folder), "--out", str(Path(tmp) / "o.json"), "--arch", args.arch,
                "--device", args.device, "--batch-size", str(args.batch_size), "--workers", "1"]  # fmt: skip
        if args.weights:
            argv += ["--weights", args.weights]
        else:
            torch.save(plain.state_dict(), Path(tmp) / "w.pth")
            argv += ["--weights", str(Path(tmp) / "w.pth")]
        if args.amp:
            argv.append("--amp")
        t0 = time.perf_counter()
        cli(argv)
        dt = time.perf_counter() - t0
    print(f"\nwhole `unsolo freemask` stage (model load, decoding, chunks, merge): {dt / args.images:.3f} s/img, "
          f"{args.images / dt:.2f} img/s")  # fmt: skip


if __name__ == "__main__":
    main()
