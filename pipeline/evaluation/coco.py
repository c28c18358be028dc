"""COCO-style scoring with pycocotools, with no torch import: what a scoring process needs (pipeline.training
.validation scores a pack's replicas in parallel processes, which start faster and leave the training's torch
threads alone without it). coco_evaluate: COCOeval with all 12 stats kept under names, VOC's AP50 beside them,
and the precision array for PR curves."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.evaluation.voc import voc_metrics
from pipeline.metric_names import STAT_NAMES

AREA_RANGES = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}  # COCO's


@dataclass
class CocoResult:
    metrics: dict[str, float]  # STAT_NAMES -> value, NaN where COCO has no ground truth (its -1); and VOC's AP50
    precision_iou50: np.ndarray = field(repr=False)  # [101 recall points, K classes], area all, 100 dets


@dataclass
class CocoColumns:
    """Detections as plain Python columns, one entry per detection: image_id (1-based), category_id
    (1-based), bbox [x, y, w, h] in original pixels, score. No tensors: building the COCO results
    from it needs no torch op (see pipeline.training.validation for why that matters)."""
    image_ids: list[int]
    category_ids: list[int]
    boxes_xyxy: list[list[float]]
    scores: list[float]

    def results(self) -> list[dict]:
        return [{"image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
                for i, c, (x1, y1, x2, y2), score in zip(self.image_ids, self.category_ids, self.boxes_xyxy,
                                                         self.scores)]


def _check_results(results: list[dict]) -> None:
    for i, r in enumerate(results):
        values = [*r["bbox"], r["score"]]
        if len(r["bbox"]) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"detection {i} (image {r.get('image_id')}) has a non-finite or malformed box/score")


def _empty_result(gt: dict) -> CocoResult:
    """What COCOeval would say for no detections: 0 where ground truth exists, NaN where none."""
    areas = [a["area"] for a in gt["annotations"] if not a.get("iscrowd", 0)]
    has = {name: any(lo <= x < hi for x in areas) for name, (lo, hi) in AREA_RANGES.items()}
    metrics = {}
    for name in STAT_NAMES:
        size = next((s for s in AREA_RANGES if name.endswith(s)), None)
        metrics[name] = 0.0 if (has[size] if size else areas) else math.nan
    return CocoResult(metrics, np.zeros((101, len(gt["categories"]))))


class _ThreadFilteredStdout:
    """Stands in for a stdout stream: drops what silenced threads write, forwards everything else
    (other threads' writes, flush, isatty, fileno, encoding, ... through ``__getattr__``)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return len(text) if getattr(_silenced, "depth", 0) else self.stream.write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self.stream, name)


_silenced = threading.local()  # .depth > 0 while this thread is inside silence_stdout_in_this_thread
_install_lock = threading.Lock()


@contextlib.contextmanager
def silence_stdout_in_this_thread():
    """Drop what this thread prints, and only this thread; unlike ``contextlib.redirect_stdout``,
    which swaps ``sys.stdout`` for the whole process, so that the training thread's messages and
    Rich's progress frames vanished while the "coco-scoring" worker ran. Nests; works in any thread.

    On entry, unless ``sys.stdout`` already is one, a :class:`_ThreadFilteredStdout` is put in front
    of the current ``sys.stdout`` (under a lock, so two threads never wrap it twice) and left there:
    it is transparent to threads that are not silenced, and putting the old stream back on exit
    could undo a replacement made meanwhile by another thread (pytest's capture, Rich's Live, a
    redirect). Each proxy forwards to the stream it wrapped, fixed at entry: it cannot look up
    ``sys.stdout`` (that is itself) and ``sys.__stdout__`` would bypass pytest's capture and Rich.
    If something replaces ``sys.stdout`` later, the next entry wraps the replacement; a replacement
    made while a thread is already silenced reaches that thread's prints until its next entry.
    Which threads are silenced is one thread-local flag shared by every proxy, so a proxy that a
    redirect puts back still silences the right threads."""
    with _install_lock:
        if sys.stdout is not None and not isinstance(sys.stdout, _ThreadFilteredStdout):
            sys.stdout = _ThreadFilteredStdout(sys.stdout)
    _silenced.depth = getattr(_silenced, "depth", 0) + 1
    try:
        yield
    finally:
        _silenced.depth -= 1


def coco_evaluate(gt: dict, results: list[dict]) -> CocoResult:
    """Run COCOeval (bbox) on an in-memory ground-truth dict and results list; VOC's AP at IoU 0.5 comes with it
    (pipeline.evaluation.voc: voc07_ap50, the 11-point AP of VOC2007, and voc_ap50, the all-point AP of VOC2010+)."""
    if not gt.get("annotations"):
        raise ValueError("the evaluation set has no annotations: COCO mAP would be undefined (-1)")
    _check_results(results)
    if not results:  # pycocotools' loadRes crashes on an empty list
        empty = _empty_result(gt)
        return CocoResult({**empty.metrics, **voc_metrics(gt, results)}, empty.precision_iou50)
    with silence_stdout_in_this_thread():  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) if s >= 0 else math.nan for s in evaluator.stats]
    precision = evaluator.eval["precision"][0, :, :, 0, 2]  # IoU .5, all recalls, all classes, area all, 100 dets
    metrics = {**dict(zip(STAT_NAMES, stats)), **voc_metrics(gt, results)}  # and the SSD paper's VOC AP50
    return CocoResult(metrics, np.where(precision < 0, np.nan, precision))


_ground_truth: dict | None = None  # a scoring process's ground truth, sent once when it starts


def remember_ground_truth(gt: dict) -> None:
    """A scoring process's initializer: keep the split's ground truth, so that each task sends only detections."""
    global _ground_truth
    _ground_truth = gt


def score_columns(columns: CocoColumns) -> CocoResult:
    """coco_evaluate of one replica's detections against the ground truth this process was started with."""
    return coco_evaluate(_ground_truth, columns.results())
