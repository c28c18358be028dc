"""Training: fit(cfg, data) trains TinySSD and validates it with COCO mAP as it goes.

``fit`` knows nothing of MLflow or Optuna: it takes a run handle to log to and an
``on_epoch`` callback, which is where a sweep reports to its pruner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ctypes
import ctypes.util
import math
import time
import warnings
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.checkpoint import load_latest_epoch_state, save_epoch_state
from pipeline.config import RunConfig, validation_epochs
from pipeline.data import DetectionData
from pipeline.evaluate import CocoResult, Detections
from pipeline.model import TinySSD
from pipeline.step import TrainStep, cudnn_benchmark
from pipeline.tracking import RunHandle
from pipeline.validation import Scored, Validator

EpochCallback = Callable[[int, dict[str, float], "RunHandle | None"], None]


class Pruned(Exception):
    """Raised by an on_epoch callback to stop a run that is not worth finishing."""

    def __init__(self, epoch: int):
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


@dataclass
class FitResult:
    model: TinySSD
    metrics: dict[str, float]  # the last epoch's train/* and val/* metrics
    history: list[dict[str, float]]  # one dict per epoch
    coco: CocoResult  # the last validation
    detections: list[Detections]  # the last validation's detections
    train_images_per_s: float  # training steps only, validation excluded
    timings: dict[str, float]  # seconds the training loop spent on: setup, train (graph warm-up and capture
                               # included, and broken out), validate (predicting, and waiting for a score),
                               # epoch_state; and scoring: pycocotools' seconds in the worker thread


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def held_on(data: DetectionData, device: torch.device) -> DetectionData:
    """On a GPU the whole split lives there once (1000 x 3 x 256 x 256 uint8 is 200 MB): no copy per batch."""
    if device.type != "cuda":
        return data
    return dataclasses.replace(data, images=data.images.to(device), targets=data.targets.to(device))


def _train_epoch(step: TrainStep, n_images: int, cfg: RunConfig, generator, epoch: int, progress, task):
    step.start_epoch()
    order = torch.randperm(n_images, generator=generator).to(step.images.device)
    for start in range(0, n_images, cfg.batch_size):
        step.run(order[start:start + cfg.batch_size])
        if progress is not None:
            progress.advance(task)
    return step.summary(epoch)


def _progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), transient=False)


def _resumable(state: dict | None, cfg: RunConfig, state_dir: Path | None) -> dict | None:
    """The epoch state if it was saved by this very configuration; another one's (a study of the same name
    created again, say) is ignored with a warning, never trained on."""
    if state is None:
        return None
    def settings(config: dict) -> dict:  # the device may change between attempts; a knob added since is at its default
        return {k: v for k, v in {**dataclasses.asdict(RunConfig()), **config}.items() if k != "device"}

    saved = state.get("config")  # None: a state from before configs were saved, which cannot be checked
    if saved is None or settings(saved) != settings(dataclasses.asdict(cfg)):
        warnings.warn(f"{state_dir}: the epoch state there was saved by another configuration; training from "
                      "scratch instead", stacklevel=3)
        return None
    return state


def _resume(state: dict | None, model, generator, device: torch.device, run: RunHandle | None):
    """Restore an epoch state, re-log its history on the new run; returns (first epoch, history, seconds).

    SGD without momentum keeps no state of its own: the weights and the random generators (the CPU one
    for the batch order; on CUDA, the device's for flips and negatives) are all."""
    if state is None:
        return 0, [], 0.0
    model.load_state_dict(state["model"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    if run is not None:
        for epoch, metrics in enumerate(state["history"]):
            run.log_metrics(metrics, step=epoch)
        run.set_tags({"resumed_from_epoch": state["epoch"]})
    return state["epoch"] + 1, list(state["history"]), state["train_seconds"]


def _epoch_state(model, generator, device: torch.device, cfg: RunConfig, train_seconds: float) -> dict:
    """What resuming after this epoch needs (see _resume), the weights copied as they are now."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "generator": generator.get_state(), "train_seconds": train_seconds,
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "config": dataclasses.asdict(cfg)}


@dataclass
class _TrainedEpoch:
    """An epoch whose training is done. It is reported (history, epoch state, MLflow, on_epoch) once its
    validation, if it has one, is scored; epochs are reported in order."""
    epoch: int
    metrics: dict[str, float]
    scoring: Future | None = None
    state: dict | None = None  # the epoch state to save: the weights as they were after this epoch


def fit(cfg: RunConfig, train: DetectionData, val: DetectionData, run: RunHandle | None = None,
        on_epoch: EpochCallback | None = None, progress: bool = True, state_dir: Path | None = None) -> FitResult:
    """Train TinySSD with cfg; validate with COCO mAP (see RunConfig.val_every); log each epoch to ``run``.

    Each validation's COCO scoring runs in a worker thread while the next epoch trains, so an epoch
    with validation is reported (to ``run``, ``on_epoch`` and the progress bar) when its score is in:
    usually after the next epoch, later where epochs are shorter than a score (a GPU), always in
    order. If training fails, the epochs trained and scored before it are still reported to ``run``. With ``state_dir``, the state after every validated
    epoch is saved there, and training resumes from the newest good one: a retried trial goes on
    where the killed one stopped.
    """
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = TinySSD(len(train.class_names), cfg.anchor_scale).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train, val = held_on(train, device), held_on(val, device)
    state = _resumable(load_latest_epoch_state(state_dir), cfg, state_dir)
    start, history, train_seconds = _resume(state, model, generator, device, run)
    step = TrainStep(model, train.images, train.targets, cfg, device, generator)
    validate_after = validation_epochs(cfg, device.type)
    last: Scored | None = None
    pending: deque[_TrainedEpoch] = deque()
    timings = {"setup_s": 0.0, "train_s": 0.0, "validate_s": 0.0, "scoring_s": 0.0, "epoch_state_s": 0.0}
    bar = _progress(progress)

    def report(wait: bool, notify: bool = True) -> None:
        """Report the finished epochs at the front of the queue: all of them with ``wait``; ``on_epoch`` too
        with ``notify``."""
        nonlocal last
        while pending and (wait or pending[0].scoring is None or pending[0].scoring.done()):
            done = pending.popleft()
            if done.scoring is not None:
                waited = time.perf_counter()
                last = done.scoring.result()  # re-raises what scoring raised
                timings["validate_s"] += time.perf_counter() - waited
                timings["scoring_s"] += last.seconds
                done.metrics.update(last.metrics)
            history.append(done.metrics)
            if done.state is not None:
                saving = time.perf_counter()
                save_epoch_state(state_dir, done.epoch, {**done.state, "history": history})
                timings["epoch_state_s"] += time.perf_counter() - saving
            if run is not None:
                run.log_metrics(done.metrics, step=done.epoch)
            if bar:
                val_text = f"  val mAP {done.metrics['val/map']:.3f}" if "val/map" in done.metrics else ""
                bar.update(epochs, completed=done.epoch + 1, status=f"loss {done.metrics['train/loss']:.4f}{val_text}")
            if notify and on_epoch is not None:
                on_epoch(done.epoch, done.metrics, run)

    validator = Validator(val, cfg, device)
    timings["setup_s"] = time.perf_counter() - started
    with bar or contextlib.nullcontext(), validator, cudnn_benchmark(cfg.cudnn_benchmark and device.type == "cuda"):
        epochs = bar.add_task("epochs", total=cfg.epochs, status="") if bar else None
        batches = bar.add_task("batches", total=-(-len(train) // cfg.batch_size), status="") if bar else None
        if bar:
            bar.update(epochs, completed=start)
        try:
            for epoch in range(start, cfg.epochs):
                step.set_lr(epoch_lr(cfg, epoch))
                if bar:
                    bar.reset(batches)
                started = time.perf_counter()
                metrics = _train_epoch(step, len(train), cfg, generator, epoch, bar, batches)
                epoch_seconds = time.perf_counter() - started  # summary() waited for the device: the time is real
                train_seconds += epoch_seconds
                timings["train_s"] += epoch_seconds
                trained = _TrainedEpoch(epoch, metrics)
                if epoch in validate_after:
                    started = time.perf_counter()
                    trained.scoring = validator.start(model)
                    timings["validate_s"] += time.perf_counter() - started
                    if state_dir is not None:
                        trained.state = _epoch_state(model, generator, device, cfg, train_seconds)
                pending.append(trained)
                report(wait=False)
            report(wait=True)
        except Pruned:
            raise
        except BaseException:  # a NaN, a timeout, Ctrl-C: what was trained and scored before it still reaches the run
            with contextlib.suppress(Exception):
                report(wait=True, notify=False)
            raise
        if last is None:  # every epoch was done before the kill: only the final validation is missing
            last = validator.start(model).result()
    speed = cfg.epochs * len(train) / max(train_seconds, 1e-9)
    return FitResult(model, history[-1], history, last.coco, last.detections, speed, {**timings, **step.timings})
