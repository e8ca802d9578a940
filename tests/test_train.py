"""``unsolo train``: schedule, optimizer groups, weight loading, the loop end to end (tiny model, CPU)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from unsolo.cli import main
from unsolo.compat.checkpoints import load_backbone_weights
from unsolo.compat.solo_checkpoint import load_model
from unsolo.data.coco import instance_records, make_annotation_file, write_annotation_file
from unsolo.errors import UnsoloError
from unsolo.modeling.backbone import ResNetBackbone
from unsolo.modeling.solov2 import ModelConfig, build_model
from unsolo.pipeline.train import (
    SolverConfig,
    learning_rate,
    lr_schedule,
    param_groups,
    resolve_train_config,
)
from solo_train_fixtures import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]

# A tiny SOLOv2 on 64 px images: every test of the loop runs in seconds per iteration on 2 CPU cores.
TINY = [  # on the official recipe's base (without --preset a CPU run takes the CPU preset)
    "--preset", "freesolo_r101", "--set", "model.arch=resnet18", "--set", "model.fpn_channels=32", "--set", "model.ins_channels=32",
    "--set", "model.num_ins_convs=1", "--set", "model.mask_channels=32", "--set", "model.num_kernels=32",
    "--set", "model.grids=[8,8,6,4,2]", "--set", "data.min_sizes=[64]", "--set", "data.max_size=64",
    "--set", "solver.log_period=1", "--set", "solver.warmup_iters=0", "--set", "solver.clip_grad_norm=2.0",
    "--set", "model.loss.warmup_iters=1", "--device", "cpu", "--workers", "0",
]
NO_PHOTOMETRY = [
    "--set", "data.strong.jitter_prob=0", "--set", "data.strong.grayscale_prob=0", "--set", "data.strong.blur_prob=0",
    "--set", "data.strong.erasing=[]", "--set", "data.flip_prob=0",
]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def square_shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("sq"), n_images=2, sizes=((64, 64),), objects=(2,))


# ---------------------------------------------------------------------------------- pure pieces
def test_lr_schedule_is_detectron2_warmup_multistep():
    cfg = SolverConfig(max_iter=2000, warmup_iters=1000, warmup_factor=0.01)
    lrs = lr_schedule(cfg, 0.001)
    assert lrs.shape == (2000,)
    assert math.isclose(lrs[0], 1e-5) and math.isclose(lrs[500], 0.001 * (0.01 * 0.5 + 0.5))
    assert math.isclose(lrs[1000], 0.001) and math.isclose(lrs[1999], 0.001)  # constant after the warm-up
    stepped = lr_schedule(SolverConfig(max_iter=2000, warmup_iters=10, steps=(1500,)), 0.001)
    assert math.isclose(stepped[1499], 0.001) and math.isclose(stepped[1500], 1e-4)
    assert math.isclose(learning_rate(SolverConfig(), 32), 0.002)  # linear scaling from 16 images
    assert learning_rate(SolverConfig(lr=0.05), 32) == 0.05


def test_no_weight_decay_on_norm_layers():
    model = build_model(ModelConfig(arch="resnet18", fpn_channels=32, ins_channels=32, num_ins_convs=1, mask_channels=32,
                                    num_kernels=32))
    decay, no_decay = param_groups(model, 1e-4, 0.0)
    gn = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    assert gn and {id(p) for p in no_decay["params"]} == gn and no_decay["weight_decay"] == 0.0
    assert decay["weight_decay"] == 1e-4
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_backbone_weights_load_by_name_and_fail_clearly(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(tv.conv1.weight)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    bb = ResNetBackbone("resnet18")
    load_backbone_weights(bb, path)  # the project's one loader (DenseCL, MoCo, torchvision, detectron2 layouts)
    assert torch.equal(bb.conv1.weight, tv.conv1.weight)
    assert torch.equal(bb.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    with pytest.raises(UnsoloError):
        load_backbone_weights(ResNetBackbone("resnet50"), path)
    with pytest.raises(UnsoloError, match="not found"):
        load_backbone_weights(bb, tmp_path / "missing.pth")


def test_presets_resolve():
    small = resolve_train_config("small_r18")
    assert small.model.arch == "resnet18" and small.solver.ims_per_batch == 4 and max(small.data.min_sizes) <= 320
    official = resolve_train_config("freesolo_r101")
    assert official.model.arch == "resnet101" and official.solver.max_iter == 30000
    assert official.solver.base_lr == 0.001 and official.data.min_sizes == (640, 672, 704, 736, 768, 800)
    # the paper's weak losses at the paper's scale; full-mask Dice in the CPU preset (measured, docs/ablations.md)
    assert official.model.loss.mask_loss == "weak" and small.model.loss.mask_loss == "full"
    assert resolve_train_config("small_r18", ["model.loss.mask_loss=weak"]).model.loss.mask_loss == "weak"


# ------------------------------------------------------------------------------------ the loop
def test_tiny_model_overfits_a_few_images(tmp_path):
    assert main(["synth", str(tmp_path / "synth"), "--num-images", "2", "--size", "64", "--seed", "0"]) == 0
    folder, labels = tmp_path / "synth" / "images", tmp_path / "synth" / "annotations.json"  # ground truth as labels
    run = tmp_path / "run"
    rc = main(["train", str(folder), "--labels", str(labels), "--out", str(run), "--iters", "10", "--batch-size", "2",
               "--lr", "0.01", "--set", "data.copy_paste=false", *TINY, *NO_PHOTOMETRY])
    assert rc == 0
    recs = read_metrics(run)
    assert [r["iteration"] for r in recs] == list(range(10))
    assert {"loss", "loss_ins", "loss_ins_max", "loss_pairwise", "loss_cate", "lr", "time", "data_time"} <= recs[0].keys()
    first, last = recs[0], recs[-1]
    assert last["loss"] < 0.6 * first["loss"], (first, last)  # falls clearly (measured: 2.74 -> 1.23)
    assert last["loss_ins_max"] < 0.5 * first["loss_ins_max"] and last["loss_cate"] < first["loss_cate"]
    for name in ("config.yaml", "loss_curves.png", "model_final.pth", "last_checkpoint"):
        assert (run / name).is_file(), name
    model = load_model(run / "model_final.pth")  # the checkpoint format the other stages read
    assert model.cfg.arch == "resnet18" and not model.training


def test_image_with_zero_masks_gives_finite_losses(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(folder / "1.png")
    dot = np.zeros((1, 128, 128), bool)
    dot[0, 2, 2] = True  # a one-pixel pseudo-mask that vanishes when the image is resized to 64 px
    write_annotation_file(tmp_path / "l.json", make_annotation_file(
        [{"id": 1, "file_name": "1.png", "height": 128, "width": 128}], instance_records(1, dot, scores=[0.9])))
    from unsolo.data.train_dataset import PseudoLabelDataset, load_training_set

    items, cmap = load_training_set(folder, tmp_path / "l.json")
    assert PseudoLabelDataset(items, cmap, min_sizes=(64,), max_size=64)[(0, 1)]["instances"]["masks"].shape == (0, 64, 64)
    run = tmp_path / "run"
    assert main(["train", str(folder), "--labels", str(tmp_path / "l.json"), "--out", str(run), "--iters", "1",
                 "--batch-size", "1", "--set", "data.strong_on_device=true", "--amp", "--tensorboard", *TINY]) == 0
    (rec,) = read_metrics(run)
    assert all(math.isfinite(v) for k, v in rec.items() if k.startswith("loss")), rec
    assert "--amp needs a CUDA device" in caplog.text  # CPU: float32, with a warning
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard package is not installed" in caplog.text
    else:
        assert any((run / "tensorboard").iterdir())


def test_resume_reproduces_the_uninterrupted_loss_curve(square_shapes, tmp_path):
    folder, labels = square_shapes
    run = tmp_path / "run"
    args = ["train", str(folder), "--labels", str(labels), "--out", str(run), "--iters", "3", "--batch-size", "2",
            "--lr", "0.005", "--set", "solver.checkpoint_period=2", *TINY]  # full augmentation + copy-paste
    assert main(args) == 0
    full = read_metrics(run)
    assert (run / "model_0000001.pth").is_file() and (run / "model_final.pth").is_file()
    # simulate a crash after the checkpoint of iteration 1
    (run / "model_final.pth").unlink()
    (run / "last_checkpoint").write_text("model_0000001.pth")
    assert main(args) == 0
    resumed = read_metrics(run)
    assert [r["iteration"] for r in resumed] == [0, 1, 2]
    assert resumed[:2] == full[:2]  # lines before the checkpoint are kept as they were
    for k in full[2]:
        if k.startswith("loss"):  # same data, augmentations, copy-paste draws, weights and momentum
            assert full[2][k] == pytest.approx(resumed[2][k], rel=1e-5, abs=1e-7), (k, full[2], resumed[2])
    ckpt = torch.load(run / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 2 and int(ckpt["model"]["_iter"]) == 3  # 3 training forwards in all
    assert main(args) == 0 and read_metrics(run) == resumed  # finished: a third call has nothing to do


def test_init_checkpoint_copies_every_weight(square_shapes, tmp_path):
    folder, labels = square_shapes
    base = ["train", str(folder), "--labels", str(labels), "--iters", "1", "--batch-size", "1", *TINY]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    # a learning rate of 0 leaves the initial weights as they are: B's final weights are A's
    assert main([*base, "--out", str(tmp_path / "b"), "--lr", "0", "--seed", "5",
                 "--init-checkpoint", str(tmp_path / "a" / "model_final.pth")]) == 0
    a = torch.load(tmp_path / "a" / "model_final.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k != "_iter")
    assert int(b["_iter"]) == 1  # the warm-up counter started again
    bad = ["train", str(folder), "--labels", str(labels), "--out", str(tmp_path / "c"), "--iters", "1",
           "--init-checkpoint", str(tmp_path / "a" / "model_final.pth"), "--device", "cpu"]  # default R-101 model
    assert main(bad) == 2


def test_frozen_backbone_stages_and_adamw(square_shapes, tmp_path):
    """model.freeze_at keeps the first stages as loaded (detectron2's FREEZE_AT) while the rest trains, here with
    the AdamW option; an out-of-range value is a one-line error."""
    folder, labels = square_shapes
    weights = tmp_path / "backbone.pth"
    torch.save(ResNetBackbone("resnet18").state_dict(), weights)
    init = torch.load(weights, weights_only=True)
    run = tmp_path / "run"
    args = ["train", str(folder), "--labels", str(labels), "--out", str(run), "--iters", "2", "--batch-size", "1",
            "--lr", "0.001", "--backbone-weights", str(weights), "--set", "model.freeze_at=2",
            "--set", "solver.optimizer=adamw", *TINY]
    assert main(args) == 0
    trained = {k[len("backbone."):]: v for k, v in torch.load(run / "model_final.pth", weights_only=True)["model"].items()
               if k.startswith("backbone.")}
    assert init.keys() == trained.keys()
    frozen = [k for k in init if k.startswith(("conv1.", "layer1."))]
    moved = [k for k in init if k.startswith(("layer2.", "layer3.", "layer4.")) and "conv" in k]
    assert frozen and all(torch.equal(init[k], trained[k]) for k in frozen)
    assert moved and all(not torch.equal(init[k], trained[k]) for k in moved)
    model = build_model(ModelConfig(arch="resnet18", freeze_at=5))
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.fpn.parameters())
    with pytest.raises(UnsoloError, match="freeze_at"):
        build_model(ModelConfig(arch="resnet18", freeze_at=6))
    bad = ["train", str(folder), "--labels", str(labels), "--out", str(tmp_path / "bad"), "--iters", "1",
           "--set", "solver.optimizer=adam", *TINY]
    assert main(bad) == 2


def test_non_finite_loss_stops_with_the_loss_dict(square_shapes, tmp_path, monkeypatch, capsys):
    from unsolo.modeling import solov2

    def nan_forward(self, batch):
        x = sum(p.sum() for p in self.parameters()) * 0
        return {"loss_ins": x + float("nan"), "loss_cate": x + 1.0}

    monkeypatch.setattr(solov2.SOLOv2, "forward", nan_forward)
    folder, labels = square_shapes
    rc = main(["train", str(folder), "--labels", str(labels), "--out", str(tmp_path / "run"), "--iters", "3",
               "--batch-size", "1", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite loss at iteration 0" in err and "loss_ins=nan" in err and "loss_cate=1" in err


def test_bad_input_is_a_one_line_error(square_shapes, tmp_path, capsys):
    folder, _ = square_shapes
    assert main(["train", str(folder), "--labels", str(tmp_path / "none.json"), "--out", str(tmp_path / "r")]) == 2
    assert "pseudo-label file not found" in capsys.readouterr().err
    assert main(["train", str(folder), "--labels", "x.json", "--out", "r", "--preset", "nope"]) == 2
    assert "unknown train preset" in capsys.readouterr().err


def test_two_process_torchrun_keeps_replicas_identical(square_shapes, tmp_path):
    folder, labels = square_shapes
    run = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port: other test runs may use torchrun's default one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "unsolo", "train",
           str(folder), "--labels", str(labels), "--out", str(run), "--iters", "2", "--batch-size", "2",
           "--lr", "0.01", "--set", "solver.checkpoint_period=1", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "model_final.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["replica_checksums"]) == 2
    assert ckpt["replica_checksums"][0] == ckpt["replica_checksums"][1]
    first = torch.load(run / "model_0000000.pth", weights_only=True)
    assert first["replica_checksums"][0] == first["replica_checksums"][1]
    assert first["replica_checksums"][0] != ckpt["replica_checksums"][0]  # the weights did change
    assert len(read_metrics(run)) == 2
