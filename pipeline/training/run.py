"""One tracked run: load data, fit, then log the final metrics, checkpoint and a picture of predictions.

The ``train`` command and every sweep trial go through :func:`tracked_run`, so a trial
is exactly a ``train`` with some overrides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from pipeline.config import RunConfig, active_params
from pipeline.data import DataError, DetectionData, load_split
from pipeline.evaluation.evaluate import Detections
from pipeline.evaluation.visualize import draw_detections, save_grid
from pipeline.metric_names import headline
from pipeline.model.checkpoint import save_checkpoint
from pipeline.model.pack import Pack, replica_model
from pipeline.tracking import RunHandle
from pipeline.training.balance import BALANCE_KEYS, training_means
from pipeline.training.run_table import TABLE_FILE, table_columns
from pipeline.training.train import EpochCallback, FitResult, Pruned, fit

PREVIEW_IMAGES = 8
PREVIEW_MIN_SCORE = 0.3  # below this a drawn box is clutter, not a prediction a reader cares about


@dataclass
class RunResult:
    run_id: str
    metrics: dict[str, float]  # a pack's combined over its seeds (pipeline.training.seeds)
    train_images_per_s: float
    checkpoints: list[Path]  # one per replica that did not diverge
    fit: FitResult
    seconds: float  # wall time of the tracked run: training, validation, logging

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints[0]


def load_data(cfg: RunConfig, progress: bool = True, skip_invalid: bool = False) -> tuple[DetectionData, DetectionData]:
    """The train and val splits of cfg.dataset at cfg.image_size, cut to cfg.train_images / cfg.val_images,
    checked to make a well-defined COCO evaluation (DataError otherwise)."""
    train = load_split(cfg.dataset, "train", cfg.image_size, progress=progress, skip_invalid=skip_invalid)
    val = load_split(cfg.dataset, "val", cfg.image_size, progress=progress, skip_invalid=skip_invalid)
    train, val = train.subset(cfg.train_images), val.subset(cfg.val_images)
    preflight(cfg.dataset, train, val)
    return train, val


def preflight(dataset: str, train: DetectionData, val: DetectionData) -> None:
    """Refuse data that would train on nothing or make pycocotools answer -1, before any training."""
    if train.class_names != val.class_names:
        raise DataError(f"{dataset}: train classes {train.class_names} differ from val classes {val.class_names}")
    for split, data in (("train", train), ("val", val)):
        present = set((data.targets[..., 0][data.targets[..., 0] >= 0]).long().tolist())
        if not present:
            raise DataError(f"{dataset}: the {split} split has no annotations")
        missing = [data.class_names[k] for k in range(len(data.class_names)) if k not in present]
        if split == "val" and missing:
            raise DataError(f"{dataset}: the val split has no annotations of {', '.join(missing)}: "
                            "COCO would leave those classes out of mAP")


def prediction_grid(val: DetectionData, detections: list[Detections], path: Path) -> Path:
    """The first validation images with their confident predicted boxes drawn."""
    tiles = []
    for image, det in list(zip(val.images, detections))[:PREVIEW_IMAGES]:
        keep = det.scores >= PREVIEW_MIN_SCORE
        side = image.shape[-1]
        boxes = det.boxes_xyxy[keep].cpu() * side
        labels = [val.class_names[i] for i in det.labels[keep].tolist()]
        tiles.append(draw_detections(image, boxes, labels, scores=det.scores[keep].cpu()))
    return save_grid(tiles, path)


def write_pr_curve(precision_iou50, class_names: list[str], path: Path) -> Path:
    """COCOeval's precision at IoU 0.5 over its 101 recall points, one list per class (null = undefined)."""
    curves = {name: [None if math.isnan(p) else float(p) for p in precision_iou50[:, k]]
              for k, name in enumerate(class_names)}
    path.write_text(json.dumps({"recall": [i / 100 for i in range(101)], "precision": curves}))
    return path


def failure_reason(exc: BaseException) -> str:
    """What ended a run or a trial, in words: an interrupt says which one, anything else 'Type: message'."""
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted by {exc.args[0] if exc.args and exc.args[0] else 'Ctrl-C (SIGINT)'}"
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _outcome_tagged(run: RunHandle):
    """Write on the run how its body ended: a pruned run FINISHED, anything else that raised FAILED."""
    try:
        yield
    except Pruned as exc:
        run.set_tags({"trial_state": "PRUNED", "pruned": "true", "end_reason": str(exc)})
        run.outcome = "FINISHED"
        raise
    except BaseException as exc:
        run.set_tags({"trial_state": "FAIL", "end_reason": failure_reason(exc)[:5000]})
        raise


def run_params(setting: RunConfig | Pack) -> dict:
    """The run's MLflow params: the config's active fields (pipeline.config.active_params; a pack's shared ones,
    seed = its first seed) and, for a pack, its ``seeds``."""
    pack = setting if isinstance(setting, Pack) else Pack((setting,))
    params = active_params(pack.shared)
    return params if pack.k == 1 else {**params, "seeds": ",".join(map(str, pack.seeds))}


def tracked_run(setting: RunConfig | Pack, tracker, *, name: str, out_dir: Path, parent_run_id: str | None = None,
                tags: dict | None = None, on_epoch: EpochCallback | None = None, progress: bool = True,
                data: tuple[DetectionData, DetectionData] | None = None,
                on_start: Callable[[RunHandle], None] | None = None, state_dir: Path | None = None,
                stop_on_divergence: bool = True, score_split: str = "val") -> RunResult:
    """Train a config, or a pack of seeds of one config, inside one tracked run and log everything a reader
    needs to trust it.

    The run's ``final/trial_seconds`` is its wall time: training, validation and all the logging;
    ``timing/*`` says where that time went."""
    pack = setting if isinstance(setting, Pack) else Pack((setting,))
    train, val = data if data is not None else load_data(pack.shared, progress)
    started = time.perf_counter()
    with tracker.run(name, params=run_params(pack), tags=tags, parent_run_id=parent_run_id) as run:
        if on_start is not None:
            on_start(run)
        with _outcome_tagged(run):  # the checkpoint and artifacts too: a failure there is the run's failure
            result = fit(pack, train, val, run=run, on_epoch=on_epoch, progress=progress, state_dir=state_dir,
                         stop_on_divergence=stop_on_divergence, score_split=score_split)
            return _log_results(result, train, val, run, out_dir, started)


def _checkpoints(result: FitResult, class_names: list[str], folder: Path) -> list[Path]:
    """checkpoint.pt for a single run; checkpoint-seed{S}.pt per live replica of a pack: plain TinySSD checkpoints
    that `evaluate` and `predict` read."""
    if result.pack.k == 1:
        return [save_checkpoint(folder / "checkpoint.pt", result.model, result.pack.shared, class_names,
                                _threshold(result.replicas[0].metrics))]
    return [save_checkpoint(folder / f"checkpoint-seed{r.seed}.pt", replica_model(result.model, k), r.config,
                            class_names, _threshold(r.metrics))
            for k, r in enumerate(result.replicas) if r.diverged is None]


def _threshold(metrics: dict[str, float]) -> float | None:
    """The display threshold a run chose on its validation split (F1's peak), if it is a number."""
    value = metrics.get("val/f1_threshold")  # chosen on validation: a verdict's test-split runs choose none
    return None if value is None or math.isnan(value) else float(value)


def _divergence_tags(result: FitResult) -> dict[str, str]:
    """Which seeds of a pack diverged, and where: they are left out of its mean and interval."""
    diverged = [r for r in result.replicas if r.diverged is not None]
    if not diverged:
        return {}
    return {"diverged_seeds": ",".join(str(r.seed) for r in diverged),
            "diverged_at": "; ".join(f"seed {r.seed}: epoch {r.diverged[0]}, step {r.diverged[1]}" for r in diverged)}


def _log_results(result: FitResult, train: DetectionData, val: DetectionData, run: RunHandle, out_dir: Path,
                 started: float) -> RunResult:
    cfg = result.pack.shared
    logging_started = time.perf_counter()
    final = {**result.metrics, "train_images_per_s": result.train_images_per_s,
             **training_means(result.history, BALANCE_KEYS)}
    run.log_metrics(headline({f"final/{k}": v for k, v in final.items()}), step=cfg.epochs)
    run.log_table(table_columns([(None, final)]), TABLE_FILE)  # after the epochs' rows (EpochReporter)
    out_dir = Path(out_dir) / run.run_id
    checkpoints = _checkpoints(result, train.class_names, out_dir)
    prediction_grid(val, result.detections, out_dir / "val_predictions.png")
    (out_dir / "metrics.json").write_text(json.dumps(final, indent=2, default=float))
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))  # idle knobs too
    write_pr_curve(result.coco.precision_iou50, train.class_names, out_dir / "pr_curve_iou50.json")
    run.log_artifact(out_dir)
    seconds = time.perf_counter() - started
    result.timings["artifacts_s"] = time.perf_counter() - logging_started
    run.log_metrics({"final/trial_seconds": seconds, **{f"timing/{k}": v for k, v in result.timings.items()}},
                    step=cfg.epochs)
    run.set_tags({"trial_state": "COMPLETE", **_divergence_tags(result),
                  **({"cuda_graph_fallback": result.graph_error[:500]} if result.graph_error else {})})
    return RunResult(run.run_id, result.metrics, result.train_images_per_s, checkpoints, result, seconds)
