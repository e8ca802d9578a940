"""SOLOv2 model: shapes, gradients, empty images, inference, checkpoints and the official import."""

import json
import os

import numpy as np
import pytest
import torch

from unsolo.compat.official import map_official_key, unmap_key
from unsolo.compat.solo_checkpoint import load_model, save_checkpoint
from unsolo.modeling.solov2 import (
    ModelConfig,
    SOLOv2,
    build_model,
    model_config,
)
from unsolo.modeling.inference import point_nms, resize_masks


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
    assert float(losses["loss_emb"].detach()) > 0  # on by default (paper), off in the official code
    sum(losses.values()).backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert m.ins_head.emb_pred.weight.grad.abs().sum() > 0
    assert m.ins_head.kernel_pred.weight.grad.abs().sum() > 0


def test_losses_are_float32_under_autocast(tiny_model):
    """The network may run in bf16/fp16 autocast; the loss reductions must not (fp16 Dice sums overflow)."""
    m = tiny_model.train()
    img = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    batch = [{"image": img, "instances": _instances(96, 128, [(10, 8, 70, 60)]), "orig_size": (96, 128)}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(batch)
    for k, v in losses.items():
        assert v.dtype == torch.float32, k
        assert torch.isfinite(v), k
    sum(losses.values()).backward()


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
        assert float(losses[k].detach()) == 0.0
    assert float(losses["loss_cate"].detach()) > 0
    sum(losses.values()).backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]


def test_output_shapes(tiny_model):
    m = tiny_model.eval()
    cates, kernels, embs, mask_feat = m.predict_raw(torch.zeros(2, 3, 128, 160))
    assert [c.shape[-1] for c in cates] == list(m.cfg.grids)
    assert cates[0].shape == (2, 1, 24, 24) and kernels[0].shape == (2, 64, 24, 24) and embs[0].shape == (2, 128, 24, 24)
    assert mask_feat.shape == (2, 64, 32, 40) and bool((mask_feat >= 0).all())


def test_point_nms_and_two_step_resize():
    heat = torch.tensor([[[[0.2, 0.5], [0.4, 0.1]]]])
    # the official 2x2 window (padding 1, last row/col dropped) compares each cell with its top/left neighbours
    assert point_nms(heat)[0, 0].tolist() == [[pytest.approx(0.2), 0.5], [pytest.approx(0.4), 0.0]]
    soft = torch.zeros(1, 8, 8)
    soft[0, :4, :5] = 1.0
    out = resize_masks(soft, image_size=(16, 20), orig_size=(8, 10), feat_size=(8, 8))  # ratio max(2, 3) = 3
    assert out.shape == (1, 8, 10)
    assert bool((out[0, :5, :5] > 0.5).all()) and bool((out[0, 7:, :] < 0.5).all())


def test_inference_outputs(tiny_model):
    m = tiny_model.eval()
    m.cfg.inference.score_thr = 0.0  # random weights: let candidates through
    m.cfg.inference.update_thr = 0.0
    try:
        img = torch.randint(0, 256, (2, 3, 96, 128)).float()
        img[1, :, 80:] = 0
        outs = m.inference(img, [(96, 128), (80, 100)], [(48, 64), (160, 200)])
    finally:
        m.cfg.inference.score_thr, m.cfg.inference.update_thr = 0.1, 0.05
    assert len(outs) == 2
    for o, (H, W) in zip(outs, [(48, 64), (160, 200)]):
        k = o["masks"].shape[0]
        assert o["masks"].shape[1:] == (H, W) and o["masks"].dtype == torch.bool
        assert o["scores"].shape == (k,) and o["boxes"].shape == (k, 4) and o["embs"].shape == (k, 128)
        assert k <= 100 and bool((o["scores"][:-1] >= o["scores"][1:]).all())
        if k:
            assert torch.allclose(o["embs"].norm(dim=1), torch.ones(k), atol=1e-5)
            assert bool(o["masks"].flatten(1).any(1).all())


def test_official_import_round_trip(tmp_path):
    from unsolo.config import from_dict

    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet50", num_classes=2, fpn_channels=64, ins_channels=64, num_ins_convs=2,
                      mask_channels=32, num_kernels=64)
    ours = build_model(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ours._iter.fill_(7)
    official = {unmap_key(k): v for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "backbone.bottom_up.res4.5.conv3.norm.running_var" in official
    assert "backbone.fpn_lateral5.weight" in official and "ins_head.emb_pred.bias" in official
    assert all(map_official_key(k) in ours.state_dict() for k in official)
    torch.save({"model": official, "iteration": 3}, tmp_path / "official.pth")
    loaded = load_model(tmp_path / "official.pth")
    assert (loaded.cfg.arch, loaded.cfg.num_classes, loaded.cfg.num_ins_convs, loaded.cfg.num_kernels) == (
        "resnet50", 2, 2, 64)
    for k, v in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(1, 3, 64, 96) * 255
    a, b = ours.predict_raw(x), loaded.predict_raw(x)
    assert torch.equal(a[3], b[3]) and all(torch.equal(u, v) for u, v in zip(a[0], b[0]))
    # and this project's own format round-trips with its config
    save_checkpoint(tmp_path / "ours.pth", loaded, iteration=5)
    obj = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert obj["iteration"] == 5 and from_dict(ModelConfig, obj["config"]) == loaded.cfg
    again = load_model(tmp_path / "ours.pth", overrides=["inference.score_thr=0.3"])
    assert again.cfg.inference.score_thr == 0.3 and float(again._iter) == 7


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    from unsolo.errors import UnsoloError

    with pytest.raises(UnsoloError, match="not found"):
        load_model(tmp_path / "nope.pth")
    torch.save({"state_dict": {}}, tmp_path / "x.pth")
    with pytest.raises(UnsoloError, match="no 'model'"):
        load_model(tmp_path / "x.pth")
    torch.save({"model": {"foo": torch.zeros(1)}}, tmp_path / "y.pth")
    with pytest.raises(UnsoloError, match="unrecognised"):
        load_model(tmp_path / "y.pth")


def test_loss_switches(tiny_model):
    m = tiny_model.train()
    img = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    batch = [{"image": img, "instances": _instances(96, 128, [(10, 8, 70, 60)]), "orig_size": (96, 128)}]
    lc = m.cfg.loss
    try:
        m._iter.fill_(0)  # first forward: warm-up factor 1/1000
        early = m(batch)
        m._iter.fill_(1999)
        late = m(batch)
        assert float(early["loss_pairwise"].detach()) == pytest.approx(float(late["loss_pairwise"].detach()) / 1000, rel=1e-4)
        lc.emb_loss_official_zero = True
        assert float(m(batch)["loss_emb"].detach()) == 0.0
        lc.use_pairwise, lc.use_avg_proj = False, False
        out = m(batch)
        assert float(out["loss_pairwise"].detach()) == 0.0 and float(out["loss_ins"].detach()) == 0.0 and float(out["loss_ins_max"].detach()) > 0
        lc.mask_loss = "full"
        out = m(batch)
        assert float(out["loss_ins_max"].detach()) == 0.0 and float(out["loss_pairwise"].detach()) == 0.0 and 0 < float(out["loss_ins"].detach()) <= 1
    finally:
        lc.emb_loss_official_zero, lc.use_pairwise, lc.use_avg_proj, lc.mask_loss = False, True, True, "weak"


def test_predict_cli(tmp_path, tiny_model):
    from PIL import Image

    from unsolo.cli import main

    torch.manual_seed(0)
    m = build_model(tiny_cfg())
    with torch.no_grad():
        m.ins_head.cate_pred.bias.fill_(1.0)  # random weights: make candidates pass the 0.1 threshold
    save_checkpoint(tmp_path / "m.pth", m, iteration=1)
    d = tmp_path / "imgs"
    d.mkdir()
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(d / "000007.png")
    Image.fromarray(g.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(d / "000009.jpg")
    (d / "000011.png").write_bytes(b"not an image")
    out = tmp_path / "res.json"
    rc = main(["predict", str(d), "--model", str(tmp_path / "m.pth"), "--out", str(out), "--vis", str(tmp_path / "vis"),
               "--device", "cpu", "--short-side", "96", "--max-side", "160", "--batch-size", "2", "--workers", "0",
               "--embeddings"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res and {r["image_id"] for r in res} <= {7, 9}
    from pycocotools import mask as mask_utils

    for r in res:
        assert r["category_id"] == 1 and 0 <= r["score"] <= 1 and len(r["emb"]) == 128
        assert r["segmentation"]["size"] == ([60, 80] if r["image_id"] == 7 else [50, 40])
        assert r["bbox"] == pytest.approx(list(mask_utils.toBbox(r["segmentation"])))
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["000007.jpg", "000009.jpg"]
    assert main(["predict", str(d), "--model", str(tmp_path / "none.pth"), "--out", str(out), "--device", "cpu"]) == 2


def test_predictor_resize_like_detectron2():
    from unsolo.predictor import resized_size

    assert resized_size(480, 640, 800, 1333) == (800, 1067)
    assert resized_size(400, 1200, 800, 1333) == (444, 1333)
    assert resized_size(800, 1200, 800, 1333) == (800, 1200)


def test_predictor_amp_on_cpu_runs(tiny_model):
    from unsolo.predictor import Predictor

    pred = Predictor(tiny_model, "cpu", short_side=64, max_side=96, amp=True)
    outs = pred.predict_batch([np.zeros((40, 50, 3), np.uint8), np.full((30, 30, 3), 200, np.uint8)])
    assert len(outs) == 2 and outs[0]["masks"].shape[1:] == (40, 50) and outs[0]["scores"].dtype == np.float32
