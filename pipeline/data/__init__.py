"""Detection data: synthetic generators, banana-folder and COCO readers, validation, resizing.

Every split loads into one ``DetectionData``: uint8 images resized to a square
side S (like the chapter) and padded targets with boxes *relative* to the image,
so anchors, losses and metrics never depend on the input size.

On-disk formats
- Banana folder (the chapter's ``banana-detection/``): ``bananas_train/`` and
  ``bananas_val/``, each with ``images/*.png`` and ``label.csv`` whose header is
  ``img_name,label,xmin,ymin,xmax,ymax`` (pixels). Several rows may name one image.
- COCO folder: ``train.json`` and ``val.json`` (COCO instances), ``file_name``
  relative to the folder. Images without annotations are negative-only images.
- Either may have a third split, ``bananas_test/`` or ``test.json``, that no search sees: verdicts are
  scored on it (the generated sets have one of 500 images).

Errors name the place: ``FILE:LINE: problem`` for CSV and JSON syntax,
``FILE: record N (image id X): problem`` for JSON records, where N is the 0-based
index in the file's ``images`` or ``annotations`` list.

The package's two sides meet here, in ``resolve_dataset`` and ``load_split``:
- ``synthetic.py``: the generators (bananas, shapes) that write those formats;
- ``read.py``: annotation files -> validated records; ``decode.py``: records -> tensors,
  with the decoded-split cache;
- ``core.py``: what both sides share (``DetectionData``, ``DataError``, ``to_coco_dict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from pipeline.data.core import BANANA_COLUMNS, SPLITS, DataError, DetectionData, to_coco_dict
from pipeline.data.decode import BOX_TOLERANCE_PX, DECODE_VERSION, _decode_cached, _targets
from pipeline.data.read import (MAX_CLASSES, MIN_BOX_SIDE, _banana_class_names, _Problems, _read_banana_split,
                                _read_coco_split)
from pipeline.data.synthetic import GENERATOR_VERSION, SHAPE_CLASSES, generate_bananas, generate_shapes
from pipeline.data.synthetic import _banana_image, _image_rng, _mask_box  # noqa: F401  (tests/data/test_data.py uses them)

__all__ = ["BANANA_COLUMNS", "BOX_TOLERANCE_PX", "DECODE_VERSION", "GENERATOR_VERSION", "MAX_CLASSES", "MIN_BOX_SIDE",
           "SHAPE_CLASSES", "SPLITS", "DataError", "DetectionData", "default_cache_dir", "generate_bananas",
           "generate_shapes", "has_split", "load_split", "resolve_dataset", "to_coco_dict"]


def default_cache_dir() -> Path:
    """``$TINYSSD_CACHE`` if set, else ``~/.cache/tinyssd-ablate``."""
    env = os.environ.get("TINYSSD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinyssd-ablate"


# name -> (generator, on-disk format, the generator's arguments; they are part of the cache key)
_GENERATORS = {
    "bananas": (generate_bananas, "bananas", {"n_train": 1000, "n_val": 100, "size": 256, "seed": 0, "n_test": 500}),
    "shapes": (generate_shapes, "coco", {"n_train": 1000, "n_val": 200, "size": 256, "seed": 0, "n_test": 500}),
}


def _generated(name: str, cache_dir: Path, progress: bool) -> Path:
    """The cached folder of generated data set `name`, built on first use.

    Built in a temporary folder beside the final one and renamed into place, so a reader
    never sees a half-written set; when two processes race, the loser uses the winner's."""
    generate, _, params = _GENERATORS[name]
    key = json.dumps({"name": name, "version": GENERATOR_VERSION, **params}, sort_keys=True)
    final = cache_dir / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        generate(tmp, **params, progress=progress)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_dataset(name_or_path: str, cache_dir: Path | None = None, progress: bool = True) -> tuple[Path, str]:
    """(folder, format) for 'bananas', 'shapes' (generated on first use) or a folder path.

    format is 'bananas' (a folder with bananas_train/label.csv) or 'coco' (a folder with
    train.json and val.json)."""
    if name_or_path in _GENERATORS:
        folder = _generated(name_or_path, Path(cache_dir or default_cache_dir()), progress)
        return folder, _GENERATORS[name_or_path][1]
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder, and not a generated data set name "
                        f"({', '.join(_GENERATORS)})")
    if (folder / "bananas_train" / "label.csv").is_file():
        return folder, "bananas"
    if (folder / "train.json").is_file() and (folder / "val.json").is_file():
        return folder, "coco"
    raise DataError(f"{folder}: unrecognised data folder: expected bananas_train/label.csv and "
                    f"bananas_val/label.csv (banana format) or train.json and val.json (COCO format)")


def has_split(dataset: str, split: str, cache_dir: Path | None = None) -> bool:
    """Whether the data set has ``split``: the generated ones have a test split; a folder has one when it
    holds bananas_test/label.csv or test.json."""
    folder, fmt = resolve_dataset(dataset, cache_dir, progress=False)
    return (folder / (f"bananas_{split}/label.csv" if fmt == "bananas" else f"{split}.json")).is_file()


def load_split(dataset: str, split: str, image_size: int, *, cache_dir: Path | None = None,
               skip_invalid: bool = False, progress: bool = True) -> DetectionData:
    """Load split 'train', 'val' or 'test' of a data set name ('bananas', 'shapes') or folder.

    Images are resized to image_size x image_size (PIL bilinear); boxes stay relative.
    Raises DataError naming the file and line or record of the first problem; with
    skip_invalid, bad rows, annotations and images are skipped and counted in ``skipped``
    (an image with a bad row or annotation is dropped whole). A malformed file always raises."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder, fmt = resolve_dataset(dataset, cache_dir, progress)
    report = _Problems(skip_invalid)
    if fmt == "bananas":
        records, class_names = _read_banana_split(folder, split, report), _banana_class_names(folder)
        source = folder / f"bananas_{split}" / "label.csv"
    else:
        records, class_names = _read_coco_split(folder, split, report)
        source = folder / f"{split}.json"
    images, sizes, kept = _decode_cached(records, image_size, report, progress, Path(cache_dir or default_cache_dir()))
    if not kept:
        raise DataError(f"{source}: no usable images ({report.count} invalid records skipped)")
    return DetectionData(images, _targets(kept, sizes), torch.tensor(sizes, dtype=torch.int64),
                         [r.name for r in kept], class_names, report.count)
