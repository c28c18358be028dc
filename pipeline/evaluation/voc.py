"""PASCAL VOC average precision at IoU 0.5, beside COCO's: the metric of the SSD paper (the chapter's exercise
"use other methods to evaluate the model, such as those in the SSD paper"); and the score threshold that
maximises F1 at IoU 0.5, to display detections at (the exercise "how should the threshold be chosen?").

- VOC2007: 11-point interpolated AP: the mean, over recall r in {0, 0.1, ..., 1}, of the best precision at a
  recall of at least r.
- VOC2010 and later: all-point AP: the area under the precision-recall curve after precision is made
  monotone (each point takes the best precision at any higher recall).

Matching is VOC's: per class, detections in descending score order; each takes the unmatched ground-truth
box of its image with the highest IoU if that IoU is at least 0.5 (a true positive), else it is a false
positive (a second detection of a matched box is one too). The inputs are the COCO-format ground truth and
results that pycocotools scores (plain Python and numpy: scoring runs in a worker thread, see
pipeline/training/validation.py). COCO crowd boxes, which VOC has not, are left out, and so are detections beyond
the ground truth's images.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

IOU = 0.5


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with each of boxes [n, 4] (xywh), as areas of the continuous boxes."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matches(gt: dict, results: list[dict], category: int) -> tuple[np.ndarray, np.ndarray, int]:
    """VOC's matching of ``category``: the scores of its detections in descending order, whether each is a true
    positive, and the number of ground-truth boxes."""
    truth: dict[int, np.ndarray] = defaultdict(lambda: np.zeros((0, 4)))
    for image, boxes in _group(a for a in gt["annotations"] if a["category_id"] == category and not a.get("iscrowd")):
        truth[image] = boxes
    n_truth = sum(len(b) for b in truth.values())
    images = {im["id"] for im in gt["images"]}
    dets = sorted((r for r in results if r["category_id"] == category and r["image_id"] in images),
                  key=lambda r: -r["score"])  # sorted() is stable: equal scores keep the results' order
    used = {image: np.zeros(len(b), dtype=bool) for image, b in truth.items()}
    hits = np.zeros(len(dets))
    for i, det in enumerate(dets):
        boxes = truth[det["image_id"]]
        if len(boxes):
            overlap = _iou(np.asarray(det["bbox"], dtype=float), boxes)
            best = int(overlap.argmax())
            if overlap[best] >= IOU and not used[det["image_id"]][best]:
                used[det["image_id"]][best] = True
                hits[i] = 1
    return np.array([d["score"] for d in dets], dtype=float), hits, n_truth


def _curve(hits: np.ndarray, n_truth: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection, hits in descending score order."""
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1) if len(hits) else np.zeros(0)
    recall = tp / n_truth if n_truth else np.zeros(len(hits))
    return precision, recall


def precision_recall(gt: dict, results: list[dict], category: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(precision, recall) after each detection of ``category`` in score order, and its ground-truth count."""
    _, hits, n_truth = matches(gt, results, category)
    return (*_curve(hits, n_truth), n_truth)


def best_f1(gt: dict, results: list[dict]) -> tuple[float, float]:
    """(score threshold, F1) where F1 at IoU 0.5 is highest, over all classes together: the threshold to display
    detections at (the chapter's exercise asks how to choose it). Keeping detections scoring at least the
    threshold gives that F1. (NaN, 0) without ground truth or detections."""
    scores, hits, n_truth = [], [], 0
    for category in gt["categories"]:
        s, h, n = matches(gt, results, category["id"])
        scores.append(s)
        hits.append(h)
        n_truth += n
    scores, hits = np.concatenate(scores), np.concatenate(hits)
    if not n_truth or not len(scores):
        return math.nan, 0.0
    order = np.argsort(-scores, kind="stable")
    precision, recall = _curve(hits[order], n_truth)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.where(precision + recall > 0,
                                                                            precision + recall, 1), 0.0)
    best = int(f1.argmax())
    return float(scores[order][best]), float(f1[best])


def _group(annotations) -> list[tuple[int, np.ndarray]]:
    boxes: dict[int, list] = defaultdict(list)
    for a in annotations:
        boxes[a["image_id"]].append(a["bbox"])
    return [(image, np.asarray(b, dtype=float)) for image, b in boxes.items()]


def ap_11_point(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2007: the mean over r in {0, 0.1, ..., 1} of the best precision at recall >= r (0 where none)."""
    points = [precision[recall >= r].max() if (recall >= r).any() else 0.0 for r in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def ap_all_points(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2010+: the area under the precision envelope (best precision at any higher recall)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def voc_metrics(gt: dict, results: list[dict]) -> dict[str, float]:
    """{'voc07_ap50', 'voc_ap50'}: each the mean over classes with ground truth (NaN when none has any), and
    with several classes, each one's ('voc07_ap50/<name>', 'voc_ap50/<name>'); and 'f1_threshold', 'best_f1'
    (see best_f1)."""
    per_class07, per_class, out = [], [], {}
    for category in gt["categories"]:
        precision, recall, n_truth = precision_recall(gt, results, category["id"])
        if not n_truth:
            continue
        per_class07.append(ap_11_point(precision, recall))
        per_class.append(ap_all_points(precision, recall))
        if len(gt["categories"]) > 1:  # one class: the mean is that class's AP
            out[f"voc07_ap50/{category['name']}"], out[f"voc_ap50/{category['name']}"] = per_class07[-1], per_class[-1]
    out["voc07_ap50"] = float(np.mean(per_class07)) if per_class07 else math.nan
    out["voc_ap50"] = float(np.mean(per_class)) if per_class else math.nan
    out["f1_threshold"], out["best_f1"] = best_f1(gt, results)
    return out
