"""What happens to an epoch after its training: reporting it once its validation is scored, and the epoch
states that let a killed run resume (every replica of a pack in one state)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.config import RunConfig
from pipeline.metric_names import headline
from pipeline.model.checkpoint import save_epoch_state
from pipeline.model.pack import Pack
from pipeline.tracking import RunHandle
from pipeline.training.run_table import TABLE_FILE, table_columns
from pipeline.training.seeds import combine
from pipeline.training.validation import Scored

EpochCallback = Callable[[int, dict[str, float], "RunHandle | None"], None]


@dataclass
class TrainedEpoch:
    """An epoch whose training is done. It is reported once its validation, if it has one, is scored."""
    epoch: int
    replica_metrics: list[dict[str, float]]  # train/* of every replica
    live: list[int]  # the replicas that had not diverged: only these are validated and reported
    scoring: Future | None = None  # of one Scored per live replica
    state: dict | None = None  # the epoch state to save: the weights as they were after this epoch

    def ready(self) -> bool:
        return self.scoring is None or self.scoring.done()


class ProgressView:
    """A rich progress bar over epochs and the current epoch's batches, or nothing (``enabled`` False)."""

    def __init__(self, enabled: bool, epochs: int, batches: int, first_epoch: int):
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), transient=False) if enabled else None
        self.sizes, self.first_epoch = (epochs, batches), first_epoch

    def __enter__(self) -> "ProgressView":
        if self.bar:
            self.bar.__enter__()
            self.epochs = self.bar.add_task("epochs", total=self.sizes[0], status="", completed=self.first_epoch)
            self.batches = self.bar.add_task("batches", total=self.sizes[1], status="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def new_epoch(self) -> None:
        if self.bar:
            self.bar.reset(self.batches)

    def batch_done(self) -> None:
        if self.bar:
            self.bar.advance(self.batches)

    def epoch_reported(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.bar:
            val_text = f"  val mAP {metrics['val/map']:.3f}" if "val/map" in metrics else ""
            self.bar.update(self.epochs, completed=epoch + 1, status=f"loss {metrics['train/loss']:.4f}{val_text}")


@dataclass
class EpochReporter:
    """Reports trained epochs in order, each once its score is in: to the history, the epoch state, the run,
    the progress bar and ``on_epoch``. Every replica's metrics are combined (pipeline.training.seeds.combine) into
    what is reported: a single run's own, a pack's mean, 95% interval and per-seed values."""
    pack: Pack
    history: list[dict[str, float]]
    timings: dict[str, float]
    run: RunHandle | None = None
    on_epoch: EpochCallback | None = None
    view: ProgressView | None = None
    state_dir: Path | None = None
    pending: deque = field(default_factory=deque)
    last_scored: dict[int, Scored] = field(default_factory=dict)  # replica -> its newest validation

    def add(self, trained: TrainedEpoch) -> None:
        self.pending.append(trained)

    def report(self, wait: bool, notify: bool = True) -> None:
        """Report the finished epochs at the front of the queue: all of them with ``wait``; ``on_epoch`` too
        with ``notify``."""
        while self.pending and (wait or self.pending[0].ready()):
            self._report(self.pending.popleft(), notify)

    def _report(self, done: TrainedEpoch, notify: bool) -> None:
        per_replica = [dict(m) for m in done.replica_metrics]
        if done.scoring is not None:
            waited = time.perf_counter()
            scored = done.scoring.result()  # re-raises what scoring raised
            self.timings["validate_s"] += time.perf_counter() - waited
            for k, result in zip(done.live, scored):
                self.timings["scoring_s"] += result.seconds
                per_replica[k].update(result.metrics)
                self.last_scored[k] = result
        metrics = combine({self.pack.seeds[k]: per_replica[k] for k in done.live}, self.pack.k)
        self.history.append(metrics)
        if done.state is not None:
            saving = time.perf_counter()
            save_epoch_state(self.state_dir, done.epoch, {**done.state, "history": self.history})
            self.timings["epoch_state_s"] += time.perf_counter() - saving
        if self.run is not None:
            self.run.log_metrics(headline(metrics), step=done.epoch)
            self.run.log_table(table_columns([(done.epoch, metrics)]), TABLE_FILE)  # every value, seeds included
        if self.view is not None:
            self.view.epoch_reported(done.epoch, metrics)
        if notify and self.on_epoch is not None:
            self.on_epoch(done.epoch, metrics, self.run)


# --- epoch states ------------------------------------------------------------------------------------------

def epoch_state(model, generators: list[torch.Generator], device: torch.device, pack: Pack, train_seconds: float,
                diverged: dict[int, tuple[int, int]], average: dict | None = None) -> dict:
    """What resuming after this epoch needs (see resume), every replica's weights copied as they are now, and
    the running average of the last epochs' weights where there is one (pipeline.model.averaging)."""
    return {"replicas": [model.replica_state_dict(k) for k in range(pack.k)], "average": average,
            "generators": [g.get_state() for g in generators], "train_seconds": train_seconds,
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "configs": [dataclasses.asdict(cfg) for cfg in pack.replicas], "diverged": dict(diverged)}


def _settings(config: dict) -> dict:
    """A saved config as it compares: the device may change between attempts; a knob added since is at its
    default."""
    return {k: v for k, v in {**dataclasses.asdict(RunConfig()), **config}.items() if k != "device"}


def resumable(state: dict | None, pack: Pack, state_dir: Path | None) -> dict | None:
    """The epoch state if it was saved by this very pack; another one's (a study of the same name created
    again, or a state from before packs) is ignored with a warning, never trained on."""
    if state is None:
        return None
    saved = state.get("configs")
    current = [dataclasses.asdict(cfg) for cfg in pack.replicas]
    if saved is None or [_settings(c) for c in saved] != [_settings(c) for c in current]:
        warnings.warn(f"{state_dir}: the epoch state there was saved by another configuration; training from "
                      "scratch instead", stacklevel=3)
        return None
    return state


def resume(state: dict | None, model, generators: list[torch.Generator], device: torch.device,
           run: RunHandle | None):
    """Restore an epoch state, re-log its history on the new run; returns (first epoch, history, seconds,
    diverged replicas). SGD without momentum keeps no state of its own: the weights and the random generators
    (the CPU ones for the batch orders; on CUDA, the device's for flips and negatives) are all."""
    if state is None:
        return 0, [], 0.0, {}
    model.load_replica_state_dicts(state["replicas"])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    if run is not None:
        for epoch, metrics in enumerate(state["history"]):
            run.log_metrics(headline(metrics), step=epoch)
        if state["history"]:
            run.log_table(table_columns(list(enumerate(state["history"]))), TABLE_FILE)
        run.set_tags({"resumed_from_epoch": state["epoch"]})
    return state["epoch"] + 1, list(state["history"]), state["train_seconds"], dict(state.get("diverged", {}))
