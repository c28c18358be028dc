"""What the generators and the readers share: the split names, the banana CSV columns, the error
type, and ``DetectionData``, the one form every split loads into."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BANANA_COLUMNS = ["img_name", "label", "xmin", "ymin", "xmax", "ymax"]
SPLITS = ("train", "val", "test")  # test: optional; what verdicts are scored on, never searched


class DataError(ValueError):
    """Bad input data. ``str(e)`` starts with ``FILE:LINE: problem`` or
    ``FILE: record N (image id/annotation id X): problem``."""


@dataclass
class DetectionData:
    """One split, decoded.

    images: uint8 [N, 3, S, S], resized to the square side S.
    targets: float32 [N, M, 5], rows (class, x1, y1, x2, y2) with class in 0..q-1 and
        the box relative to the image, in [0, 1]. Padding rows have class -1 and a
        zero box. M = max objects in one image, at least 1.
    orig_sizes: int64 [N, 2], (height, width) of each original image in pixels.
    """

    images: torch.Tensor
    targets: torch.Tensor
    orig_sizes: torch.Tensor
    file_names: list[str]
    class_names: list[str]
    skipped: int = 0  # bad records skipped under skip_invalid

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int) -> "DetectionData":
        """The first n images; n=0 or n >= len(self) means all."""
        if n <= 0 or n >= len(self):
            return self
        return DetectionData(self.images[:n], self.targets[:n], self.orig_sizes[:n],
                             self.file_names[:n], self.class_names, self.skipped)


def to_coco_dict(data: DetectionData) -> dict:
    """The ground truth as a COCO instances dict in original pixel coordinates.

    Image ids are index + 1, category ids class index + 1, annotation ids 1, 2, ...;
    bbox is [x, y, width, height] and area width * height."""
    images, annotations = [], []
    for i, ((h, w), rows) in enumerate(zip(data.orig_sizes.tolist(), data.targets.tolist())):
        images.append({"id": i + 1, "file_name": data.file_names[i], "height": h, "width": w})
        for cls, x1, y1, x2, y2 in rows:
            if cls < 0:
                continue
            bw, bh = (x2 - x1) * w, (y2 - y1) * h
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                "bbox": [x1 * w, y1 * h, bw, bh], "area": bw * bh, "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(data.class_names)]
    return {"info": {"description": "tinyssd-ablate ground truth"}, "images": images,
            "annotations": annotations, "categories": categories}
