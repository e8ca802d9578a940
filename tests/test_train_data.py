"""Training data pipeline of self-supervised SOLO: copy-paste, sampler, augmentations, dataset."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from unsolo.data.copy_paste import copy_paste, copy_paste_batch
from unsolo.data.samplers import GroupedBatchSampler, aspect_groups
from unsolo.data.coco import encode_mask
from unsolo.data.train_dataset import PseudoLabelDataset, load_training_set, spans_image
from unsolo.data.transforms import (
    StrongAugConfig,
    masks_to_boxes,
    resize_masks,
    shortest_edge_size,
    strong_view,
    transform_boxes,
)
from unsolo.errors import UnsoloError
from unsolo.pipeline.train import resolve_train_config, train
from solo_train_fixtures import make_shapes_dataset


# ----------------------------------------------------------------------------------------- helpers
def rect(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def instances(masks, emb_value=0.0):
    masks = torch.stack(masks) if masks else torch.zeros((0, 20, 20), dtype=torch.bool)
    n = masks.shape[0]
    return {
        "masks": masks,
        "boxes": masks_to_boxes(masks),
        "labels": torch.zeros(n, dtype=torch.int64),
        "embs": torch.full((n, 4), emb_value) + torch.arange(n)[:, None].float(),
        "scores": torch.ones(n),
    }


def seed_with_k(m: int, k: int) -> int:
    """A generator seed whose first copy-paste draw is ``k`` of ``0..m`` (the function is deterministic)."""
    for s in range(1000):
        if int(torch.randint(0, m + 1, (1,), generator=torch.Generator().manual_seed(s))) == k:
            return s
    raise AssertionError("no seed found")


def gen(seed):
    return torch.Generator().manual_seed(seed)


TARGET_IMG = torch.full((3, 20, 20), 10, dtype=torch.uint8)
SOURCE_IMG = torch.full((3, 20, 20), 200, dtype=torch.uint8)


# -------------------------------------------------------------------------------------- copy-paste
def test_copy_paste_k_zero_or_empty_source_leaves_target_unchanged():
    tgt = instances([rect(20, 20, 2, 8, 2, 8)])
    src = instances([rect(20, 20, 10, 15, 10, 15)])
    img, inst = copy_paste(TARGET_IMG, tgt, SOURCE_IMG, src, gen(seed_with_k(1, 0)))
    assert img is TARGET_IMG and inst is tgt
    img, inst = copy_paste(TARGET_IMG, tgt, SOURCE_IMG, instances([]), gen(0))
    assert img is TARGET_IMG and inst is tgt


def test_copy_paste_into_empty_target_takes_the_pasted_objects():
    src = instances([rect(20, 20, 4, 10, 5, 15)], emb_value=7.0)
    img, inst = copy_paste(TARGET_IMG, instances([]), SOURCE_IMG, src, gen(seed_with_k(1, 1)))
    assert inst["masks"].shape == (1, 20, 20) and torch.equal(inst["masks"][0], src["masks"][0])
    assert inst["boxes"].tolist() == [[5.0, 4.0, 15.0, 10.0]]  # XYXY, x1 = last column + 1
    assert inst["embs"][0].tolist() == [7.0] * 4  # the embedding follows its object
    assert (img[:, 4:10, 5:15] == 200).all() and (img[:, :4] == 10).all()


def test_copy_paste_occlusion_rule_rejects_a_copy_covering_half_of_an_object():
    tgt = instances([rect(20, 20, 0, 10, 0, 10)])  # 100 px
    src = instances([rect(20, 20, 0, 10, 0, 5)])  # covers 50 % of it: ioy = 0.5, not < 0.5
    img, inst = copy_paste(TARGET_IMG, tgt, SOURCE_IMG, src, gen(seed_with_k(1, 1)))
    assert img is TARGET_IMG and inst is tgt


def test_copy_paste_occludes_existing_masks_and_recomputes_boxes():
    tgt = instances([rect(20, 20, 0, 10, 0, 10), rect(20, 20, 12, 20, 12, 20)], emb_value=1.0)
    src = instances([rect(20, 20, 0, 10, 6, 14)], emb_value=5.0)  # covers 40 % of object 0 (its right side)
    img, inst = copy_paste(TARGET_IMG, tgt, SOURCE_IMG, src, gen(seed_with_k(1, 1)))
    assert inst["masks"].shape[0] == 3
    assert inst["masks"][0].sum() == 60 and not (inst["masks"][0] & inst["masks"][2]).any()
    assert inst["boxes"].tolist() == [[0.0, 0.0, 6.0, 10.0], [12.0, 12.0, 20.0, 20.0], [6.0, 0.0, 14.0, 10.0]]
    assert inst["embs"][:, 0].tolist() == [1.0, 2.0, 5.0]
    assert (img[:, 0:10, 6:14] == 200).all() and (img[:, 0:10, 0:6] == 10).all()
    assert torch.equal(tgt["masks"][0], rect(20, 20, 0, 10, 0, 10))  # inputs untouched


def test_copy_paste_keeps_only_the_allowed_copies():
    tgt = instances([rect(20, 20, 0, 10, 0, 10)])
    src = instances([rect(20, 20, 0, 10, 0, 10), rect(20, 20, 14, 18, 14, 18)])  # the first would hide it fully
    s = seed_with_k(2, 2)
    img, inst = copy_paste(TARGET_IMG, tgt, SOURCE_IMG, src, gen(s))
    assert inst["masks"].shape[0] == 2 and inst["masks"][0].sum() == 100
    assert inst["boxes"][1].tolist() == [14.0, 14.0, 18.0, 18.0]


def test_copy_paste_fully_occluded_object_keeps_an_empty_mask_and_zero_box():
    tgt = instances([rect(20, 20, 0, 4, 0, 4), rect(20, 20, 0, 20, 0, 20)])
    tgt["masks"][1] &= ~tgt["masks"][0]  # big background-like object around a small one
    src = instances([rect(20, 20, 0, 5, 0, 5)])  # covers the small one, 25 px of the 384 px big one
    img, inst = copy_paste(TARGET_IMG, tgt, SOURCE_IMG, src, gen(seed_with_k(1, 1)))
    # the small object is covered entirely (ioy is measured against existing objects, 16/16 = 1) -> rejected
    assert inst is tgt
    src = instances([rect(20, 20, 0, 2, 0, 20)])  # 8/16 of the small one -> rejected as well (not < 0.5)
    assert copy_paste(TARGET_IMG, tgt, SOURCE_IMG, src, gen(seed_with_k(1, 1)))[1] is tgt


def test_copy_paste_stretches_a_source_of_another_size():
    src_img = torch.full((3, 10, 40), 100, dtype=torch.uint8)
    src = {"masks": rect(10, 40, 0, 5, 0, 20)[None], "boxes": torch.tensor([[0.0, 0.0, 20.0, 5.0]]),
           "labels": torch.zeros(1, dtype=torch.int64), "embs": torch.ones(1, 4), "scores": torch.ones(1)}
    img, inst = copy_paste(TARGET_IMG, instances([]), src_img, src, gen(seed_with_k(1, 1)))
    assert inst["masks"].shape == (1, 20, 20)
    x0, y0, x1, y1 = inst["boxes"][0].tolist()
    assert x0 == 0 and y0 == 0 and 10 <= x1 <= 11 and 10 <= y1 <= 11  # bilinear > 0: slight dilation (quirk Q4)
    assert img.dtype == torch.uint8 and (img[:, 0, 0] == 100).all()


def test_copy_paste_batch_pairs_in_reverse_and_batch_of_one_is_a_no_op():
    a = instances([rect(20, 20, 0, 6, 0, 6)], emb_value=1.0)
    b = instances([rect(20, 20, 12, 18, 12, 18)], emb_value=2.0)
    s = seed_with_k(1, 1)
    imgs, insts = copy_paste_batch([TARGET_IMG, TARGET_IMG], [a, b], [SOURCE_IMG, SOURCE_IMG], [a, b], gen(s))
    assert insts[0]["embs"][-1, 0] == 2.0  # image 0 received from image 1
    for seed in range(10):  # one image per GPU: it pastes into itself, the occlusion rule rejects it
        imgs, insts = copy_paste_batch([TARGET_IMG], [a], [SOURCE_IMG], [a], gen(seed))
        assert insts[0] is a and imgs[0] is TARGET_IMG


# ----------------------------------------------------------------------------------------- sampler
def test_sampler_groups_by_aspect_ratio_and_is_deterministic():
    sizes = [(100, 200), (200, 100)] * 5 + [(150, 150)] * 3
    groups = aspect_groups(sizes)
    assert groups[:3] == [0, 1, 0] and groups[-1] == 1  # square -> the w <= h bucket
    s = GroupedBatchSampler(groups, 2, seed=3)
    batches = list(itertools.islice(iter(s), 30))  # more than an epoch: infinite
    for batch in batches:
        assert len({groups[i] for i, _ in batch}) == 1
    again = list(itertools.islice(iter(GroupedBatchSampler(groups, 2, seed=3)), 30))
    assert batches == again
    resumed = list(itertools.islice(iter(GroupedBatchSampler(groups, 2, seed=3, start_batch=11)), 19))
    assert resumed == batches[11:]
    seeds = [sd for batch in batches for _, sd in batch]
    assert len(set(seeds)) == len(seeds)  # every sample its own augmentation seed


def test_sampler_splits_each_epoch_between_ranks():
    groups = [0] * 16
    parts = [GroupedBatchSampler(groups, 2, seed=1, rank=r, world_size=2, infinite=False) for r in range(2)]
    seen = [sorted(i for b in iter(p) for i, _ in b) for p in parts]
    assert set(seen[0]).isdisjoint(seen[1]) and sorted(seen[0] + seen[1]) == list(range(16))
    first = [next(iter(p)) for p in parts]
    assert [sd for _, sd in first[0]] != [sd for _, sd in first[1]]
    e0 = [i for b in GroupedBatchSampler(groups, 2, seed=1, infinite=False) for i, _ in b]
    s1 = GroupedBatchSampler(groups, 2, seed=1, infinite=False)
    s1.set_epoch(1)
    assert [i for b in s1 for i, _ in b] != e0  # set_epoch reshuffles


# ------------------------------------------------------------------------------------ transforms
def test_shortest_edge_size_matches_detectron2():
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert shortest_edge_size(400, 1600, 800, 1333) == (333, 1333)  # long side capped
    assert shortest_edge_size(300, 200, 160, 1000) == (240, 160)


def test_masks_to_boxes_and_box_transform():
    m = torch.stack([rect(10, 12, 2, 5, 3, 9), torch.zeros(10, 12, dtype=torch.bool)])
    assert masks_to_boxes(m).tolist() == [[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]]
    b = transform_boxes(torch.tensor([[3.0, 2.0, 9.0, 5.0]]), (10, 12), (20, 24), flip=True)
    assert b.tolist() == [[6.0, 4.0, 18.0, 10.0]]
    r = resize_masks(m, (20, 24))
    assert masks_to_boxes(r)[0].tolist() == [6.0, 4.0, 18.0, 10.0]


def test_strong_view_is_deterministic_and_photometric_only():
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=gen(0))
    a = strong_view(img, StrongAugConfig(), gen(5))
    b = strong_view(img, StrongAugConfig(), gen(5))
    assert a.dtype == torch.uint8 and a.shape == img.shape and torch.equal(a, b)
    outs = [strong_view(img, StrongAugConfig(), gen(s)) for s in range(6)]
    assert any(not torch.equal(o, img) for o in outs)
    off = StrongAugConfig(jitter_prob=0, grayscale_prob=0, blur_prob=0, erasing=[])
    assert torch.equal(strong_view(img, off, gen(1)), img)
    gray = StrongAugConfig(jitter_prob=0, grayscale_prob=1, blur_prob=0, erasing=[])
    g = strong_view(img, gray, gen(1))
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])


# --------------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_images=4, empty_images=1)


def test_dataset_filters_empty_images_and_keeps_emb_and_score(shapes):
    folder, labels = shapes
    items, cmap = load_training_set(folder, labels)
    assert len(items) == 4 and cmap == {1: 0}
    ds = PseudoLabelDataset(items, cmap, min_sizes=(64, 96), max_size=200)
    x = ds[(0, 123)]
    inst = x["instances"]
    n = inst["masks"].shape[0]
    assert x["weak"].dtype == torch.uint8 and x["weak"].shape[0] == 3 and x["strong"].shape == x["weak"].shape
    assert inst["masks"].shape[1:] == x["weak"].shape[1:] and min(x["weak"].shape[1:]) in (64, 96)
    assert torch.equal(inst["boxes"], masks_to_boxes(inst["masks"]))  # tight boxes from the masks
    assert inst["embs"].shape == (n, 128) and inst["embs"].abs().sum() > 0
    assert inst["labels"].tolist() == [0] * n and ((inst["scores"] >= 0.7) & (inst["scores"] <= 1)).all()
    assert x["orig_size"] == (items[0].height, items[0].width)
    y = ds[(0, 123)]
    assert torch.equal(x["weak"], y["weak"]) and torch.equal(x["strong"], y["strong"])  # seeded


def test_dataset_flip_and_json_box_source(shapes):
    folder, labels = shapes
    items, cmap = load_training_set(folder, labels)
    no = PseudoLabelDataset(items, cmap, min_sizes=(96,), max_size=500, flip_prob=0.0, box_source="json")
    yes = PseudoLabelDataset(items, cmap, min_sizes=(96,), max_size=500, flip_prob=1.0, box_source="json")
    a, b = no[(1, 7)], yes[(1, 7)]
    assert torch.equal(a["weak"].flip(-1), b["weak"])
    assert torch.equal(a["instances"]["masks"].flip(-1), b["instances"]["masks"])
    # 'json': the stored bbox read as XYWH and scaled (here the JSON holds proper XYWH boxes, so it is tight-ish)
    ann = items[1].annotations[0]
    x, y, w, h = ann["bbox"]
    s = 96 / min(items[1].height, items[1].width)
    assert torch.allclose(a["instances"]["boxes"][0], torch.tensor([x * s, y * s, (x + w) * s, (y + h) * s]), atol=1e-4)
    wd = a["weak"].shape[-1]
    assert torch.allclose(b["instances"]["boxes"][0], torch.tensor([wd - (x + w) * s, y * s, wd - x * s, (y + h) * s]), atol=1e-4)


def test_corrupt_image_is_skipped_with_a_warning(tmp_path, caplog):
    folder, labels = make_shapes_dataset(tmp_path, n_images=3)
    (folder / "000002.png").write_bytes(b"not an image")
    items, cmap = load_training_set(folder, labels)
    ds = PseudoLabelDataset(items, cmap, min_sizes=(64,), max_size=200)
    with caplog.at_level(logging.WARNING):
        x = ds[(1, 5)]
    assert x["image_id"] == 3  # replaced by the next readable image
    assert "000002.png" in caplog.text


def test_bad_inputs_give_one_line_errors(tmp_path):
    folder, labels = make_shapes_dataset(tmp_path, n_images=1)
    items, cmap = load_training_set(folder, labels)
    with pytest.raises(UnsoloError, match="128-d 'emb'; the model expects 64"):
        PseudoLabelDataset(items, cmap, emb_dim=64)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.png").write_bytes((folder / "000001.png").read_bytes())
    with pytest.raises(UnsoloError, match="no training images"):
        load_training_set(other, labels)


def test_batches_do_not_depend_on_the_number_of_workers(shapes):
    from unsolo.data.images import collate_list

    folder, labels = shapes
    items, cmap = load_training_set(folder, labels)
    ds = PseudoLabelDataset(items, cmap, min_sizes=(64, 80), max_size=120)
    groups = aspect_groups(ds.sizes())

    def first_batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_sampler=GroupedBatchSampler(groups, 2, seed=4), num_workers=workers,
                                             collate_fn=collate_list)
        return list(itertools.islice(iter(loader), 3))

    for a, b in zip(first_batches(0), first_batches(2)):
        for x, y in zip(a, b):
            assert x["image_id"] == y["image_id"] and torch.equal(x["weak"], y["weak"]) and torch.equal(x["strong"], y["strong"])
            assert torch.equal(x["instances"]["masks"], y["instances"]["masks"])


def test_official_free_mask_output_loads_with_emb_score_and_the_box_quirk(shared_dir):
    """The official Free Mask JSON (XYXY ``bbox``, ``emb``, ``score``) as training labels."""
    import json
    from pathlib import Path

    parity = Path(shared_dir) / "parity"
    labels = parity / "expected" / "freemask_seed0.json"
    items, cmap = load_training_set(parity / "images", labels)
    official = json.loads(labels.read_text())
    assert len(items) == len({a["image_id"] for a in official["annotations"]}) and cmap == {1: 0}
    k = next(i for i, it in enumerate(items) if it.image_id == 3)  # 800 x 1200: short side 800 leaves it as is
    tight = PseudoLabelDataset(items, cmap, min_sizes=(800,), max_size=1333, flip_prob=0.0, strong_in_workers=False)[(k, 0)]["instances"]
    quirk = PseudoLabelDataset(items, cmap, min_sizes=(800,), max_size=1333, flip_prob=0.0, strong_in_workers=False,
                               box_source="json")[(k, 0)]["instances"]
    anns = [a for a in official["annotations"] if a["image_id"] == 3]
    assert tight["masks"].shape[0] == len(anns) == quirk["masks"].shape[0]
    assert torch.allclose(tight["embs"], torch.tensor([a["emb"] for a in anns]))
    assert torch.allclose(tight["scores"], torch.tensor([a["score"] for a in anns]))
    x0, y0, x1, y1 = anns[0]["bbox"]  # XYXY as Free Mask writes it, read as XYWH by the official loader
    assert quirk["boxes"][0].tolist() == pytest.approx([x0, y0, min(x0 + x1, 1200), min(y0 + y1, 800)])
    b = tight["boxes"][0].tolist()  # tight box of the mask: contains the projection box of the official output
    assert b[0] <= x0 + 0.5 and b[2] >= x1 - 0.5 and b[1] <= y0 + 0.5 and b[3] >= y1 - 0.5


def test_max_label_span_drops_labels_that_cover_the_image(tmp_path):
    folder, labels = make_shapes_dataset(tmp_path, n_images=2)
    coco = json.loads(Path(labels).read_text())
    im = coco["images"][0]
    h, w = im["height"], im["width"]
    big = np.zeros((h, w), bool)
    big[1:h - 1, 2:w - 2] = True  # spans the image along both axes
    wide = np.zeros((h, w), bool)
    wide[h // 2:h // 2 + 4, 0:w] = True  # spans one axis only: kept
    kept_before = len([a for a in coco["annotations"] if a["image_id"] == im["id"]])
    for m in (big, wide):
        ann = dict(coco["annotations"][0], id=10_000 + len(coco["annotations"]), image_id=im["id"],
                   segmentation=encode_mask(m))
        ann.pop("bbox")  # the box comes from the mask when the label has none
        coco["annotations"].append(ann)
    path = tmp_path / "with_big.json"
    path.write_text(json.dumps(coco))
    items, _ = load_training_set(folder, path)
    assert len(items[0].annotations) == kept_before + 2
    items, _ = load_training_set(folder, path, max_label_span=0.7)
    assert len(items[0].annotations) == kept_before + 1
    assert spans_image([0, 0, 80, 80], 100, 100, 0.7) and not spans_image([0, 0, 80, 60], 100, 100, 0.7)
    with pytest.raises(UnsoloError, match="max_label_span"):
        train(resolve_train_config("small_r18", ["data.max_label_span=1.5"]), folder, path, tmp_path / "run", device="cpu")
