"""pipeline.data: generators, readers, validation errors, COCO round trip."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import data as D
from pipeline.data import DataError


@pytest.fixture(scope="module")
def bananas(tmp_path_factory) -> Path:
    return D.generate_bananas(tmp_path_factory.mktemp("bananas"), n_train=6, n_val=3, progress=False)


@pytest.fixture
def banana_copy(bananas, tmp_path) -> Path:
    """A writable copy of the tiny banana folder, for tests that break it."""
    return Path(shutil.copytree(bananas, tmp_path / "b"))


def write_coco(root: Path, split: str = "train", *, annotations=None, categories=None, images=None) -> Path:
    """Two images of 40x30 (WxH) and 50x20, one without boxes, under root; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"a.png": (40, 30), "b.png": (50, 20), "empty.png": (24, 24)}
    for name, (w, h) in sizes.items():
        if not (root / name).exists():
            Image.new("RGB", (w, h), (200, 30, 30)).save(root / name)
    if images is None:
        images = [{"id": i + 1, "file_name": name, "width": w, "height": h}
                  for i, (name, (w, h)) in enumerate(sizes.items())]
    if categories is None:
        categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # not sorted, not contiguous
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.5, 2.0, 10.0, 12.25]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20.0, 0.0, 20.0, 30.0]},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0.0, 10.0, 5.0, 5.0]},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [10.0, 5.0, 30.0, 10.5]},
        ]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    for s in ("train", "val"):
        if s == split or not (root / f"{s}.json").exists():
            (root / f"{s}.json").write_text(json.dumps(coco, indent=1))
    return root


# --- bananas -------------------------------------------------------------------

def test_banana_folder_loads_with_relative_boxes(bananas):
    train = D.load_split(str(bananas), "train", 256, progress=False)
    assert len(train) == 6 and train.images.shape == (6, 3, 256, 256) and train.images.dtype == torch.uint8
    assert train.targets.shape == (6, 1, 5) and train.targets.dtype == torch.float32
    assert train.orig_sizes.dtype == torch.int64 and train.orig_sizes.tolist() == [[256, 256]] * 6
    assert train.class_names == ["banana"] and train.file_names[0] == "0.png"
    boxes = train.targets[:, 0, 1:]
    assert (train.targets[:, 0, 0] == 0).all()
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert (side > 0.1).all() and (side < 0.75).all()
    assert len(D.load_split(str(bananas), "val", 256, progress=False)) == 3
    assert len(train.subset(2)) == 2 and len(train.subset(0)) == 6


def test_mask_box_is_tight():
    coverage = np.zeros((8, 10))
    coverage[2:5, 3:7] = 1.0
    coverage[1, 3] = 0.4  # a faint anti-aliased pixel is not part of the object
    coverage[5, 6] = 0.6
    assert D._mask_box(coverage) == (3, 2, 7, 6)


def test_banana_label_is_the_drawn_box(bananas):
    row = (bananas / "bananas_train" / "label.csv").read_text().splitlines()[1].split(",")
    _, box = D._banana_image(D._image_rng(0, "train", 0), 256)
    assert tuple(map(int, row[2:])) == box


def test_generators_are_deterministic(tmp_path):
    a = D.generate_bananas(tmp_path / "a", n_train=2, n_val=1, progress=False)
    b = D.generate_bananas(tmp_path / "b", n_train=2, n_val=1, progress=False)
    for f in ["bananas_train/label.csv", "bananas_train/images/0.png", "bananas_val/images/0.png"]:
        assert (a / f).read_bytes() == (b / f).read_bytes()
    c = D.generate_bananas(tmp_path / "c", n_train=2, n_val=1, seed=1, progress=False)
    assert (a / "bananas_train/images/0.png").read_bytes() != (c / "bananas_train/images/0.png").read_bytes()


def test_generating_on_several_cores_writes_the_same_files(tmp_path, monkeypatch):
    one = D.generate_shapes(tmp_path / "one", n_train=4, n_val=1, size=64, progress=False)
    monkeypatch.setattr(D.synthetic, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # two workers, even on 1 core
    many = D.generate_shapes(tmp_path / "many", n_train=4, n_val=1, size=64, progress=False)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 4 + 1 + 2
    assert all((one / f).read_bytes() == (many / f).read_bytes() for f in files)


def test_resize_keeps_relative_boxes(bananas):
    big = D.load_split(str(bananas), "train", 256, progress=False)
    small = D.load_split(str(bananas), "train", 96, progress=False)
    assert small.images.shape == (6, 3, 96, 96)
    assert torch.equal(small.targets, big.targets) and torch.equal(small.orig_sizes, big.orig_sizes)


def test_several_rows_for_one_image_and_other_labels(banana_copy):
    csv = banana_copy / "bananas_train" / "label.csv"
    csv.write_text(csv.read_text() + "0.png,2,1,1,30,40\n")
    data = D.load_split(str(banana_copy), "train", 64, progress=False)
    assert data.class_names == ["class0", "class1", "class2"]
    assert data.targets.shape == (6, 2, 5)
    assert data.targets[0, 1].tolist() == pytest.approx([2, 1 / 256, 1 / 256, 30 / 256, 40 / 256])
    assert (data.targets[1:, 1, 0] == -1).all()  # padding rows
    assert D.load_split(str(banana_copy), "val", 64, progress=False).class_names == data.class_names


# --- COCO ------------------------------------------------------------------------

def test_coco_round_trip(tmp_path):
    root = write_coco(tmp_path / "coco")
    data = D.load_split(str(root), "train", 64, progress=False)
    assert data.class_names == ["cat", "dog"]  # sorted by category id: 3, 7
    assert data.images.shape == (3, 3, 64, 64) and data.targets.shape == (3, 3, 5)
    assert data.orig_sizes.tolist() == [[30, 40], [20, 50], [24, 24]]
    assert (data.targets[2, :, 0] == -1).all()  # the image without annotations
    assert data.targets[0, 1].tolist() == pytest.approx([1, 0.5, 0.0, 1.0, 1.0])
    coco = D.to_coco_dict(data)
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in coco["images"]] == [
        (1, "a.png", 30, 40), (2, "b.png", 20, 50), (3, "empty.png", 24, 24)]
    source = json.loads((root / "train.json").read_text())["annotations"]
    assert len(coco["annotations"]) == len(source)
    for got, want in zip(coco["annotations"], source):
        assert got["image_id"] == want["image_id"] and got["iscrowd"] == 0
        assert data.class_names[got["category_id"] - 1] == {3: "cat", 7: "dog"}[want["category_id"]]
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3)
        assert got["area"] == pytest.approx(want["bbox"][2] * want["bbox"][3], abs=1e-3)
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]


def test_coco_dict_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    data = D.load_split(str(write_coco(tmp_path / "coco")), "train", 32, progress=False)
    api = COCO()
    api.dataset = D.to_coco_dict(data)
    api.createIndex()
    assert len(api.getAnnIds(imgIds=[1])) == 3 and api.getAnnIds(imgIds=[3]) == []


# --- format detection ------------------------------------------------------------

def test_format_detection(bananas, tmp_path):
    assert D.resolve_dataset(str(bananas)) == (bananas, "bananas")
    coco = write_coco(tmp_path / "coco")
    assert D.resolve_dataset(str(coco)) == (coco, "coco")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match=r"other: unrecognised data folder: expected bananas_train/label.csv"):
        D.resolve_dataset(str(tmp_path / "other"))
    with pytest.raises(DataError, match="not a folder"):
        D.resolve_dataset(str(tmp_path / "nowhere"))


def test_named_dataset_is_generated_once_into_cache(tmp_path, monkeypatch):
    calls = []

    def fake(root, n_train, n_val, size, seed, progress):
        calls.append(root)
        D.generate_bananas(root, n_train=1, n_val=1, size=64, progress=False)
        return root

    monkeypatch.setitem(D._GENERATORS, "bananas", (fake, "bananas", {"n_train": 1, "n_val": 1, "size": 64, "seed": 0}))
    folder, fmt = D.resolve_dataset("bananas", cache_dir=tmp_path, progress=False)
    assert fmt == "bananas" and folder.parent == tmp_path and folder.name.startswith("bananas-")
    assert D.resolve_dataset("bananas", cache_dir=tmp_path, progress=False)[0] == folder
    assert len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == [folder.name]  # temp dir gone
    assert len(D.load_split("bananas", "val", 32, cache_dir=tmp_path, progress=False)) == 1


def test_lost_generation_race_uses_the_winner(tmp_path, monkeypatch):
    def racing(root, **kwargs):
        D.generate_bananas(root, n_train=1, n_val=1, size=32, progress=False)
        D.generate_bananas(tmp_path / expected_name, n_train=1, n_val=1, size=32, progress=False)  # the other process wins
        return root

    params = {"n_train": 1, "n_val": 1, "size": 32, "seed": 0}
    monkeypatch.setitem(D._GENERATORS, "bananas", (racing, "bananas", params))
    import hashlib
    key = json.dumps({"name": "bananas", "version": D.GENERATOR_VERSION, **params}, sort_keys=True)
    expected_name = f"bananas-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    folder, _ = D.resolve_dataset("bananas", cache_dir=tmp_path, progress=False)
    assert folder.name == expected_name and sorted(p.name for p in tmp_path.iterdir()) == [expected_name]


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path))
    assert D.default_cache_dir() == tmp_path
    monkeypatch.delenv("TINYSSD_CACHE")
    assert D.default_cache_dir() == Path.home() / ".cache" / "tinyssd-ablate"


# --- validation --------------------------------------------------------------------

def break_csv(folder: Path, line: int, text: str) -> Path:
    """Replace 1-based line `line` of bananas_train/label.csv; returns the csv path."""
    csv = folder / "bananas_train" / "label.csv"
    lines = csv.read_text().splitlines()
    lines[line - 1] = text
    csv.write_text("\n".join(lines) + "\n")
    return csv


@pytest.mark.parametrize("row, problem", [
    ("2.png,0,10,20", "expected 6 columns"),
    ("2.png,0,10,abc,30,40", "xmin,ymin,xmax,ymax must be numbers"),
    ("2.png,x,10,20,30,40", "label must be a class number, an integer from 0 to 999"),
    ("2.png,99999999999,10,20,30,40", "label must be a class number"),  # was: 10^11 class names, out of memory
    ("2.png,0,10,20,10,40", r"box \(10, 20, 10, 40\) has zero or negative area"),
    ("2.png,0,10,20,30,20", "box .* has zero or negative area"),
    ("2.png,0,10,20,10.001,40", r"box \(10, 20, 10.001, 40\) is narrower than 1 pixel"),
    ("2.png,\u00b2,10,20,30,40", "label must be a class number"),
    ("2.png,0,10,20,300,40", "box .* lies outside the 256x256"),
    ("2.png,0,-5,20,30,40", "box .* lies outside the 256x256"),
    ("missing.png,0,10,20,30,40", "image file .*missing.png not found"),
])
def test_bad_csv_row_names_file_and_line(banana_copy, row, problem):
    csv = break_csv(banana_copy, 4, row)
    with pytest.raises(DataError, match=rf"^{re.escape(str(csv))}:4: {problem}"):
        D.load_split(str(banana_copy), "train", 32, progress=False)
    data = D.load_split(str(banana_copy), "train", 32, skip_invalid=True, progress=False)
    assert data.skipped == 1 and len(data) == 5 and "2.png" not in data.file_names


def test_a_csv_saved_with_a_byte_order_mark_loads(banana_copy):
    csv = banana_copy / "bananas_train" / "label.csv"
    plain = D.load_split(str(banana_copy), "train", 32, progress=False)
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # what Excel writes as "CSV UTF-8"
    with_bom = D.load_split(str(banana_copy), "train", 32, progress=False)
    assert with_bom.file_names == plain.file_names and torch.equal(with_bom.targets, plain.targets)


def test_bad_csv_header(banana_copy):
    csv = break_csv(banana_copy, 1, "name,label,x0,y0,x1,y1")
    with pytest.raises(DataError, match=rf"^{re.escape(str(csv))}:1: header must be img_name,label,xmin,ymin,xmax,ymax"):
        D.load_split(str(banana_copy), "train", 32, skip_invalid=True, progress=False)


def test_corrupt_image(banana_copy):
    png = banana_copy / "bananas_train" / "images" / "3.png"
    png.write_bytes(png.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match=r"label.csv:5: cannot read image .*3.png"):
        D.load_split(str(banana_copy), "train", 32, progress=False)
    png.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"label.csv:5: cannot read image .*3.png"):
        D.load_split(str(banana_copy), "train", 32, progress=False)
    data = D.load_split(str(banana_copy), "train", 32, skip_invalid=True, progress=False)
    assert data.skipped == 1 and "3.png" not in data.file_names


def test_decoded_split_is_cached_and_rebuilt_when_an_image_changes(banana_copy, tmp_path):
    cache = tmp_path / "cache"
    first = D.load_split(str(banana_copy), "train", 32, cache_dir=cache, progress=False)
    assert len(list((cache / "decoded").glob("*.pt"))) == 1
    again = D.load_split(str(banana_copy), "train", 32, cache_dir=cache, progress=False)
    for a, b in ((first.images, again.images), (first.targets, again.targets), (first.orig_sizes, again.orig_sizes)):
        assert torch.equal(a, b)
    assert again.file_names == first.file_names
    png = banana_copy / "bananas_train" / "images" / "2.png"
    Image.new("RGB", Image.open(png).size, (0, 0, 0)).save(png)  # the same name, other pixels
    changed = D.load_split(str(banana_copy), "train", 32, cache_dir=cache, progress=False)
    index = changed.file_names.index("2.png")
    assert changed.images[index].max() == 0 and first.images[index].max() > 0
    assert len(list((cache / "decoded").glob("*.pt"))) == 2


def test_decoded_cache_keeps_the_skipped_count(banana_copy, tmp_path):
    (banana_copy / "bananas_train" / "images" / "3.png").write_bytes(b"not a png at all")
    for _ in range(2):  # decoded, then from the cache
        data = D.load_split(str(banana_copy), "train", 32, skip_invalid=True, cache_dir=tmp_path, progress=False)
        assert data.skipped == 1 and "3.png" not in data.file_names


def test_malformed_json_names_line(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "train.json").write_text('{\n "images": [\n  {"id": 1,}\n ]\n}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(root / 'train.json'))}:3: malformed JSON"):
        D.load_split(str(root), "train", 32, skip_invalid=True, progress=False)
    (root / "train.json").write_text('[1, 2]')
    with pytest.raises(DataError, match="not a COCO instances file"):
        D.load_split(str(root), "train", 32, skip_invalid=True, progress=False)


@pytest.mark.parametrize("change, problem", [
    ({"category_id": 5}, r"record 1 \(annotation id 2\): unknown category id 5"),
    ({"bbox": [20.0, 0.0, 0.0, 30.0]}, r"record 1 \(annotation id 2\): box .* zero or negative area"),
    ({"bbox": [20.0, 0.0, 30.0, 30.0]}, r"record 1 \(annotation id 2\): box .* outside the 40x30"),
    ({"bbox": [20.0, 0.0, "wide", 30.0]}, r"record 1 \(annotation id 2\): bbox must be 4 numbers"),
    ({"bbox": [10**400, 0.0, 20.0, 30.0]}, r"record 1 \(annotation id 2\): bbox must be 4 numbers"),  # no float
    ({"image_id": 99}, r"record 1 \(annotation id 2\): unknown image id 99"),
])
def test_bad_annotation_names_record(tmp_path, change, problem):
    anns = [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20.0, 0.0, 20.0, 30.0]}]
    anns[1].update(change)
    root = write_coco(tmp_path / "coco", annotations=anns)
    with pytest.raises(DataError, match=rf"^{re.escape(str(root / 'train.json'))}: {problem}"):
        D.load_split(str(root), "train", 32, progress=False)
    data = D.load_split(str(root), "train", 32, skip_invalid=True, progress=False)
    assert data.skipped == 1 and "b.png" in data.file_names
    # An image with a bad annotation is dropped whole; an annotation of no known image drops nothing.
    assert ("a.png" in data.file_names) == ("image_id" in change)


def test_missing_and_corrupt_coco_images(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "b.png").unlink()
    (root / "empty.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=rf"^{re.escape(str(root / 'train.json'))}: record 1 \(image id 2\): image file .*b.png not found"):
        D.load_split(str(root), "train", 32, progress=False)
    data = D.load_split(str(root), "train", 32, skip_invalid=True, progress=False)
    assert data.skipped == 2 and data.file_names == ["a.png"]


def test_nothing_usable_is_an_error(tmp_path):
    root = write_coco(tmp_path / "coco", images=[{"id": 1, "file_name": "nope.png"}], annotations=[])
    with pytest.raises(DataError, match="no usable images"):
        D.load_split(str(root), "train", 32, skip_invalid=True, progress=False)


# --- shapes ----------------------------------------------------------------------------

def test_shapes_generator(tmp_path):
    root = D.generate_shapes(tmp_path / "shapes", n_train=6, n_val=2, progress=False)
    assert D.resolve_dataset(str(root)) == (root, "coco")
    data = D.load_split(str(root), "train", 256, progress=False)
    assert len(data.class_names) >= 3 and data.images.shape == (6, 3, 256, 256)
    counts = (data.targets[:, :, 0] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() >= 3
    coco = D.to_coco_dict(data)
    areas = np.array([a["area"] for a in coco["annotations"]])
    assert (areas < 32**2).any()
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2, 3}
    assert json.loads((root / "train.json").read_text())["annotations"][0]["bbox"] == pytest.approx(
        coco["annotations"][0]["bbox"], abs=1e-3)
    again = D.generate_shapes(tmp_path / "again", n_train=6, n_val=2, progress=False)
    assert (again / "train.json").read_bytes() == (root / "train.json").read_bytes()
    assert (again / "train/000005.png").read_bytes() == (root / "train/000005.png").read_bytes()


def test_a_test_split_is_held_out_and_leaves_train_and_val_as_they_were(tmp_path):
    """The third split's images come from streams of their own: adding it changes no train or val image."""
    without = D.generate_bananas(tmp_path / "a", n_train=3, n_val=2, size=64, progress=False)
    with_test = D.generate_bananas(tmp_path / "b", n_train=3, n_val=2, n_test=4, size=64, progress=False)
    for split in ("train", "val"):
        for name in ("label.csv", "images/0.png", "images/1.png"):
            assert (without / f"bananas_{split}" / name).read_bytes() == (with_test / f"bananas_{split}" / name).read_bytes()
    assert not (without / "bananas_test").exists() and not D.has_split(str(without), "test")
    assert D.has_split(str(with_test), "test")
    test = D.load_split(str(with_test), "test", 64, progress=False)
    val = D.load_split(str(with_test), "val", 64, progress=False)
    assert len(test) == 4 and test.class_names == val.class_names
    assert not torch.equal(test.images[:2], val.images)  # other images, not the val split again
    coco = D.generate_shapes(tmp_path / "c", n_train=2, n_val=2, n_test=3, size=64, progress=False)
    assert D.has_split(str(coco), "test") and len(D.load_split(str(coco), "test", 64, progress=False)) == 3
