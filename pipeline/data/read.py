"""Reading annotation files into validated records: the banana folder's ``label.csv`` and COCO's
``<split>.json`` (formats and error messages: see ``pipeline/data/__init__.py``).

A record is one image: its file, the boxes its rows or annotations give, in pixels of the
original image, and the place to name in an error. Decoding the images is ``decode.py``'s part.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.core import BANANA_COLUMNS, SPLITS, DataError

MAX_CLASSES = 1000  # label.csv labels number the classes 0..K; a typo of 99999999999 must not build 10^11 names


@dataclass
class _Box:
    cls: int
    x1: float  # pixels of the original image
    y1: float
    x2: float
    y2: float
    where: str  # the place to name in an error about this box


@dataclass
class _Record:
    path: Path  # the image file
    name: str  # as written in the annotation file
    where: str  # the place to name in an error about the image
    boxes: list[_Box] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (height, width) the annotation file declares
    bad: bool = False  # one of its rows or annotations was invalid


class _Problems:
    """Raises DataError on the first problem or, under skip_invalid, counts it and carries on."""

    def __init__(self, skip: bool):
        self.skip, self.count = skip, 0

    def __call__(self, message: str) -> None:
        if not self.skip:
            raise DataError(message)
        self.count += 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    """A finite JSON number (an integer too large for a float, 10**400 say, is not one)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


MIN_BOX_SIDE = 1.0  # pixels: a thinner box gives log-size offset targets of -50 and worse, which swamp the loss


def _checked_area(box: _Box, report: _Problems) -> _Box | None:
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        report(f"{box.where}: box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) has zero or negative area")
        return None
    if min(box.x2 - box.x1, box.y2 - box.y1) < MIN_BOX_SIDE:
        report(f"{box.where}: box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) is narrower than "
               f"{MIN_BOX_SIDE:g} pixel")
        return None
    return box


def _is_label(text: str) -> bool:
    """A class number: a non-negative integer in ASCII digits ('²' passes str.isdigit but not int()),
    below MAX_CLASSES."""
    return text.isascii() and text.isdigit() and int(text) < MAX_CLASSES


def _parse_banana_row(row: list[str], where: str, report: _Problems) -> _Box | None:
    """One label.csv row -> a box in pixels, or None (reported) when it is malformed."""
    if len(row) != len(BANANA_COLUMNS):
        report(f"{where}: expected {len(BANANA_COLUMNS)} columns ({','.join(BANANA_COLUMNS)}), got {len(row)}")
        return None
    if not row[0].strip():
        report(f"{where}: empty img_name")
        return None
    if not _is_label(row[1].strip()):
        report(f"{where}: label must be a class number, an integer from 0 to {MAX_CLASSES - 1}, got {row[1]!r}")
        return None
    try:
        coords = [float(v) for v in row[2:]]
    except ValueError:
        coords = []
    if len(coords) != 4 or not all(math.isfinite(c) for c in coords):
        report(f"{where}: xmin,ymin,xmax,ymax must be numbers, got {','.join(row[2:])!r}")
        return None
    return _checked_area(_Box(int(row[1]), *coords, where), report)


def _read_banana_split(root: Path, split: str, report: _Problems) -> list[_Record]:
    """bananas_<split>/label.csv -> one record per image name, in file order."""
    folder = root / f"bananas_{split}"
    path = folder / "label.csv"
    if not path.is_file():
        raise DataError(f"{path}: file not found (the banana format needs bananas_{split}/label.csv)")
    records: dict[str, _Record] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a CSV saved by Excel starts with a BOM
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header != BANANA_COLUMNS:
                raise DataError(f"{path}:1: header must be {','.join(BANANA_COLUMNS)}, got {','.join(header)!r}")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{path}:{reader.line_num}"
                name = row[0].strip()
                rec = records.setdefault(name, _Record(folder / "images" / name, name, where))
                box = _parse_banana_row(row, where, report)
                rec.bad |= box is None
                if box is not None:
                    rec.boxes.append(box)
    except (UnicodeDecodeError, OSError) as e:
        raise _unreadable(path, e) from None
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
    return list(records.values())


def _unreadable(path: Path, exc: Exception) -> DataError:
    """A file that cannot be read as text: not UTF-8, or the OS refused (permissions, a folder of that name, I/O)."""
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    return DataError(f"{path}: cannot read it ({exc.strerror or exc})")


def _banana_class_names(root: Path) -> list[str]:
    """['banana'] when every label is 0 (the chapter), else 'class0'..'classK' for labels 0..K.

    Both splits are scanned so that train and val always agree on the class list."""
    top = 0
    for split in SPLITS:
        path = root / f"bananas_{split}" / "label.csv"
        try:
            with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
                labels = [row[1].strip() for row in csv.reader(f) if len(row) > 1]
        except (OSError, csv.Error):
            continue  # load_split reports problems with the split it reads
        top = max([top] + [int(v) for v in labels if _is_label(v)])
    return ["banana"] if top == 0 else [f"class{i}" for i in range(top + 1)]


def _load_json(path: Path) -> dict:
    """A COCO instances file, checked for its top-level structure."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise _unreadable(path, e) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("categories"), list) and isinstance(data.get("annotations", []), list)):
        raise DataError(f"{path}: not a COCO instances file: expected an object with lists "
                        f"'images', 'annotations' and 'categories'")
    return data


def _coco_categories(path: Path, data: dict) -> tuple[dict[int, int], list[str]]:
    """Category id -> contiguous class index (by sorted id), and the class names in that order."""
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid) or cid in names:
            raise DataError(f"{path}: record {i} (category id {cid!r}): needs a unique integer 'id'")
        names[cid] = str(cat.get("name", f"class{cid}"))
    if not names:
        raise DataError(f"{path}: no categories")
    order = sorted(names)
    return {cid: k for k, cid in enumerate(order)}, [names[cid] for cid in order]


def _coco_images(root: Path, path: Path, data: dict, report: _Problems) -> dict[int, _Record]:
    records: dict[int, _Record] = {}
    for i, img in enumerate(data["images"]):
        img_id = img.get("id") if isinstance(img, dict) else None
        where = f"{path}: record {i} (image id {img_id})"
        if not _is_int(img_id) or not isinstance(img.get("file_name"), str) or not img["file_name"]:
            report(f"{where}: an image needs an integer 'id' and a 'file_name'")
        elif img_id in records:
            report(f"{where}: duplicate image id")
            records[img_id].bad = True
        else:
            h, w = img.get("height"), img.get("width")
            size = (h, w) if _is_int(h) and _is_int(w) else None
            records[img_id] = _Record(root / img["file_name"], img["file_name"], where, size=size)
    return records


def _coco_box(ann: dict, where: str, cat_index: dict[int, int], report: _Problems) -> _Box | None:
    cid = ann.get("category_id")
    if not _is_int(cid) or cid not in cat_index:
        report(f"{where}: unknown category id {cid!r} (known: {', '.join(map(str, cat_index))})")
        return None
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        report(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")
        return None
    x, y, w, h = (float(v) for v in bbox)
    return _checked_area(_Box(cat_index[cid], x, y, x + w, y + h, where), report)


def _read_coco_split(root: Path, split: str, report: _Problems) -> tuple[list[_Record], list[str]]:
    """<split>.json -> records in file order, and the class names.

    Crowd annotations (iscrowd=1) are left out: they mark regions, not objects."""
    path = root / f"{split}.json"
    data = _load_json(path)
    cat_index, class_names = _coco_categories(path, data)
    records = _coco_images(root, path, data, report)
    for i, ann in enumerate(data.get("annotations", [])):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = f"{path}: record {i} (annotation id {ann_id})"
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        rec = records.get(image_id) if _is_int(image_id) else None
        if rec is None:
            report(f"{where}: unknown image id {image_id!r}")
            continue
        box = _coco_box(ann, where, cat_index, report)
        rec.bad |= box is None
        if box is not None and not ann.get("iscrowd"):
            rec.boxes.append(box)
    return list(records.values()), class_names
