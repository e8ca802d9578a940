"""Cost of DropLoss (``model.loss.drop_loss_iou``) in a SOLO training step, A/B in one process.

The same model, batch and weights, forward + backward alternately with DropLoss off and on (CutLER's 0.01), so the
ratio holds on a loaded machine. The batch: ``unsolo synth`` scenes with their ground-truth masks as targets, two
views per image as in training (no augmentation).

    OMP_NUM_THREADS=1 python bench/bench_drop_loss.py --preset small_r18 --images 4 --size 192 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unsolo.data.coco import decode_segmentation
from unsolo.data.synthetic import generate
from unsolo.modeling.solov2 import build_model, model_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small_r18", help="model preset")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iou", type=float, default=0.01)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        coco = generate(Path(tmp) / "s", args.images, args.size, seed=0)
        batch = []
        for im in coco["images"]:
            img = np.asarray(Image.open(Path(tmp) / "s" / "images" / im["file_name"]).convert("RGB"))
            anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
            masks = torch.from_numpy(np.stack([decode_segmentation(a["segmentation"], im["height"], im["width"]) for a in anns]).astype(bool))
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
            item = {"image": torch.from_numpy(img.copy()).permute(2, 0, 1).float(), "orig_size": img.shape[:2],
                    "instances": {"masks": masks, "boxes": boxes, "labels": torch.zeros(len(anns), dtype=torch.int64)}}
            batch += [item, item]
    model = build_model(model_config(args.preset)).train()
    times = {"off": [], "on": []}
    for r in range(args.rounds + 1):
        for mode in ("off", "on"):
            model.cfg.loss.drop_loss_iou = args.iou if mode == "on" else None
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            sum(model(batch).values()).backward()
            if r:  # the first round warms up
                times[mode].append(time.perf_counter() - t0)
    dropped, negatives = model.drop_stats.tolist()
    off, on = float(np.median(times["off"])), float(np.median(times["on"]))
    print(json.dumps({"preset": args.preset, "views": len(batch), "size": args.size, "threads": torch.get_num_threads(),
                      "step_s_off": round(off, 3), "step_s_on": round(on, 3), "ratio": round(on / off, 3),
                      "dropped_negatives": int(dropped), "negatives": int(negatives)}))


if __name__ == "__main__":
    main()
