"""SOLOv2 model: shapes, gradients, empty images, inference, checkpoints and the official import."""

import json
import os

import numpy as np
import pytest
import torch

from freesolo.compat.official import map_official_key, unmap_key
from freesolo.modeling.solov2 import (
    ModelConfig,
    SOLOv2,
    build_model,
    load_model,
    model_config,
    point_nms,
    resize_masks,
    save_checkpoint,
)


def tiny_cfg(**kw) -> ModelConfig:
    cfg = model_config("small_r18")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _instances(h, w, boxes):
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = True
    return {
        "masks": masks,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
        "embs": torch.randn(len(boxes), 128),
    }


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_every_parameter_gets_a_gradient(tiny_model):
    m = tiny_model.train()
    m.zero_grad()
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=g)
    batch = [
        {"image": img, "instances": _instances(96, 128, [(10, 8, 70, 60), (50, 40, 120, 90)]), "orig_size": (192, 256)},
        {"image": img[:, :80].float(), "instances": _instances(80, 128, [(0, 0, 30, 30)]), "orig_size": (80, 128)},
    ]
    before = float(m._iter)
    losses = m(batch)
    assert set(losses) == {"loss_ins", "loss_ins_max", "loss_pairwise", "loss_cate", "loss_emb"}
    assert float(m._iter) == before + 1
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_emb"]) > 0  # on by default (paper), off in the official code
    sum(losses.values()).backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert m.ins_head.emb_pred.weight.grad.abs().sum() > 0
    assert m.ins_head.kernel_pred.weight.grad.abs().sum() > 0


def test_zero_instances_give_finite_losses_and_gradients(tiny_model):
    m = tiny_model.train()
    m.zero_grad()
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    empty = {"masks": torch.zeros(0, 64, 64, dtype=torch.bool), "boxes": torch.zeros(0, 4),
             "labels": torch.zeros(0, dtype=torch.int64), "embs": torch.zeros(0, 128)}
    losses = m([{"image": img, "instances": empty, "orig_size": (64, 64)}])
    for k, v in losses.items():
        assert torch.isfinite(v), k
    for k in ("loss_ins", "loss_ins_max", "loss_pairwise", "loss_emb"):
        assert float(losses[k]) == 0.0
    assert float(losses["loss_cate"]) > 0
    sum(losses.values()).backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]


def test_output_shapes(tiny_model):
    m = tiny_model.eval()
    cates, kernels, embs, mask_feat = m.predict_raw(torch.zeros(2, 3, 128, 160))
    assert [c.shape[-1] for c in cates] == list(m.cfg.grids)
    assert cates[0].shape == (2, 1, 24, 24) and kernels[0].shape == (2, 64, 24, 24) and embs[0].shape == (2, 128, 24, 24)
    assert mask_feat.shape == (2, 64, 32, 40) and bool((mask_feat >= 0).all())
