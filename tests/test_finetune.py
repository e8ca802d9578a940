"""``unsolo finetune``: usemask in the loss, weight transfer (init_checkpoint / init_exclude), class-aware
predictions, and a tiny run end to end (split -> finetune -> predict -> evaluate --class-aware)."""

from __future__ import annotations

import json

import pytest
import torch

from unsolo.cli import main
from unsolo.compat.official import transfer_weights
from unsolo.compat.solo_checkpoint import load_model
from unsolo.data.transforms import masks_to_boxes
from unsolo.errors import UnsoloError
from unsolo.modeling.losses import LossConfig
from unsolo.compat.solo_checkpoint import save_checkpoint
from unsolo.modeling.solov2 import ModelConfig, build_model
from unsolo.modeling.targets import box_masks
from unsolo.pipeline.finetune import DEFAULT_EXCLUDE, resolve_finetune_config, scale_steps
from unsolo.pipeline.predict import category_ids

TINY = dict(arch="resnet18", fpn_channels=32, ins_channels=32, num_ins_convs=1, mask_channels=32, num_kernels=32,
            grids=(8, 8, 6, 4, 2))
TINY_SET = ["--set", "model.arch=resnet18", "--set", "model.fpn_channels=32", "--set", "model.ins_channels=32",
            "--set", "model.num_ins_convs=1", "--set", "model.mask_channels=32", "--set", "model.num_kernels=32",
            "--set", "model.grids=[8,8,6,4,2]", "--set", "data.min_sizes=[64]", "--set", "data.max_size=64",
            "--set", "solver.log_period=1", "--set", "solver.warmup_iters=0", "--set", "data.workers=0"]


def tiny_model(num_classes: int = 3, seed: int = 0, **loss) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(num_classes=num_classes, loss=LossConfig(**loss), **TINY))


# ------------------------------------------------------------------------------------------ usemask
def scene():
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=g)
    img[:, 10:40, 12:44] = 200  # a flat object: colour pairs inside the box pass the similarity threshold
    box = torch.tensor([[12.0, 10.0, 44.0, 40.0]])
    filled = box_masks(box, 64, 64)  # (1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    wrong = (((xx - 27.5) / 16) ** 2 + ((yy - 24.5) / 15) ** 2 <= 1)[None] & filled  # an ellipse inside the box
    wrong[:, 20:30, 20:30] = False  # with a hole: clearly not the box
    return img, box, filled, wrong


def losses(model, img, box, mask, use: bool) -> dict[str, float]:
    model._iter.zero_()
    inst = {"masks": mask, "boxes": box, "labels": torch.tensor([1]), "usemask": torch.tensor([use])}
    with torch.no_grad():
        out = model([{"image": img, "instances": inst, "orig_size": (64, 64)}])
    return {k: float(v) for k, v in out.items()}


def test_box_masks_inverts_masks_to_boxes():
    boxes = torch.tensor([[3.0, 5.0, 20.0, 9.0], [0.0, 0.0, 32.0, 24.0]])
    masks = box_masks(boxes, 24, 32)
    assert masks.shape == (2, 24, 32) and int(masks[0].sum()) == 17 * 4
    assert torch.equal(masks_to_boxes(masks), boxes)


def test_usemask_zero_ignores_the_mask_inside_its_box():
    img, box, filled, wrong = scene()
    model = tiny_model(mask_loss="full", dice_weight=3.0, warmup_iters=0).train()
    with_box = losses(model, img, box, filled, use=False)
    with_wrong = losses(model, img, box, wrong, use=False)
    assert with_wrong == pytest.approx(with_box, abs=0, rel=0)  # identical: only the box is used
    # box supervision: max-projection Dice and pairwise terms, no full-mask Dice
    assert with_box["loss_ins"] == 0.0 and with_box["loss_ins_max"] > 0 and with_box["loss_pairwise"] > 0
    # the same instance with usemask 1 gets the full-mask Dice, which does see the mask
    full_box, full_wrong = losses(model, img, box, filled, use=True), losses(model, img, box, wrong, use=True)
    assert full_box["loss_ins"] > 0 and full_box["loss_ins_max"] == 0 and full_box["loss_pairwise"] == 0
    assert full_wrong["loss_ins"] != pytest.approx(full_box["loss_ins"], rel=1e-4)
    assert full_box["loss_cate"] == pytest.approx(with_box["loss_cate"])


def test_usemask_mixed_batch_weights_each_instance_by_its_own_loss():
    img, box, filled, wrong = scene()
    model = tiny_model(mask_loss="full", warmup_iters=0).train()
    box2 = torch.tensor([[46.0, 44.0, 62.0, 62.0]])
    m2 = box_masks(box2, 64, 64)
    inst = {"masks": torch.cat([wrong, m2]), "boxes": torch.cat([box, box2]), "labels": torch.tensor([0, 2]),
            "usemask": torch.tensor([False, True])}
    model._iter.zero_()
    out = model([{"image": img, "instances": inst, "orig_size": (64, 64)}])
    assert all(float(out[k].detach()) > 0 for k in ("loss_ins", "loss_ins_max", "loss_cate"))
    total = sum(out.values())
    total.backward()  # every term is differentiable
    assert model.ins_head.kernel_pred.weight.grad is not None


# ------------------------------------------------------------------------------------------ transfer
def test_transfer_copies_everything_but_the_excluded_prefixes(tmp_path):
    src = tiny_model(num_classes=1, seed=1)
    src._iter.fill_(1234)
    ckpt = tmp_path / "unsolo.pth"
    save_checkpoint(ckpt, src, iteration=7)
    dst = tiny_model(num_classes=6, seed=2)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    report = transfer_weights(dst, ckpt, DEFAULT_EXCLUDE)
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    excluded = [k for k in dst_sd if k.startswith(DEFAULT_EXCLUDE)]
    assert set(excluded) == {"ins_head.cate_pred.weight", "ins_head.cate_pred.bias", "ins_head.emb_pred.weight",
                             "ins_head.emb_pred.bias", "_iter"}
    for k, v in dst_sd.items():
        if k in excluded:
            assert torch.equal(v, fresh[k]), k  # kept its own initialisation
        else:
            assert torch.equal(v, src_sd[k]), k
    assert report["loaded"] == len(dst_sd) - len(excluded) and report["excluded"] == len(excluded)
    # exclude empty = transfer everything (same architecture): e.g. run's "continue from the previous round"
    same = tiny_model(num_classes=1, seed=3)
    transfer_weights(same, ckpt, ())
    assert all(torch.equal(v, src_sd[k]) for k, v in same.state_dict().items())
    # a classifier of another size is not silently dropped
    with pytest.raises(UnsoloError, match="shape mismatch.*cate_pred"):
        transfer_weights(tiny_model(num_classes=6), ckpt, ("ins_head.emb_pred.",))
    with pytest.raises(UnsoloError, match="missing from it|lacks"):
        transfer_weights(build_model(ModelConfig(num_classes=1, **{**TINY, "num_ins_convs": 2})), ckpt, ())


def test_category_ids_map_channels_to_label_ids():
    assert category_ids([0, 2, 1], (10, 20, 30)) == [10, 30, 20]
    assert category_ids([0, 0], ()) is None
    with pytest.raises(UnsoloError):
        category_ids([3], (10, 20))


def test_resolve_needs_one_init_and_rescales_steps(tmp_path):
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps({"images": [{"id": 1, "height": 8, "width": 8}],
                                  "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]}],
                                  "categories": [{"id": 3}, {"id": 7}]}))
    cfg = resolve_finetune_config(labels, "small_r18", init="none", iters=100)
    assert cfg.model.num_classes == 2 and not cfg.data.class_agnostic and cfg.init_checkpoint is None
    assert cfg.solver.max_iter == 100 and cfg.solver.steps == (75, 90) == scale_steps((375, 450), 500, 100)
    assert cfg.model.loss.mask_loss == "full" and cfg.model.loss.dice_weight == 3.0 and not cfg.data.two_views
    r101 = resolve_finetune_config(labels, "supervised_r101", init="none")
    assert r101.model.arch == "resnet101" and r101.solver.steps == (210000, 250000)
    for kw in ({}, {"init": "none", "init_backbone": str(labels)}):
        with pytest.raises(UnsoloError, match="exactly one"):
            resolve_finetune_config(labels, "small_r18", **kw)
    with pytest.raises(UnsoloError, match="not found"):
        resolve_finetune_config(labels, "small_r18", init=str(tmp_path / "nope.pth"))


# ------------------------------------------------------------------------------------------ end to end
def test_finetune_end_to_end_class_aware(tmp_path, capsys):
    from unsolo.data.synthetic import generate

    data = tmp_path / "data"
    generate(data, num_images=4, size=64, seed=5)
    full = json.loads((data / "annotations.json").read_text())
    # non-contiguous category ids, to check that predictions come back with the label file's ids
    for c in full["categories"]:
        c["id"] += 10
    for a in full["annotations"]:
        a["category_id"] += 10
    (tmp_path / "full.json").write_text(json.dumps(full))
    split = tmp_path / "split.json"
    assert main(["split-labels", str(tmp_path / "full.json"), "--percent", "50", "--mode", "masks", "--seed", "0",
                 "--out", str(split)]) == 0
    # a "FreeSOLO" checkpoint (class-agnostic, 1 channel) of the same architecture
    src = tiny_model(num_classes=1, seed=4)
    init = tmp_path / "unsolo.pth"
    save_checkpoint(init, src)
    run = tmp_path / "run"
    assert main(["finetune", "--train", str(split), "--images", str(data / "images"), "--init", str(init),
                 "--out", str(run), "--iters", "2", "--batch-size", "2", "--device", "cpu", "--lr", "0.0",
                 *TINY_SET]) == 0
    model = load_model(run / "model_final.pth")
    assert model.cfg.num_classes == 6 and model.cfg.category_ids == tuple(range(11, 17))
    # lr 0: the transferred tensors are still the checkpoint's, the classifier is new
    sd, src_sd = model.state_dict(), src.state_dict()
    assert torch.equal(sd["fpn.lateral2.weight"], src_sd["fpn.lateral2.weight"])
    assert torch.equal(sd["mask_head.conv_pred.0.weight"], src_sd["mask_head.conv_pred.0.weight"])
    assert sd["ins_head.cate_pred.weight"].shape[0] == 6
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs and all(r["loss_emb"] == 0 for r in recs) and any(r["loss_ins_max"] > 0 for r in recs)
    pred = tmp_path / "pred.json"
    assert main(["predict", str(data / "images"), "--model", str(run / "model_final.pth"), "--out", str(pred),
                 "--device", "cpu", "--workers", "0", "--short-side", "64", "--max-side", "64",
                 "--score-thr", "0.0", "--update-thr", "0.0", "--set", "inference.mask_thr=0.0"]) == 0
    preds = json.loads(pred.read_text())
    assert preds and {p["category_id"] for p in preds} <= set(range(11, 17))
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", str(tmp_path / "full.json"), "--pred", str(pred), "--class-aware",
                 "--out", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert "class-aware" in capsys.readouterr().out and 0.0 <= m.get("segm", m)["AP"] <= 1.0
    # a checkpoint of another architecture is refused with a one-line error
    other = tmp_path / "other.pth"
    save_checkpoint(other, build_model(ModelConfig(num_classes=1, **{**TINY, "fpn_channels": 64})))
    assert main(["finetune", "--train", str(split), "--images", str(data / "images"), "--init", str(other),
                 "--out", str(tmp_path / "run2"), "--iters", "1", "--device", "cpu", *TINY_SET]) == 2
    assert "does not fit the model" in capsys.readouterr().err
