"""DropLoss (CutLER) for the SOLO category branch: negatives whose predicted masks overlap no target are not
pushed to background."""

from __future__ import annotations

import torch

from unsolo.modeling.losses import drop_loss_keep
from test_collapse_monitor import _batch, _tiny_model


def test_drop_loss_keep_drops_negatives_that_overlap_no_target():
    hw = 16
    targets = torch.zeros((1, hw), dtype=torch.bool)
    targets[0, :4] = True
    logits = torch.full((4, hw), -5.0)
    logits[0, :4] = 5.0  # negative cell on the target: kept
    logits[1, 8:12] = 5.0  # negative cell elsewhere: dropped
    logits[2, :] = 5.0  # covers everything: IoU 4/16 >= 0.01, kept
    # cell 3 predicts nothing: IoU 0, dropped
    negative = torch.tensor([True, True, True, True])
    keep = drop_loss_keep(lambda idx: logits[idx], 4, targets, negative, 0.01, chunk=3)
    assert keep.tolist() == [True, False, True, False]
    positive_only = drop_loss_keep(lambda idx: logits[idx], 4, targets, torch.tensor([False, True, False, False]), 0.01)
    assert positive_only.tolist() == [True, False, True, True]  # positives always keep their loss
    assert not drop_loss_keep(lambda idx: logits[idx], 4, targets[:0], negative, 0.01).any()  # no target at all


def test_drop_loss_only_removes_background_terms_from_the_focal_loss():
    batch = _batch()
    torch.manual_seed(0)
    ref = _tiny_model()
    state = ref.state_dict()

    def cate(**kw):
        m = _tiny_model(**kw)
        m.load_state_dict(state)
        return float(m(batch)["loss_cate"].detach()), m

    base, _ = cate()
    same, m0 = cate(drop_loss_iou=0.0)  # IoU >= 0 always: nothing dropped
    assert same == base and m0.drop_stats[0] == 0
    some, m1 = cate(drop_loss_iou=0.01)
    everything, m2 = cate(drop_loss_iou=1.01)  # no IoU reaches it: every negative dropped, positives remain
    dropped, negatives = m2.drop_stats.tolist()
    assert dropped == negatives > 0
    assert 0 < everything < some <= base
