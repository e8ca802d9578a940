import numpy as np
import pytest
from PIL import Image

from unsolo.data.images import SkipCounter, iterate_images, list_coco, list_folder, list_images, load_image
from unsolo.errors import UnsoloError


def test_conversions_to_rgb_uint8(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (12, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((12, 9), 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.bmp")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "deep.png")
    Image.fromarray(rgb).save(tmp_path / "x.webp", lossless=True)
    Image.fromarray(rgb).save(tmp_path / "x.tif")
    for name in ["gray.png", "rgba.png", "pal.bmp", "deep.png", "x.webp", "x.tif"]:
        a = load_image(tmp_path / name)
        assert a.dtype == np.uint8 and a.shape == (12, 9, 3), name
    assert np.array_equal(load_image(tmp_path / "rgba.png"), rgb)
    assert np.array_equal(load_image(tmp_path / "deep.png")[..., 0], rgb[..., 0])
    assert np.array_equal(load_image(tmp_path / "x.tif"), rgb)


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :5] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=100)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (20, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50


def test_folder_listing_recursive_ids_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["000003.png", "sub/000001.JPG", "notes.txt"]:
        p = tmp_path / name
        if p.suffix == ".txt":
            p.write_text("x")
        else:
            Image.new("RGB", (4, 4)).save(p, format="PNG" if p.suffix == ".png" else "JPEG")
    recs = list_folder(tmp_path)
    assert [r.file_name for r in recs] == ["000003.png", "sub/000001.JPG"]
    assert [r.image_id for r in recs] == [3, 1]
    (tmp_path / "cat.png").write_bytes((tmp_path / "000003.png").read_bytes())
    ids = [r.image_id for r in list_folder(tmp_path)]
    assert len(set(ids)) == 3  # non-numeric names: stable hashed ids
    assert ids == [r.image_id for r in list_folder(tmp_path)]
    with pytest.raises(UnsoloError, match="no images"):
        (tmp_path / "empty").mkdir()
        list_folder(tmp_path / "empty")
    with pytest.raises(UnsoloError, match="not found"):
        list_images(tmp_path / "missing")
    one = list_images(tmp_path / "000003.png")  # a single image file is an input too
    assert [(r.file_name, r.image_id) for r in one] == [("000003.png", 3)]
    with pytest.raises(UnsoloError, match="not a folder"):
        list_images(tmp_path / "notes.txt")


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog):
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "1.png")
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("RGB", (5, 5)).save(tmp_path / "3.png")
    skipped = SkipCounter()
    got = [item["record"].image_id for batch in iterate_images(list_folder(tmp_path), workers=0, batch_size=2, skipped=skipped) for item in batch]
    assert got == [1, 3]
    assert skipped.skipped == ["2.png"]
    assert any("2.png" in r.message for r in caplog.records)


def test_coco_listing(tmp_path):
    import json

    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "a.png")
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{"id": 5, "file_name": "a.png", "height": 4, "width": 4}], "annotations": []}))
    recs = list_images(tmp_path / "ann.json")
    assert recs[0].image_id == 5 and recs[0].path == tmp_path / "images" / "a.png"
    with pytest.raises(UnsoloError, match="image root not found"):
        list_coco(tmp_path / "ann.json", tmp_path / "nope")
