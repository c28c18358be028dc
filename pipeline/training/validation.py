"""Validation during training: detections in the training thread, COCO scoring by pycocotools in a worker.

Scoring is host work: on the H200 host one pass over the 100 banana val images took about 0.9 s
(most of it COCOeval.evaluateImg in Python, measured 2026-11-26), as long as 5 epochs of training
there. While a worker thread scores epoch e, the training thread goes on with epoch e+1. Predicting
stays in the training thread, so it sees exactly epoch e's weights, and so does every torch op:
the detections leave the device in one copy and become plain Python columns there, and the worker
runs only Python and numpy. A worker that ran torch ops as well (the conversion to COCO results)
slowed CPU training by 20% (train_s 92-97 s against 77-82 s for the quick profile on 2 cores,
measured 2026-11-26): torch's CPU ops in a second thread compete with the training thread's.

A pack's replicas are scored in parallel processes (one per replica, at most one per core), started once per
run with the split's ground truth: COCOeval is Python under the GIL, so threads would take turns. The processes
import pipeline.evaluation.coco only, never torch.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

import torch

from pipeline.config import RunConfig
from pipeline.data import DetectionData, to_coco_dict
from pipeline.evaluation.coco import CocoColumns, CocoResult, coco_evaluate, remember_ground_truth, score_columns
from pipeline.evaluation.evaluate import Detections, coco_columns, predict_with_config


def detections_to_host(detections: list[Detections]) -> list[Detections]:
    """The same detections on the CPU, moved in one copy per field (not three per image)."""
    if not detections or detections[0].scores.device.type == "cpu":
        return detections
    counts = [len(d.scores) for d in detections]
    fields = [torch.cat([getattr(d, name) for d in detections]).cpu().split(counts)
              for name in ("boxes_xyxy", "scores", "labels")]
    return [Detections(*per_image) for per_image in zip(*fields)]


class Scored:
    """One validation's result: val/* metrics, the COCOeval result and the (host) detections."""

    def __init__(self, metrics: dict[str, float], coco: CocoResult, detections: list[Detections], seconds: float):
        self.metrics, self.coco, self.detections, self.seconds = metrics, coco, detections, seconds


class Validator:
    """``start(model)`` predicts now and returns a Future of :class:`Scored`. Use it as a context
    manager: on exit it waits for the scoring still running."""

    def __init__(self, val: DetectionData, cfg: RunConfig, device: torch.device, split: str = "val"):
        self.val, self.cfg, self.device, self.split = val, cfg, device, split  # split names the metrics: val/map
        self.ground_truth = to_coco_dict(val)  # once per run, not once per validation
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coco-scoring")
        self.processes: ProcessPoolExecutor | None = None  # a pack's scorers, started at its first validation

    def __enter__(self) -> "Validator":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown(wait=True, cancel_futures=True)

    def predict(self, model, replicas: list[int] | None = None):
        """Detections on the host: one list for a one-replica model, or one list per replica in ``replicas``."""
        found = predict_with_config(model, self.val.images, self.device, self.cfg, replicas=replicas)
        return detections_to_host(found) if replicas is None else [detections_to_host(d) for d in found]

    def start(self, model, replicas: list[int] | None = None) -> Future:
        """Predict now, in this thread; score in the worker thread. A Future of one :class:`Scored`, or with
        ``replicas`` (of a pack) of a list of them, one per replica in ``replicas``."""
        if replicas is None:
            detections = self.predict(model)
            return self.pool.submit(self.score, coco_columns(detections, self.val.orig_sizes), detections)
        per_replica = self.predict(model, replicas)
        columns = [coco_columns(detections, self.val.orig_sizes) for detections in per_replica]
        if len(replicas) == 1:
            return self.pool.submit(lambda: [self.score(columns[0], per_replica[0])])
        scorers = self._scorers(len(replicas))
        return self.pool.submit(lambda: self._score_in_parallel(scorers, columns, per_replica))

    def _scorers(self, replicas: int) -> ProcessPoolExecutor:
        if self.processes is None:  # spawned, not forked: a fork of a process running torch threads can hang
            self.processes = ProcessPoolExecutor(min(replicas, os.cpu_count() or 1),
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=remember_ground_truth, initargs=(self.ground_truth,))
        return self.processes

    def _score_in_parallel(self, scorers: ProcessPoolExecutor, columns: list[CocoColumns],
                           per_replica: list[list[Detections]]) -> list[Scored]:
        """Each replica's COCOeval in a process of its own; seconds: the wall time of all of them, per replica."""
        started = time.perf_counter()
        results = list(scorers.map(score_columns, columns))
        seconds = (time.perf_counter() - started) / len(results)
        return [Scored(self._named(coco), coco, detections, seconds) for coco, detections in zip(results, per_replica)]

    def _named(self, coco: CocoResult) -> dict[str, float]:
        return {f"{self.split}/{k}": v for k, v in coco.metrics.items()}

    def score(self, columns: CocoColumns, detections: list[Detections]) -> Scored:
        """COCOeval on ``columns``: plain Python and numpy, no torch op (see the module's docstring)."""
        started = time.perf_counter()
        coco = coco_evaluate(self.ground_truth, columns.results())
        return Scored(self._named(coco), coco, detections, time.perf_counter() - started)
