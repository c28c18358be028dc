"""How well TinySSD's anchors fit a data set's objects (the chapter's exercise "analyse how the sizes and ratios
of the anchor boxes are chosen at different scales").

For each object: its best IoU with any anchor, the feature map that anchor sits on, and how many anchors
reach IoU 0.5 with it. Summed up: the share of objects some anchor matches at IoU >= 0.5 (the best possible
recall, as Ultralytics' autoanchor calls it: the chapter's matching still gives every object its best anchor,
but below 0.5 that anchor's offsets have to stretch far), by COCO size and by feature map; and the
``anchor_scale`` that maximises it for this data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from pipeline.evaluation.coco import AREA_RANGES
from pipeline.model.boxes import anchors_per_location, feature_map_sizes
from pipeline.model.tinyssd import TinySSD

MATCH_IOU = 0.5
SCALES = np.round(np.geomspace(0.25, 2.0, 22), 3)  # anchor_scale values tried for the suggestion


@dataclass(frozen=True)
class ObjectFit:
    """Per object (arrays of length n): best IoU with any anchor, that anchor's feature map (0..4), anchors at
    IoU >= 0.5, and the COCO size class ('small', 'medium', 'large') of its box in original pixels."""
    best_iou: np.ndarray
    feature_map: np.ndarray
    anchors_matched: np.ndarray
    size: np.ndarray


def objects_of(targets: torch.Tensor, orig_sizes: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """The real boxes of a split (relative xyxy [n, 4]) and their COCO size class, from DetectionData's padded
    targets [N, M, 5] and original (h, w) [N, 2]."""
    real = targets[..., 0] >= 0
    boxes = targets[..., 1:][real]
    h, w = orig_sizes[:, 0:1].expand_as(real)[real].double(), orig_sizes[:, 1:2].expand_as(real)[real].double()
    area = ((boxes[:, 2] - boxes[:, 0]) * w * (boxes[:, 3] - boxes[:, 1]) * h).numpy()
    size = np.select([area < AREA_RANGES["small"][1], area < AREA_RANGES["medium"][1]], ["small", "medium"], "large")
    return boxes.float(), size


def anchor_levels(image_size: int) -> np.ndarray:
    """The feature map (0..4) of each of TinySSD's anchors, in the model's order."""
    per_map = [s * s * anchors_per_location() for s in feature_map_sizes(image_size)]
    return np.repeat(np.arange(len(per_map)), per_map)


def fit_objects(boxes: torch.Tensor, size: np.ndarray, image_size: int, anchor_scale: float) -> ObjectFit:
    """Each object's fit with the anchors of a TinySSD at ``image_size`` and ``anchor_scale``."""
    anchors = TinySSD(1, anchor_scale).anchors_for_size(image_size)
    iou = box_iou(boxes, anchors)  # [objects, anchors]
    best, where = iou.max(dim=1) if len(boxes) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return ObjectFit(best.numpy(), anchor_levels(image_size)[where.numpy()], (iou >= MATCH_IOU).sum(dim=1).numpy(),
                     size)


def best_possible_recall(fit: ObjectFit) -> float:
    return float((fit.best_iou >= MATCH_IOU).mean()) if len(fit.best_iou) else float("nan")


def summary(fit: ObjectFit) -> dict:
    """The share matched at IoU >= 0.5, overall, by COCO size and by feature map; median best IoU; anchors each
    object gets at IoU >= 0.5 (median and share with none)."""
    def part(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        return {"objects": n, "best_possible_recall": float((fit.best_iou[mask] >= MATCH_IOU).mean()) if n else None,
                "median_best_iou": float(np.median(fit.best_iou[mask])) if n else None}
    return {**part(np.ones(len(fit.best_iou), dtype=bool)),
            "by_size": {s: part(fit.size == s) for s in AREA_RANGES},
            "by_feature_map": {str(level): part(fit.feature_map == level) for level in range(5)},
            "anchors_at_iou_05": {"median": float(np.median(fit.anchors_matched)) if len(fit.anchors_matched) else None,
                                  "share_with_none": float((fit.anchors_matched == 0).mean())
                                  if len(fit.anchors_matched) else None}}


def suggest_scale(boxes: torch.Tensor, size: np.ndarray, image_size: int) -> tuple[float, list[tuple[float, float]]]:
    """The anchor_scale that maximises the best possible recall (ties: the one nearest 1, the chapter's), and
    the curve it was read from: [(scale, recall)]."""
    curve = [(float(s), best_possible_recall(fit_objects(boxes, size, image_size, float(s)))) for s in SCALES]
    if not len(boxes):
        return 1.0, curve
    top = max(r for _, r in curve)
    best = min((s for s, r in curve if r == top), key=lambda s: abs(np.log(s)))
    return best, curve
