import json
import os
import stat

import numpy as np
import pytest

from unsolo.data import coco
from unsolo.errors import UnsoloError
from unsolo.utils.io import atomic_write, read_json


def _masks():
    m = np.zeros((3, 20, 30), dtype=bool)
    m[0, 2:5, 3:9] = True
    m[1, 10:20, 0:30] = True
    m[2, 0, 29] = True
    return m


def test_rle_roundtrip_and_boxes():
    masks = _masks()
    rles = coco.encode_masks(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    for m, r in zip(masks, rles):
        assert np.array_equal(coco.decode_segmentation(r, 20, 30).astype(bool), m)
        assert coco.rle_to_xywh(r) == coco.mask_to_xywh(m)
    assert coco.mask_to_xywh(masks[0]) == [3.0, 2.0, 6.0, 3.0]
    assert coco.mask_to_xywh(np.zeros((4, 4), bool)) == [0.0, 0.0, 0.0, 0.0]
    assert coco.encode_masks(np.zeros((0, 5, 5), bool)) == []


def test_polygon_and_uncompressed_rle_decode():
    poly = [[1, 1, 8, 1, 8, 6, 1, 6]]
    m = coco.decode_segmentation(poly, 10, 10)
    assert m.sum() > 20
    unc = {"size": [4, 4], "counts": [2, 3, 11]}
    assert coco.decode_segmentation(unc, 4, 4).sum() == 3


def test_instance_records_fields():
    recs = coco.instance_records(7, _masks(), scores=[0.9, 0.8, 0.7], embeddings=np.ones((3, 128)))
    assert [r["bbox"] for r in recs][1] == [0.0, 10.0, 30.0, 10.0]
    assert recs[0]["area"] == 18.0 and recs[0]["category_id"] == 1 and recs[0]["iscrowd"] == 0
    assert len(recs[2]["emb"]) == 128 and recs[2]["score"] == pytest.approx(0.7)


def test_shards_merge(tmp_path):
    out = tmp_path / "pseudo.json"
    m = _masks()
    for i in range(2):
        part = coco.make_annotation_file(
            [{"id": 10 - i, "file_name": f"{i}.png", "height": 20, "width": 30}], coco.instance_records(10 - i, m)
        )
        coco.write_annotation_file(coco.shard_path(out, i, 2), part)
    assert len(coco.find_shards(out)) == 2
    merged = coco.merge_shards(out, 2)
    assert [im["id"] for im in merged["images"]] == [9, 10]
    assert [a["id"] for a in merged["annotations"]] == list(range(1, 7))
    assert [a["image_id"] for a in merged["annotations"]] == [9, 9, 9, 10, 10, 10]
    assert json.loads(out.read_text()) == merged
    assert coco.find_shards(out) == []
    with pytest.raises(UnsoloError, match="missing"):
        coco.merge_shards(out, 3)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    def boom(f):
        f.write("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_read_json_errors(tmp_path):
    with pytest.raises(UnsoloError, match="not found"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UnsoloError, match="not valid JSON"):
        read_json(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2]")
    with pytest.raises(UnsoloError, match="not a COCO annotation file"):
        coco.load_annotation_file(wrong)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_usual_permissions(tmp_path, umask):
    """Outputs get 0o666 less the umask, as a plain open() would (mkstemp alone gives 0o600), and stay atomic."""
    old = os.umask(umask)
    try:
        out = atomic_write(tmp_path / "sub" / "report.html", lambda f: f.write("x"))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary file left
