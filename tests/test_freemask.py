"""Free Mask core on hand-built feature maps (no backbone)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unsolo.config import resolve
from unsolo.generators import FreeMaskResult
from unsolo.generators.freemask import (
    FreeMask,
    FreeMaskConfig,
    channel_embedding,
    free_mask,
    free_mask_candidates,
    pyramid_queries,
    resized_size,
    similarity_maps,
)


def scene(h=16, w=16, c=8):
    """Feature map with orthogonal vectors: background e0, object A e1, object B e2 (non-negative like res5)."""
    f = torch.zeros(c, h, w)
    f[0] = 1.0
    regions = {"A": (slice(10, 14), slice(2, 6)), "B": (slice(8, 15), slice(9, 14))}
    for k, (ys, xs) in zip((1, 2), regions.values()):
        f[:, ys, xs] = 0
        f[k, ys, xs] = 1.0
    return f, regions


def test_query_count_matches_official_example():
    q = pyramid_queries(torch.rand(4, 25, 38))
    assert q.shape == (950 + 12 * 19 + 6 * 9, 4)  # 1232 queries for a 25x38 map


def test_pyramid_uses_scale_factor_semantics_for_odd_sizes():
    keys = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 4).contiguous()  # row r has value r
    q = pyramid_queries(keys, (0.5,))  # 5 -> 2 rows, source y = 2 * y + 0.5
    assert torch.allclose(q.view(2, 2)[:, 0], torch.tensor([0.5, 2.5]))
    # the size-ratio variant (ratio 2.5) would give other queries: the official code is the scale_factor one
    by_size = F.interpolate(keys[None], size=(2, 2), mode="bilinear", align_corners=False)[0, 0, :, 0]
    assert not torch.allclose(by_size, torch.tensor([0.5, 2.5]))
    keys8 = torch.arange(8.0).view(1, 8, 1).expand(1, 8, 8).contiguous()
    q4 = pyramid_queries(keys8, (0.25,)).view(2, 2)[:, 0]  # the middle 2 rows of each block of 4
    assert torch.allclose(q4, torch.tensor([1.5, 5.5]))
    assert torch.equal(pyramid_queries(keys8, (1.0,)), keys8.reshape(1, -1).t())  # scale 1 is the identity


def test_similarity_min_max_per_query_and_constant_rows():
    keys = torch.rand(6, 5, 7)
    soft = similarity_maps(keys, torch.rand(9, 6))
    flat = soft.view(9, -1)
    assert torch.allclose(flat.min(1).values, torch.zeros(9)) and torch.allclose(flat.max(1).values, torch.ones(9))
    const = similarity_maps(torch.ones(3, 4, 4), torch.ones(2, 3))  # every position equally similar
    assert torch.isfinite(const).all() and const.max() == 0


def test_embedding_is_mean_of_two_channels_per_bin():
    q = F.normalize(torch.rand(3, 2048), dim=1)
    emb = channel_embedding(q, 128)
    j = torch.arange(128)
    assert torch.allclose(emb, (q[:, 16 * j + 7] + q[:, 16 * j + 8]) / 2, atol=1e-7)
    assert channel_embedding(q[:0], 128).shape == (0, 128)


def test_objects_found_duplicates_suppressed_background_filtered():
    f, regions = scene()
    res = free_mask(f, (64, 64))
    assert len(res) == 2
    assert torch.allclose(res.scores, torch.ones(2))
    for name, (ys, xs) in regions.items():
        cell = torch.zeros(1, 1, 16, 16)
        cell[..., ys, xs] = 1.0  # the object at feature resolution, upsampled like the soft masks
        want = F.interpolate(cell, size=(64, 64), mode="bilinear", align_corners=False)[0, 0] >= 0.5
        assert sum(torch.equal(m, want) for m in res.masks) == 1, name
    assert res.embeddings.shape == (2, 128) and res.boxes.shape == (2, 4)
    x0, y0, x1, y1 = res.boxes[res.masks.sum((1, 2)).argmin()].tolist()
    assert (x0, y0, x1, y1) == (7.5, 39.5, 23.5, 55.5)  # projection box, XYXY


def test_filters_are_parameters():
    f, _ = scene()
    f[:, 0:2, 4:8] = 0
    f[3, 0:2, 4:8] = 1.0  # an object in the top 20 % of the image
    f[:, 15, :] = 0
    f[4, 15, :] = 1.0  # a full-width stripe at the bottom
    assert len(free_mask(f, (64, 64))) == 2
    assert len(free_mask(f, (64, 64), FreeMaskConfig(top_border=0.0))) == 3
    # without the width filter the stripe and the background itself come back
    assert len(free_mask(f, (64, 64), FreeMaskConfig(top_border=0.0, max_width_ratio=1.01))) == 5
    assert len(free_mask(f, (64, 64), FreeMaskConfig(maskness_threshold=1.01))) == 0
    assert len(free_mask(f, (64, 64), FreeMaskConfig(min_mask_pixels=40))) == 0
    assert len(free_mask_candidates(f, FreeMaskConfig(max_masks=3)).scores) == 3


def test_degenerate_inputs_give_empty_results():
    for f in (torch.zeros(8, 6, 6), torch.ones(8, 6, 6), torch.rand(8, 1, 1)):
        res = free_mask(f, (20, 30))
        assert len(res) == 0 and res.masks.shape == (0, 20, 30) and res.embeddings.shape == (0, 128)


def test_result_container_filter_and_cat():
    f, _ = scene()
    res = free_mask(f, (32, 32))
    one = res.filter(torch.tensor([1]))
    assert len(one) == 1 and torch.equal(one.masks[0], res.masks[1])
    both = FreeMaskResult.cat([one, res.filter(torch.tensor([True, False]))])
    assert len(both) == 2 and torch.equal(both.scores, res.scores.flip(0))


def test_resize_like_detectron2():
    assert resized_size(480, 640) == (800, 1067)
    assert resized_size(640, 480) == (1067, 800)
    assert resized_size(800, 1203) == (800, 1203)
    assert resized_size(100, 1000) == (133, 1333)
    assert resized_size(192, 192, 600) == (600, 600)


def test_config_defaults_are_official_and_presets_load():
    cfg = FreeMaskConfig()
    assert (cfg.feature_level, cfg.short_side, cfg.max_size) == ("res5", 800, 1333)
    assert (cfg.query_scales, cfg.mask_threshold, cfg.nms_sigma, cfg.max_masks) == ((1.0, 0.5, 0.25), 0.5, 2.0, 20)
    assert (cfg.maskness_threshold, cfg.top_border, cfg.max_width_ratio, cfg.emb_dim) == (0.7, 0.2, 0.95, 128)
    assert resolve(FreeMaskConfig, "freemask", "official") == cfg
    small = resolve(FreeMaskConfig, "freemask", "small", ["nms_sigma=3"])
    assert (small.feature_level, small.short_side, small.maskness_threshold, small.nms_sigma) == ("res4", 600, 0.5, 3.0)


@pytest.mark.parametrize("level", ["res4", "res5"])
def test_batched_forward_equals_single_images(level):
    from unsolo.pipeline.freemask import build_backbone, run_images

    torch.manual_seed(0)
    model = build_backbone("resnet18", None, torch.device("cpu"))
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    cfg = FreeMaskConfig(feature_level=level, maskness_threshold=0.0, top_border=0.0, max_width_ratio=2.0)
    batched = run_images(model, imgs, [(96, 128)] * 3, FreeMask(cfg), torch.device("cpu"))
    for img, b in zip(imgs, batched):
        (s,) = run_images(model, [img], [(96, 128)], FreeMask(cfg), torch.device("cpu"))
        assert len(s) == len(b) > 0
        assert torch.equal(s.masks, b.masks)
        assert torch.allclose(s.scores, b.scores, atol=1e-5) and torch.allclose(s.embeddings, b.embeddings, atol=1e-5)


def test_folding_bn_keeps_the_features():
    from unsolo.modeling.backbone import ResNetBackbone, fold_frozen_bn
    from unsolo.pipeline.freemask import backbone_features

    torch.manual_seed(0)
    model = ResNetBackbone("resnet18").eval()
    for name, buf in model.named_buffers():  # non-trivial frozen statistics
        if name.endswith("running_mean"):
            buf.uniform_(-0.5, 0.5)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        ref = backbone_features(model, x)
        model = fold_frozen_bn(model)
        out = backbone_features(model, x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) or "FrozenBatchNorm" in type(m).__name__ for m in model.modules())
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
