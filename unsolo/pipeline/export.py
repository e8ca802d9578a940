"""``unsolo export``: a trained SOLO model to ONNX, and a runner for the exported file.

The graph is the network: input ``images`` float32 ``(B, 3, H, W)``, RGB normalised with the ImageNet mean and
std and zero-padded to multiples of 32 (as the model pads its normalised input); outputs, over the ``L = sum S^2``
grid cells of all levels,

* ``cate`` ``(B, L, K)``: point-NMS'd category scores (sigmoid),
* ``kernels`` ``(B, L, D)``: each cell's dynamic 1x1 mask kernel,
* ``embs`` ``(B, L, E)``: each cell's embedding (not normalised),
* ``mask_feat`` ``(B, D, H/4, W/4)``: the unified mask features.

The post-processing (thresholds, candidate masks and maskness, Matrix NMS, the resize to the original size) is data
dependent and stays in Python: :func:`unsolo.modeling.inference.inference_single`, the function the PyTorch model
itself uses, here fed by onnxruntime (:class:`OnnxPredictor`). The model config (grids, strides, inference
thresholds) travels in the ONNX file's metadata, so the runner needs only the ``.onnx`` file.

The frozen BatchNorm is folded into the backbone's convolutions before export (the inference copy the PyTorch
predictor uses too).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from unsolo.errors import UnsoloError

log = logging.getLogger("unsolo.export")

METADATA_KEY = "unsolo_model_config"
OPSET = 18


class ExportableSOLO(nn.Module):
    """The network of a :class:`~unsolo.modeling.solov2.SOLOv2` with flat outputs (see the module docstring)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.backbone = model.inference_backbone(channels_last=False) or model.backbone

    def forward(self, images: torch.Tensor):
        from unsolo.modeling.inference import point_nms

        cates, kernels, embs, mask_feat = self.model.predict_raw(images, self.backbone)
        cate = torch.cat([point_nms(c.sigmoid()).flatten(2) for c in cates], 2).transpose(1, 2)  # (B, L, K)
        kern = torch.cat([k.flatten(2) for k in kernels], 2).transpose(1, 2)  # (B, L, D)
        emb = torch.cat([e.flatten(2) for e in embs], 2).transpose(1, 2)  # (B, L, E)
        return cate, kern, emb, mask_feat


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike, *, opset: int = OPSET,
                sample_size: tuple[int, int] = (224, 320)) -> Path:
    """Write ``out`` (ONNX, dynamic batch and image size) from a checkpoint of this project or official FreeSOLO."""
    from unsolo.config import to_dict
    from unsolo.compat.solo_checkpoint import load_model
    from unsolo.utils.io import atomic_write

    try:
        import onnx
    except ImportError:
        raise UnsoloError("unsolo export needs the onnx package: pip install 'unsolo[export]'") from None
    model = load_model(model_path, "cpu")
    wrapper = ExportableSOLO(model).eval()
    h, w = (int(np.ceil(s / 32) * 32) for s in sample_size)
    sample = torch.zeros(1, 3, h, w)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.export")
    try:
        # the TorchScript-based exporter: the torch.export-based one (dynamo=True, torch 2.14) bakes the sample's size
        # into the CoordConv / resize shapes of this network and then fails at any other image size (measured), so
        # the deprecated one is used, with its warnings silenced; its graph runs at every size (tested)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper, (sample,), str(tmp), input_names=["images"],
                output_names=["cate", "kernels", "embs", "mask_feat"], opset_version=opset, dynamo=False,
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "cate": {0: "batch"},
                              "kernels": {0: "batch"}, "embs": {0: "batch"},
                              "mask_feat": {0: "batch", 2: "feat_height", 3: "feat_width"}})
        proto = onnx.load(str(tmp))
        meta = proto.metadata_props.add()
        meta.key, meta.value = METADATA_KEY, json.dumps(to_dict(model.cfg))
        data = proto.SerializeToString()
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write(out, lambda f: f.write(data), mode="wb")
    log.info("wrote %s (%.1f MB)", out, len(data) / 1e6)
    return out


class OnnxPredictor:
    """Run an exported model with onnxruntime: the same interface and outputs as
    :class:`unsolo.predictor.Predictor` (test-time resize, padding, the same post-processing)."""

    def __init__(self, path: str | os.PathLike, short_side: int = 800, max_side: int = 1333, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UnsoloError("running an exported model needs onnxruntime: pip install 'unsolo[export]'") from None
        from unsolo.config import from_dict
        from unsolo.modeling.solov2 import ModelConfig

        if not Path(path).is_file():
            raise UnsoloError(f"ONNX model not found: {path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise UnsoloError(f"{path} was not written by unsolo export (no {METADATA_KEY} metadata)")
        self.cfg = from_dict(ModelConfig, json.loads(meta[METADATA_KEY]))
        self.short_side, self.max_side = short_side, max_side

    def __call__(self, image: np.ndarray) -> dict:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict]:
        from unsolo.modeling.backbone import normalize_image
        from unsolo.modeling.inference import inference_single
        from unsolo.modeling.solov2 import SIZE_DIVISIBILITY, pad_images
        from unsolo.data.transforms import resize_image, shortest_edge_size
        from unsolo.predictor import to_numpy

        if not images:
            return []
        resized = [resize_image(a, shortest_edge_size(*a.shape[:2], self.short_side, self.max_side))
                   for a in map(np.asarray, images)]
        # normalise each image, then pad with zeros: the official model pads the normalised image
        tensors = [normalize_image(torch.from_numpy(np.array(r)).permute(2, 0, 1).float()[None])[0]
                   for r in resized]
        batch = pad_images(tensors, SIZE_DIVISIBILITY).numpy()
        cate, kern, emb, feat = self.session.run(None, {"images": batch})
        outs = []
        for b, (r, im) in enumerate(zip(resized, images)):
            o = inference_single(torch.from_numpy(cate[b]), torch.from_numpy(kern[b]), torch.from_numpy(emb[b]),
                                 torch.from_numpy(feat[b]), r.shape[:2], np.asarray(im).shape[:2], self.cfg)
            outs.append(to_numpy(o))
        return outs


def compare_on_images(model_path, onnx_path, images: Sequence[str | os.PathLike], short_side: int = 800,
                      max_side: int = 1333, iou_min: float = 0.99, score_tol: float = 1e-3) -> dict:
    """PyTorch and onnxruntime on the same images: every PyTorch detection matched one-to-one (best IoU first)
    by an ONNX detection with mask IoU >= ``iou_min`` and score within ``score_tol``; times of both."""
    from unsolo.data.images import load_image
    from unsolo.predictor import Predictor
    from unsolo.utils.masks import greedy_match, mask_iou

    torch_pred = Predictor(model_path, "cpu", short_side, max_side)
    onnx_pred = OnnxPredictor(onnx_path, short_side, max_side, threads=torch.get_num_threads())
    per_image, ok, t_torch, t_onnx = {}, True, 0.0, 0.0
    for path in images:
        img = load_image(path)
        t0 = time.perf_counter()
        a = torch_pred(img)
        t1 = time.perf_counter()
        b = onnx_pred(img)
        t2 = time.perf_counter()
        t_torch, t_onnx = t_torch + t1 - t0, t_onnx + t2 - t1
        n, m = len(a["scores"]), len(b["scores"])
        iou = mask_iou(a["masks"], b["masks"])
        matched = greedy_match(iou)
        ious = [float(iou[i, j]) for i, j in matched.items()]
        dscore = [abs(float(a["scores"][i]) - float(b["scores"][j])) for i, j in matched.items()]
        good = sum(1 for v, d in zip(ious, dscore) if v >= iou_min and d <= score_tol)
        per_image[str(path)] = {"torch": n, "onnx": m, "matched_within_tolerance": good,
                                "min_iou": min(ious, default=1.0), "max_score_diff": max(dscore, default=0.0)}
        ok &= good == n and m == n
    k = max(len(per_image), 1)
    return {"ok": bool(ok), "images": per_image, "iou_min": iou_min, "score_tol": score_tol,
            "seconds_per_image": {"torch": round(t_torch / k, 3), "onnxruntime": round(t_onnx / k, 3)}}
