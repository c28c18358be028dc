"""Training: fit(cfg or pack, data) trains TinySSD, or a pack of K replicas, and validates with COCO mAP as it goes.

``fit`` knows nothing of MLflow or Optuna: it takes a run handle to log to and an
``on_epoch`` callback, which is where a sweep reports to its pruner.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import RunConfig, validation_epochs
from pipeline.data import DetectionData
from pipeline.evaluation.coco import CocoResult
from pipeline.evaluation.evaluate import Detections
from pipeline.interrupts import raise_if_interrupted
from pipeline.machine import resolve_device
from pipeline.model.averaging import WeightAverage
from pipeline.model.checkpoint import load_latest_epoch_state
from pipeline.model.pack import Pack, PackModel, build_model
from pipeline.tracking import RunHandle
from pipeline.training.balance import loss_ratio, replica_gradient_ratio
from pipeline.training.epochs import (EpochCallback, EpochReporter, ProgressView, TrainedEpoch, epoch_state, resumable,
                             resume)
from pipeline.training.step import EXPLODED, ExplodedLossError, NonFiniteLossError, TrainStep, cudnn_benchmark
from pipeline.training.validation import Validator

__all__ = ["EpochCallback", "FitResult", "Pruned", "fit"]


class Pruned(Exception):
    """Raised by an on_epoch callback to stop a run that is not worth finishing."""

    def __init__(self, epoch: int):
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


@dataclass
class ReplicaResult:
    """One replica of a fit (the only one of a single run)."""
    config: RunConfig
    metrics: dict[str, float]  # its last reported epoch's train/* and val/*; empty if it diverged first
    coco: CocoResult | None  # its last validation
    detections: list[Detections] | None
    diverged: tuple[int, int] | None  # (epoch, step) of its first non-finite loss, where it had one

    @property
    def seed(self) -> int:
        return self.config.seed


@dataclass
class FitResult:
    model: PackModel  # a TinySSD for a single run
    pack: Pack
    metrics: dict[str, float]  # the last epoch's metrics, combined over the live replicas (pipeline.training.seeds)
    history: list[dict[str, float]]  # one combined dict per epoch
    replicas: list[ReplicaResult]
    train_images_per_s: float  # training steps only, validation excluded, summed over the replicas
    timings: dict[str, float]  # seconds the training loop spent on: setup, train (graph warm-up and capture
                               # included, and broken out), validate (predicting, and waiting for a score),
                               # epoch_state; and scoring: pycocotools' seconds in the worker thread
    graph_error: str | None = None  # on CUDA with cuda_graph: why capture failed and the fit trained eagerly

    @property
    def live(self) -> list[ReplicaResult]:
        return [r for r in self.replicas if r.diverged is None]

    @property
    def coco(self) -> CocoResult:
        """The first live replica's last validation (a single run's)."""
        return self.live[0].coco

    @property
    def detections(self) -> list[Detections]:
        return self.live[0].detections


def tune_cpu_allocator() -> bool:
    """Keep freed heap memory for reuse instead of returning every big tensor to the OS.

    glibc mmaps and munmaps each large allocation, so every training step page-faults its
    activations back in (~700k faults, about 1 CPU-second per batch of 32 at 256x256 here).
    Measured: +55% training throughput on CPU, for ~1 GB more peak memory.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def epoch_lr(cfg: RunConfig, epoch: int) -> float:
    """Constant (the chapter), or cosine from lr to 0 across the epochs, set at the start of each epoch."""
    factor = 1.0 if cfg.lr_schedule == "constant" else 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr * factor


def held_on(data: DetectionData, device: torch.device) -> DetectionData:
    """On a GPU the whole split lives there once (1000 x 3 x 256 x 256 uint8 is 200 MB): no copy per batch."""
    if device.type != "cuda":
        return data
    return dataclasses.replace(data, images=data.images.to(device), targets=data.targets.to(device))


def negatives_seed(seed: int) -> int:
    """The seed of a run's stream of random negatives: derived from its seed, far from the seeds runs use."""
    return (seed * 2654435761 + 2 ** 40) % 2 ** 63


def _train_epoch(step: TrainStep, n_images: int, cfg: RunConfig, generators: list[torch.Generator],
                 view: ProgressView) -> list[dict[str, float]]:
    """One epoch of every replica, each in its own batch order; returns each replica's train/* metrics."""
    step.start_epoch()
    orders = torch.stack([torch.randperm(n_images, generator=g) for g in generators]).to(step.images.device)
    for start in range(0, n_images, cfg.batch_size):
        raise_if_interrupted()  # a signal whose interrupt Python dropped (see pipeline/interrupts.py)
        step.run(orders[:, start:start + cfg.batch_size])
        view.batch_done()
    return step.replica_summaries()


def _check_divergence(step: TrainStep, pack: Pack, epoch: int, diverged: dict[int, tuple[int, int]],
                      stop: bool, losses: list[float], first_losses: dict[int, float]) -> None:
    """Record the replicas that diverged this epoch: a loss that became NaN or inf, or an epoch's mean loss
    (``losses``, per replica) past EXPLODED times the first epoch this fit trained (``first_losses``, filled
    here). A diverged replica cannot touch the others (its weights are its own slice), so they train on; with
    ``stop``, or once none is left, it raises."""
    for k, bad_step in enumerate(step.bad_steps()):
        if k in diverged:
            continue
        first = first_losses.setdefault(k, losses[k])
        exploded = bad_step < 0 and math.isfinite(losses[k]) and losses[k] > EXPLODED * abs(first)
        if bad_step < 0 and not exploded:
            continue
        diverged[k] = (epoch, bad_step if bad_step >= 0 else step.batches - 1)
        if stop or len(diverged) == pack.k:
            seed = f" (seed {pack.seeds[k]})" if pack.k > 1 else ""
            if exploded:
                raise ExplodedLossError(epoch, step.batches - 1, losses[k], first, seed)
            raise NonFiniteLossError(epoch, bad_step, float(step.sums[k, 0]), seed)


def fit(setting: RunConfig | Pack, train: DetectionData, val: DetectionData, run: RunHandle | None = None,
        on_epoch: EpochCallback | None = None, progress: bool = True, state_dir: Path | None = None,
        stop_on_divergence: bool = True, score_split: str = "val") -> FitResult:
    """Train TinySSD with a config, or a pack of replicas; validate with COCO mAP (see RunConfig.val_every);
    log each epoch to ``run``, a pack's replicas combined (pipeline.training.seeds).

    Each validation's COCO scoring runs in a worker thread while the next epoch trains, so an epoch
    with validation is reported (to ``run``, ``on_epoch`` and the progress bar) when its score is in:
    usually after the next epoch, later where epochs are shorter than a score (a GPU), always in
    order. If training fails, the epochs trained and scored before it are still reported to ``run``.
    With ``state_dir``, the state after every validated epoch is saved there, and training resumes from
    the newest good one: a retried trial goes on where the killed one stopped. A replica whose loss turns
    NaN or inf raises NonFiniteLossError, or without ``stop_on_divergence`` is dropped and recorded while
    the others train on (they are untouched by it); a run whose every replica diverged always raises.
    ``score_split`` names the split ``val`` is (its metrics are ``val/*``, or ``test/*`` for the test split).
    """
    pack = setting if isinstance(setting, Pack) else Pack((setting,))
    return _Training(pack, train, val, run, on_epoch, progress, state_dir, stop_on_divergence, score_split).run()


class _Training:
    """The moving parts of one fit: the pack's network and step, its generators, validator and reporter."""

    def __init__(self, pack: Pack, train: DetectionData, val: DetectionData, run: RunHandle | None,
                 on_epoch: EpochCallback | None, progress: bool, state_dir: Path | None, stop_on_divergence: bool,
                 score_split: str):
        started = time.perf_counter()
        self.pack, self.cfg, self.state_dir, self.stop = pack, pack.shared, state_dir, stop_on_divergence
        self.device = resolve_device(self.cfg.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.generators = [torch.Generator().manual_seed(seed) for seed in pack.seeds]  # batch order, flips
        self.negative_generators = [torch.Generator().manual_seed(negatives_seed(seed)) for seed in pack.seeds]
        self.model = build_model(pack, len(train.class_names), self.device)  # seeds each replica's weights
        torch.manual_seed(self.cfg.seed)  # for any op that draws from torch's own generators (flips and negatives do not)
        train, val = held_on(train, self.device), held_on(val, self.device)
        state = resumable(load_latest_epoch_state(state_dir), pack, state_dir)
        self.start, history, self.train_seconds, self.diverged = resume(state, self.model, self.all_generators,
                                                                         self.device, run)
        self.first_losses: dict[int, float] = {}  # each replica's first trained epoch's loss: the explosion's yardstick
        self.average = WeightAverage(self.cfg)  # the last epochs' mean weights, where the knob asks for them
        self.average.restore(self.model, (state or {}).get("average"))
        self.step = TrainStep(self.model, train.images, train.targets, pack, self.device, self.generators,
                              self.negative_generators)
        self.timings = {"setup_s": 0.0, "train_s": 0.0, "validate_s": 0.0, "scoring_s": 0.0, "epoch_state_s": 0.0}
        self.view = ProgressView(progress, self.cfg.epochs, -(-len(train) // self.cfg.batch_size), self.start)
        self.reporter = EpochReporter(pack, history, self.timings, run, on_epoch, self.view, state_dir)
        self.validator = Validator(val, self.cfg, self.device, score_split)
        self.last_metrics: list[dict[str, float]] = [{} for _ in pack.replicas]
        self.timings["setup_s"] = time.perf_counter() - started

    @property
    def all_generators(self) -> list[torch.Generator]:
        """Every random stream an epoch state must hold: batch orders and flips, then negatives."""
        return self.generators + self.negative_generators

    @property
    def live(self) -> list[int]:
        return [k for k in range(self.pack.k) if k not in self.diverged]

    def run(self) -> FitResult:
        with self.view, self.validator, cudnn_benchmark(self.cfg.cudnn_benchmark and self.device.type == "cuda"):
            try:
                for epoch in range(self.start, self.cfg.epochs):
                    self.train_epoch(epoch)
                self.reporter.report(wait=True)
            except Pruned:
                raise
            except BaseException:  # a NaN, a timeout, Ctrl-C: what was trained and scored before still reaches the run
                with contextlib.suppress(Exception):
                    self.reporter.report(wait=True, notify=False)
                raise
            if not self.reporter.last_scored:  # every epoch was done before the kill: the final validation is missing
                scored = self.validator.start(self.average.model(self.model), self.live).result()
                self.reporter.last_scored.update(zip(self.live, scored))
        images = self.cfg.epochs * len(self.step.images) * len(self.live)
        return FitResult(self.average.model(self.model), self.pack, self.reporter.history[-1], self.reporter.history,
                         self.replica_results(), images / max(self.train_seconds, 1e-9),
                         {**self.timings, **self.step.timings}, self.step.graph_error)

    def train_epoch(self, epoch: int) -> None:
        """Train one epoch, start its validation if it has one, and queue it for reporting."""
        self.step.set_lr(epoch_lr(self.cfg, epoch))
        self.view.new_epoch()
        started = time.perf_counter()
        metrics = _train_epoch(self.step, len(self.step.images), self.cfg, self.generators, self.view)
        _check_divergence(self.step, self.pack, epoch, self.diverged, self.stop,
                          [m["train/loss"] for m in metrics], self.first_losses)
        seconds = time.perf_counter() - started  # bad_steps() waited for the device: the time is real
        self.train_seconds += seconds
        self.timings["train_s"] += seconds
        self.add_balance(metrics)
        for k in self.live:
            self.last_metrics[k] = metrics[k]
        trained = TrainedEpoch(epoch, metrics, self.live)
        if self.average.active(epoch):
            self.average.add(self.model)
        if epoch in validation_epochs(self.cfg, self.device.type):
            started = time.perf_counter()
            trained.scoring = self.validator.start(self.average.model(self.model), self.live)
            self.timings["validate_s"] += time.perf_counter() - started
            if self.state_dir is not None:
                trained.state = epoch_state(self.model, self.all_generators, self.device, self.pack, self.train_seconds,
                                            self.diverged, self.average.state(self.pack.k))
        self.reporter.add(trained)
        self.reporter.report(wait=False)

    def add_balance(self, metrics: list[dict[str, float]]) -> None:
        """Each live replica's class-to-box balance this epoch: of its weighted loss terms, and of their gradients on
        the shared layers (one probe batch: the first batch_size training images)."""
        images, targets = self.step.images[:self.cfg.batch_size], self.step.targets[:self.cfg.batch_size]
        for k in self.live:
            cfg = self.pack.replicas[k]
            metrics[k]["train/cls_box_ratio"] = loss_ratio(metrics[k]["train/loss_cls"], metrics[k]["train/loss_box"], cfg)
            metrics[k]["train/grad_ratio_cls_box"] = replica_gradient_ratio(self.model, k, images, targets, cfg)

    def replica_results(self) -> list[ReplicaResult]:
        results = []
        for k, cfg in enumerate(self.pack.replicas):
            scored = self.reporter.last_scored.get(k)
            metrics = {} if k in self.diverged else {**self.last_metrics[k], **(scored.metrics if scored else {})}
            results.append(ReplicaResult(cfg, metrics, scored.coco if scored else None,
                                         scored.detections if scored else None, self.diverged.get(k)))
        return results
