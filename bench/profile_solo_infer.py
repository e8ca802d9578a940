"""Where the time of one SOLOv2 inference goes (CPU): network parts timed one by one, post-processing by operator.

usage: python bench/profile_solo_infer.py --weights CKPT [--image PATH | --height 800 --width 1200] [--threads 2]
Prints per part the wall and process-CPU seconds (backbone, FPN, instance head, mask head, post-processing, the
numpy conversion of the Predictor), then the torch.profiler operator table of the post-processing (dynamic conv,
sigmoid / threshold / maskness, Matrix NMS matmul, bilinear resizes). The machine load is printed too: on a shared
machine compare CPU seconds, and CPU seconds / threads for an idle-machine wall-time estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from unsolo.compat.solo_checkpoint import load_model
from unsolo.data.transforms import resize_image, shortest_edge_size
from unsolo.modeling.backbone import normalize_image
from unsolo.modeling.solov2 import SIZE_DIVISIBILITY, build_model, model_config, pad_images, split_feats
from unsolo.predictor import Predictor, to_numpy


class Timer:
    def __init__(self):
        self.rows: dict[str, list[float]] = {}

    def __call__(self, name, fn, *a):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*a)
        self.rows[name] = [round(time.perf_counter() - w, 3), round(time.process_time() - c, 3)]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--preset", default="freesolo_r101")
    ap.add_argument("--image")
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.weights, "cpu") if args.weights else build_model(model_config(args.preset)).eval()
    if args.image:
        from unsolo.data.images import load_image

        img = load_image(args.image)
    else:
        img = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    pred = Predictor(model, "cpu")
    model = pred.model
    load0 = os.getloadavg()[0]
    t = Timer()
    with torch.inference_mode():
        r = resize_image(img, shortest_edge_size(*img.shape[:2], pred.short_side, pred.max_side))
        x = pad_images([torch.from_numpy(np.array(r)).permute(2, 0, 1).float()], SIZE_DIVISIBILITY)
        x = normalize_image(x)
        ic = getattr(model.cfg.inference, "fold_bn", None)  # None: code from before the inference switches
        backbone = model.backbone
        if ic is not None and model.cfg.inference.fold_bn:
            backbone = t("fold_bn (once per weights)", model.inference_backbone, model.cfg.inference.channels_last)
        if ic is not None and model.cfg.inference.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = t("backbone", backbone, x)
        feats = t("fpn", model.fpn, feats)
        cates, kernels, embs = t("ins_head", model.ins_head, split_feats(feats))
        mask_feat = t("mask_head", model.mask_head, feats[:4])
        sizes, origs = [r.shape[:2]], [img.shape[:2]]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            outs = t("postprocess", model._postprocess, cates, kernels, embs, mask_feat, sizes, origs)
        t("to_numpy", to_numpy, outs[0])
    total = [round(sum(v[0] for v in t.rows.values()), 3), round(sum(v[1] for v in t.rows.values()), 3)]
    print(json.dumps({"image": list(img.shape[:2]), "detections": len(outs[0]["scores"]),
                      "threads": torch.get_num_threads(), "load_avg_1min": [load0, os.getloadavg()[0]],
                      "parts_wall_cpu_s": t.rows, "total_wall_cpu_s": total}, indent=1))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
