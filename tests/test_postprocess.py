import math

import numpy as np

import torch

from unsolo.modeling.postprocess import matrix_nms, projection_boxes


def test_matrix_nms_hand_computed():
    m = torch.zeros(3, 4, 4)
    m[0, :2, :2] = 1  # area 4
    m[1, :2, :] = 1  # area 8, iou with 0 = 4/8
    m[2, 2:, 2:] = 1  # disjoint
    s = torch.tensor([0.9, 0.8, 0.7])
    out = matrix_nms(m, s, sigma=2.0)
    assert torch.allclose(out, torch.tensor([0.9, 0.8 * math.exp(-2 * 0.25), 0.7]))
    lin = matrix_nms(m, s, kernel="linear")
    assert torch.allclose(lin, torch.tensor([0.9, 0.8 * 0.5, 0.7]))
    # different labels do not suppress each other
    assert torch.allclose(matrix_nms(m, s, labels=torch.tensor([0, 1, 0])), s)
    assert matrix_nms(torch.zeros(0, 4, 4), torch.zeros(0)).shape == (0,)


def test_matrix_nms_compensation():
    # mask 1 is itself suppressed by 0, so its effect on 2 is compensated
    m = torch.zeros(3, 1, 4)
    m[0, 0, :2] = 1
    m[1, 0, :3] = 1  # iou(0,1)=2/3
    m[2, 0, 1:3] = 1  # iou(0,2)=1/3, iou(1,2)=2/3
    s = torch.tensor([1.0, 1.0, 1.0])
    out = matrix_nms(m, s, sigma=2.0)
    g = lambda x: math.exp(-2 * x * x)
    d2 = min(g(1 / 3) / g(0), g(2 / 3) / g(2 / 3))
    assert torch.allclose(out, torch.tensor([1.0, g(2 / 3), d2]))


def test_projection_boxes():
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    m[1, 1, 1] = True
    m[1, 1, 5] = True  # gap: width 2 occupied columns, centre 3
    b = projection_boxes(m)
    assert torch.allclose(b[0], torch.tensor([2.5, 1.5, 8.5, 4.5]))
    assert torch.allclose(b[1], torch.tensor([2.0, 0.5, 4.0, 1.5]))


def test_tight_boxes_match_a_per_mask_scan():
    import numpy as np

    from unsolo.predictor import tight_boxes_xywh

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 37, 53, generator=g) > 0.995
    masks[3] = False  # empty mask -> zeros
    masks[5] = False
    masks[5, 36, 52] = True  # a single pixel in the last row and column
    expected = np.zeros((12, 4), dtype=np.float32)
    for k, m in enumerate(masks.numpy()):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            expected[k] = [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
    got = tight_boxes_xywh(masks)
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), expected)
    assert got[5].tolist() == [52.0, 36.0, 1.0, 1.0]
    assert tight_boxes_xywh(torch.zeros((0, 4, 4), dtype=torch.bool)).shape == (0, 4)


def test_mask_iou_and_greedy_one_to_one_matching():
    from unsolo.utils.masks import greedy_match, mask_iou

    a = np.zeros((3, 4, 4), bool)
    a[0, :2] = True
    a[1, 2:] = True
    a[2, :, :1] = True
    b = np.stack([a[1], a[0], a[0] | a[1]])
    iou = mask_iou(a, b)
    assert iou.shape == (3, 3) and iou[0, 1] == 1.0 and iou[1, 0] == 1.0 and abs(iou[0, 2] - 0.5) < 1e-6
    assert greedy_match(iou) == {0: 1, 1: 0}  # b[2] overlaps both at 0.5 only: not a match; a[2] has none
    assert mask_iou(a[:0], b).shape == (0, 3)
