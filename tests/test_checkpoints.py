"""Backbone weights from DenseCL / MoCo / torchvision / detectron2 checkpoint layouts."""

import pickle
import re

import pytest
import torch
import torchvision

from unsolo.compat.checkpoints import detect_arch, load_backbone_weights, normalize_key
from unsolo.errors import UnsoloError
from unsolo.modeling.backbone import ResNetBackbone


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, so a wrong mapping shows
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.state_dict()


def assert_loaded(model, sd):
    got = model.state_dict()
    for k, v in sd.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(got[k], v), k


def to_d2(name):
    """torchvision name -> detectron2 name, like convert-pretrain-to-detectron2.py."""
    if "layer" not in name:
        name = "stem." + name
    name = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", name)
    name = re.sub(r"bn(\d)", r"conv\1.norm", name)
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def test_release_training_ddp_and_torchvision_layouts(tmp_path, r18):
    no_fc = {k: v for k, v in r18.items() if not k.startswith("fc.")}
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in no_fc.items()}
    layouts = {
        "release.pth": {"state_dict": no_fc, "author": "DenseCL"},
        "torchvision.pth": r18,
        "densecl_train.pth": {
            "state_dict": {
                **{f"encoder_q.0.{k}": v for k, v in no_fc.items()},
                **{f"encoder_k.0.{k}": v for k, v in other.items()},  # the key encoder must NOT be used
                "encoder_q.1.mlp.0.weight": torch.zeros(4, 512),
                "queue": torch.zeros(128, 16),
                "queue2_ptr": torch.zeros(1, dtype=torch.long),
            },
            "meta": {"epoch": 3},
        },
        "moco_ddp.pth": {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in r18.items()}, "module.queue": torch.zeros(2)}},
        "backbone_prefix.pth": {"model": {f"backbone.{k}": v for k, v in no_fc.items()}},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        model = ResNetBackbone("resnet18")
        rep = load_backbone_weights(model, tmp_path / name)
        assert rep.loaded == len(model.state_dict()) and not rep.missing and not rep.unexpected, (name, rep)
        assert_loaded(model, r18)


def test_detectron2_names_in_pkl_and_pth(tmp_path, r18):
    d2 = {to_d2(k): v.numpy() for k, v in r18.items() if not k.startswith("fc.")}
    assert normalize_key("res3.0.shortcut.norm.running_var") == "layer2.0.downsample.1.running_var"
    assert normalize_key("stem.conv1.norm.weight") == "bn1.weight"
    with open(tmp_path / "r18.pkl", "wb") as f:
        pickle.dump({"model": d2, "__author__": "OpenSelfSup", "matching_heuristics": True}, f)
    torch.save({"model": {f"backbone.{k}": torch.from_numpy(v) for k, v in d2.items()}}, tmp_path / "d2.pth")
    for name in ("r18.pkl", "d2.pth"):
        model = ResNetBackbone("resnet18")
        rep = load_backbone_weights(model, tmp_path / name)
        assert rep.layout == "detectron2" and not rep.missing, name
        assert_loaded(model, r18)


def test_pkl_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(UnsoloError, match="refusing|cannot read"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "evil.pkl")


def test_wrong_depth_suggests_arch(tmp_path, r18):
    torch.save({"state_dict": r18}, tmp_path / "r18.pth")
    with pytest.raises(UnsoloError, match=r"layer1\.0\.conv1\.weight.*--arch resnet18|--arch resnet18"):
        load_backbone_weights(ResNetBackbone("resnet50"), tmp_path / "r18.pth")
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")  # same shapes, more blocks
    with pytest.raises(UnsoloError, match="resnet34.*--arch resnet34"):
        load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "r34.pth")
    assert detect_arch(list(torchvision.models.resnet101().state_dict())) == "resnet101"


def test_partial_checkpoint_reports_missing(tmp_path, r18, caplog):
    part = {k: v for k, v in r18.items() if not k.startswith("layer4.")}
    torch.save(part, tmp_path / "part.pth")
    rep = load_backbone_weights(ResNetBackbone("resnet18"), tmp_path / "part.pth")
    assert rep.missing and all(k.startswith("layer4.") for k in rep.missing)
    assert "missing" in caplog.text


def test_unusable_files(tmp_path):
    model = ResNetBackbone("resnet18")
    with pytest.raises(UnsoloError, match="not found"):
        load_backbone_weights(model, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UnsoloError, match="cannot read"):
        load_backbone_weights(model, tmp_path / "junk.pth")
    torch.save({"decoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UnsoloError, match="no backbone weight"):
        load_backbone_weights(model, tmp_path / "other.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UnsoloError, match="state dict"):
        load_backbone_weights(model, tmp_path / "list.pth")
