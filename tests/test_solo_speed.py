"""SOLOv2 inference speed paths give the results of the straightforward computation.

Folded frozen BN, channels_last, pruned candidate masks and chunked final resizes against the plain versions.
"""

import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from unsolo.modeling.backbone import ResNetBackbone, fold_frozen_bn
from unsolo.modeling.inference import binary_masks_at_size, candidate_masks, resize_masks
from unsolo.modeling.solov2 import build_model, model_config


def _random_frozen_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.copy_(torch.rand(t.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_fold_frozen_bn_same_function_and_original_untouched():
    torch.manual_seed(0)
    bb = ResNetBackbone("resnet18").eval()
    _random_frozen_bn(bb)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    folded = fold_frozen_bn(bb)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in bb.modules()) == 20  # 1 stem + 16 block + 3 downsample
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = bb(x), folded(x.contiguous(memory_format=torch.channels_last))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5 * float(a[k].abs().max())), k
    assert all(torch.equal(v, bb.state_dict()[k]) for k, v in before.items())


def _reference_candidates(kernels, feat, scores, min_area, thr, nms_pre):
    """The official order of work: every mask, area filter, maskness, top nms_pre by final score."""
    soft = (kernels @ feat).sigmoid()
    binary = soft > thr
    area = binary.sum(1).float()
    keep = (area > min_area).nonzero().squeeze(1)
    mness = (soft[keep] * binary[keep]).sum(1) / area[keep]
    final = scores[keep] * mness
    order = torch.argsort(final, descending=True, stable=True)[:nms_pre]
    return keep[order], soft[keep][order], area[keep][order], mness[order]


def test_candidate_masks_prunes_but_keeps_the_same_top():
    g = torch.Generator().manual_seed(3)
    n, d, hw = 300, 16, 400
    kernels = torch.randn(n, d, generator=g)
    feat = torch.randn(d, hw, generator=g).relu()
    scores = torch.rand(n, generator=g) * 0.9 + 0.1
    min_area = torch.full((n,), 40.0)
    for nms_pre, chunk in ((20, 16), (500, 64), (60, 7)):
        got = candidate_masks(kernels, feat, scores, min_area, 0.5, nms_pre, chunk=chunk)
        ref = _reference_candidates(kernels, feat, scores, min_area, 0.5, nms_pre)
        assert torch.equal(got[0], ref[0]), nms_pre
        for a, b in zip(got[1:], ref[1:]):
            assert torch.allclose(a, b, atol=1e-6)
    none = candidate_masks(kernels, feat, scores, torch.full((n,), 1e9), 0.5, 10)
    assert none[0].numel() == 0 and none[1].shape == (0, hw)


def test_chunked_binary_resize_equals_resize_then_threshold():
    g = torch.Generator().manual_seed(0)
    soft = torch.rand(11, 8, 10, generator=g)
    for image_size, orig in (((30, 37), (30, 37)), ((30, 37), (61, 50))):
        got = binary_masks_at_size(soft, image_size, orig, 0.5, chunk=4)
        ref = resize_masks(soft, image_size, orig, (8, 10)) > 0.5
        assert got.dtype == torch.bool and torch.equal(got, ref)
    assert binary_masks_at_size(soft[:0], (30, 37), (5, 6), 0.5).shape == (0, 5, 6)


def test_inference_switches_agree_and_folded_copy_follows_weight_changes():
    torch.manual_seed(0)
    model = build_model(model_config("small_r18")).eval()
    _random_frozen_bn(model.backbone, seed=1)
    # make a few cells confident so that detections exist
    torch.nn.init.constant_(model.ins_head.cate_pred.bias, 0.0)
    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (1, 3, 64, 96), generator=g).float()
    x = (img - 128.0) / 64.0
    with torch.inference_mode():
        # the network outputs the post-processing reads, plain against folded BN + channels_last
        ref = model.predict_raw(x)
        got = model.predict_raw(x.contiguous(memory_format=torch.channels_last), model.inference_backbone(True))
        for a, b in zip([*ref[0], *ref[1], *ref[2], ref[3]], [*got[0], *got[1], *got[2], got[3]]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
        out = model.inference(img, [(64, 90)], [(70, 100)])[0]  # the defaults use both
    assert model.cfg.inference.fold_bn and model.cfg.inference.channels_last
    assert len(out["scores"]) > 0 and out["masks"].shape[1:] == (70, 100)
    first = model.inference_backbone(False)
    assert model.inference_backbone(False) is first  # cached
    assert "_folded_backbone" not in str(list(model.state_dict()))
    with torch.no_grad():
        model.backbone.conv1.weight.mul_(2.0)  # an in-place change (as an optimizer step) invalidates the copy
    second = model.inference_backbone(False)
    assert second is not first
    assert torch.allclose(second.conv1.weight, first.conv1.weight * 2.0)
