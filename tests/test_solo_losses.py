"""FreeSOLO targets and losses against hand-computed cases (spec sections 4-5)."""

import math
import typing

import numpy as np
import pytest
import torch

from unsolo.modeling.losses import (
    MASK_LOSSES,
    LevelMasks,
    LossConfig,
    MaskLossName,
    avg_projection_dice,
    dice_coefficient,
    embedding_loss,
    image_color_similarity,
    max_projection_dice,
    pairwise_log_loss,
    pairwise_loss,
    projection_box_mask,
    rgb2lab,
    sigmoid_focal_loss,
    unfold_wo_center,
)
from unsolo.modeling.targets import assign_targets, center_of_mass, downsample_masks


# ------------------------------------------------------------------------------------------- Dice
def test_dice_coefficient_by_hand():
    x = torch.tensor([[1.0, 0.0, 0.5]])
    t = torch.tensor([[1.0, 0.0, 1.0]])
    expected = 1 - 2 * 1.5 / (1 + 0.25 + 2 + 1e-5)
    assert dice_coefficient(x, t).item() == pytest.approx(expected, abs=1e-7)


def test_projection_dice_by_hand():
    probs = torch.tensor([[[0.2, 0.8], [0.4, 0.0]]])  # (1, 2, 2)
    tgt = torch.tensor([[[0, 1], [0, 0]]], dtype=torch.uint8)

    def d(a, b):
        return 1 - 2 * sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) + sum(y * y for y in b) + 1e-5)

    # max over rows (dim 1) -> x-projection; max over columns (dim 2) -> y-projection
    exp_max = d([0.4, 0.8], [0, 1]) + d([0.8, 0.4], [1, 0])
    exp_avg = d([0.3, 0.4], [0, 0.5]) + d([0.5, 0.2], [0.5, 0])
    assert max_projection_dice(probs, tgt).item() == pytest.approx(exp_max, abs=1e-6)
    assert avg_projection_dice(probs, tgt).item() == pytest.approx(exp_avg, abs=1e-6)


# ------------------------------------------------------------------------------------------- pairwise
def test_unfold_wo_center_neighbours():
    x = torch.arange(49.0).reshape(1, 1, 7, 7)
    u = unfold_wo_center(x, 3, 2)  # (1, 1, 8, 7, 7)
    assert u.shape == (1, 1, 8, 7, 7)
    # neighbours of (3, 3) at dilation 2, row-major, centre excluded
    expected = [x[0, 0, 3 + dy, 3 + dx].item() for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    assert u[0, 0, :, 3, 3].tolist() == expected
    assert u[0, 0, 0, 0, 0].item() == 0.0  # zero padding


def test_pairwise_log_loss_by_hand():
    logits = torch.zeros(1, 6, 6)
    loss = pairwise_log_loss(logits)
    assert loss.shape == (1, 8, 6, 6)
    assert loss[0, :, 3, 3].tolist() == pytest.approx([math.log(2)] * 8, abs=1e-6)  # p=0.5: -log(0.5)
    a, b = 2.0, -1.0
    logits = torch.full((1, 6, 6), b)
    logits[0, 3, 3] = a
    pa, pb = 1 / (1 + math.exp(-a)), 1 / (1 + math.exp(-b))
    same = pa * pb + (1 - pa) * (1 - pb)
    assert pairwise_log_loss(logits)[0, 0, 3, 3].item() == pytest.approx(-math.log(same), rel=1e-5)
    big = torch.full((1, 6, 6), 60.0)  # stable in log space
    assert torch.isfinite(pairwise_log_loss(big)).all() and pairwise_log_loss(big)[0, :, 3, 3].max() < 1e-6


def test_pairwise_loss_weights_inside_projection_box():
    tgt = torch.zeros(1, 12, 12, dtype=torch.uint8)
    tgt[0, 3, 3] = 1
    tgt[0, 6, 7] = 1  # projection box rows {3, 6} x cols {3, 7}: every neighbour lies inside the map
    box = projection_box_mask(tgt)
    assert box.sum().item() == 4 and box[0, 6, 3] == 1 and box[0, 4, 4] == 0
    logits = torch.zeros(1, 12, 12)
    sim = torch.ones(1, 8, 12, 12)
    assert pairwise_loss(logits, tgt, sim).item() == pytest.approx(math.log(2), abs=1e-6)
    sim[:, :, 6, 3] = 0.29  # below the 0.3 threshold: that pixel's pairs are ignored
    logits[0, 3, 3] = 3.0
    losses = pairwise_log_loss(logits)
    w = torch.zeros(1, 8, 12, 12)
    for y, x in ((3, 3), (3, 7), (6, 7)):
        w[0, :, y, x] = 1
    assert pairwise_loss(logits, tgt, sim).item() == pytest.approx(((losses * w).sum() / w.sum()).item(), rel=1e-6)
    assert pairwise_loss(logits, torch.zeros_like(tgt), sim).item() == 0.0  # no box -> clamp(min=1) -> 0


# ------------------------------------------------------------------------------------------- colour
def test_rgb2lab_matches_skimage():
    from skimage.color import rgb2lab as sk_rgb2lab

    g = np.random.default_rng(0)
    img = g.integers(0, 256, size=(40, 33, 3), dtype=np.uint8)
    img[0, :] = np.arange(33)[:, None] * 7  # dark values (linear sRGB branch)
    img[1, :] = 255
    ours = rgb2lab(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    ref = sk_rgb2lab(img)
    assert np.abs(ours - ref).max() < 1e-3


def test_color_similarity_uniform_image_and_validity():
    img = torch.full((3, 32, 32), 100.0)
    valid = torch.ones(32, 32)
    valid[28:] = 0  # removed bottom rows
    sim = image_color_similarity(img, valid)  # (1, 8, 8, 8)
    assert sim.shape == (1, 8, 8, 8)
    # interior pixel, every neighbour inside and valid: similarity exp(0) = 1
    assert sim[0, :, 3, 3].tolist() == pytest.approx([1.0] * 8)
    assert sim[0, 0, 0, 0].item() == 0.0  # neighbour outside the image
    assert sim[0, 6, 5, 3].item() == 0.0  # neighbour (7, 3) lies in the removed bottom rows (row 30 at full res)
    img2 = img.clone()
    img2[:, 12:16, 12:16] = 200.0  # one stride-4 cell of another colour
    sim2 = image_color_similarity(img2, torch.ones(32, 32))
    assert sim2[0, 0, 5, 5].item() < 0.3 and sim2[0, 1, 5, 5].item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- focal / emb
def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    tgt = torch.tensor([[1.0, 0.0]])
    p2 = 1 / (1 + math.exp(-2.0))
    expected = 0.25 * 0.25 * math.log(2) + 0.75 * p2**2 * -math.log(1 - p2)
    assert sigmoid_focal_loss(logits, tgt).item() == pytest.approx(expected, rel=1e-6)


def test_embedding_loss_masks_zero_targets():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    tgt = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # parallel, orthogonal, unknown
    assert embedding_loss(pred, tgt).item() == pytest.approx(0.5)
    assert embedding_loss(pred, torch.zeros_like(tgt)) is None
    assert torch.isfinite(embedding_loss(torch.zeros(1, 2), torch.ones(1, 2)))


# ------------------------------------------------------------------------------------------- targets
def test_downsample_masks_sizes_and_rounding():
    m = torch.ones(2, 10, 14, dtype=torch.bool)
    out = downsample_masks(m)
    assert out.shape == (2, 3, 4) and out.dtype == torch.uint8 and bool((out == 1).all())
    import cv2

    g = torch.Generator().manual_seed(0)
    r = torch.rand(1, 37, 53, generator=g) > 0.5
    ref = cv2.resize(r[0].numpy().astype(np.uint8), (int(53 / 4 + 0.5), int(37 / 4 + 0.5)), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(downsample_masks(r)[0].numpy(), ref)


def test_center_of_mass():
    m = torch.zeros(1, 5, 6)
    m[0, 1, 2] = m[0, 3, 4] = 1
    cx, cy = center_of_mass(m)
    assert (cx.item(), cy.item()) == (3.0, 2.0)


def test_assign_targets_by_hand():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 16:48, 16:48] = True  # box 32x32, centre (31.5, 31.5)
    masks[1, 16:48, 16:48] = True  # the same object again: duplicate cells
    boxes = torch.tensor([[16, 16, 48, 48]] * 2 + [[0, 0, 40, 40]], dtype=torch.float32)  # third mask is empty
    labels = torch.tensor([0, 0, 0])
    embs = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4) + 1
    levels = assign_targets(boxes, masks, labels, embs, (64, 64), grids=(4, 8), scale_ranges=((1, 40), (30, 100)),
                            num_classes=1, sigma=0.2)
    l0, l1 = levels  # sqrt(32*32) = 32 is in both (inclusive, overlapping) ranges
    # S=4: centre cell floor(31.5/64*4) = 1; sigma box 31.5 -+ 3.2 -> cells 1..2 on both axes
    assert l0.grid_order.tolist() == [5, 6, 9, 10, 5, 6, 9, 10]
    assert l0.positive.nonzero().flatten().tolist() == [5, 6, 9, 10]
    assert l0.cate[1:3, 1:3].eq(0).all() and (l0.cate == 0).sum() == 4 and (l0.cate == 1).sum() == 12
    assert torch.equal(l0.emb[1, 1], embs[1])  # the later instance overwrites
    assert l0.masks.shape == (8, 16, 16) and l0.masks[0, 4:12, 4:12].all() and l0.masks[0].sum() == 64
    # S=8: centre cell floor(31.5/8) = 3; box 28.3..34.7 -> cells 3..4
    assert l1.grid_order.tolist()[:4] == [27, 28, 35, 36]
    # nothing is assigned to a level whose range misses the instance
    none = assign_targets(boxes[:1], masks[:1], labels[:1], embs[:1], (64, 64), (4,), ((100, 200),), 1)[0]
    assert none.grid_order.numel() == 0 and none.masks.shape == (0, 16, 16) and (none.cate == 1).all()


def test_assign_targets_clamps_to_3x3():
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 0:64, 0:64] = True  # huge object: sigma box spans many cells, clamped to 3x3 around the centre
    boxes = torch.tensor([[0, 0, 64, 64]], dtype=torch.float32)
    lvl = assign_targets(boxes, masks, torch.tensor([0]), torch.zeros(1, 4), (64, 64), (16,), ((1, 100),), 1, 0.5)[0]
    rows = sorted({i // 16 for i in lvl.grid_order.tolist()})
    cols = sorted({i % 16 for i in lvl.grid_order.tolist()})
    assert rows == [6, 7, 8] and cols == [6, 7, 8]


# ------------------------------------------------------------------------------------------- mask-loss table
def test_mask_loss_names_are_the_table_keys():
    assert set(MASK_LOSSES) == set(typing.get_args(MaskLossName)) == {"weak", "full"}


@pytest.mark.parametrize("name", sorted(MASK_LOSSES))
def test_every_mask_loss_gives_the_three_terms_with_gradients(name):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 16, 20, generator=g, requires_grad=True)
    targets = torch.zeros(3, 16, 20, dtype=torch.uint8)
    targets[:, 4:12, 5:15] = 1
    sims = [torch.rand(1, 8, 16, 20, generator=g), torch.rand(1, 8, 16, 20, generator=g)]
    level = LevelMasks(logits, targets, torch.tensor([True, False, True]), [2, 1], sims)
    zero = logits.sum() * 0
    out = MASK_LOSSES[name].fn([level], LossConfig(mask_loss=name), 0.5, zero)
    assert set(out) == {"loss_ins", "loss_ins_max", "loss_pairwise"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    sum(out.values()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    empty = MASK_LOSSES[name].fn([], LossConfig(mask_loss=name), 1.0, zero)  # no positive cell: every term is zero
    assert all(v is zero for v in empty.values())


def test_full_mask_loss_is_the_dice_of_whole_masks_without_box_supervision():
    logits = torch.tensor([[[4.0, -4.0], [4.0, 4.0]]])
    targets = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.uint8)
    level = LevelMasks(logits, targets, torch.tensor([True]), [1], [None])
    cfg = LossConfig(mask_loss="full", dice_weight=2.0)
    out = MASK_LOSSES["full"].fn([level], cfg, 1.0, torch.zeros(()))
    expected = 2.0 * dice_coefficient(torch.sigmoid(logits), targets).mean()
    assert float(out["loss_ins"]) == pytest.approx(float(expected))
    assert float(out["loss_ins_max"]) == 0.0 and float(out["loss_pairwise"]) == 0.0  # box-supervised terms only
