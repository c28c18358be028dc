"""One trial of a sweep: its configuration, its seed pack, its tracked run, what its pruner sees, and its value."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import optuna

import experiments
from pipeline.config import RunConfig
from pipeline.data import load_split
from pipeline.interrupts import deferred
from pipeline.machine import resolve_device
from pipeline.model.pack import Pack, check_fits
from pipeline.study.faults import deadline
from pipeline.study.optuna_study import SweepOptions, base_config, study_name_for, worker_stamp
from pipeline.tracking import MlflowTracker
from pipeline.training.run import failure_reason, load_data, tracked_run
from pipeline.training.seeds import seed_values
from pipeline.training.train import Pruned


@dataclass
class _TrialContext:
    """What a worker needs to run trials: rebuilt in each worker process from the options."""
    options: SweepOptions
    variant: experiments.Variant
    base: RunConfig
    tracker: MlflowTracker
    parent_run_id: str
    study_name: str
    data_cache: dict = field(default_factory=dict)

    def data(self, cfg: RunConfig):
        key = (cfg.dataset, cfg.image_size, cfg.train_images, cfg.val_images)
        if key not in self.data_cache:  # the input-size variant needs the data at several sizes
            self.data_cache[key] = load_data(cfg, progress=False, skip_invalid=self.options.skip_invalid)
        return self.data_cache[key]

    def split(self, cfg: RunConfig, split: str):
        """The val split as cfg uses it, or the whole test split (a verdict's)."""
        if split == "val":
            return self.data(cfg)[1]
        key = (cfg.dataset, cfg.image_size, split)
        if key not in self.data_cache:
            self.data_cache[key] = load_split(cfg.dataset, split, cfg.image_size, progress=False,
                                              skip_invalid=self.options.skip_invalid)
        return self.data_cache[key]


def trial_config(trial, ctx: _TrialContext) -> RunConfig:
    """The control runs the base config untouched; every other trial applies the variant's space."""
    if trial.user_attrs.get("control"):
        return ctx.base
    return dataclasses.replace(ctx.base, **ctx.variant.space(trial, ctx.base))


def pruner(base: RunConfig) -> optuna.pruners.BasePruner:
    """The median rule, from the 6th trial and only in the second half of a trial's epochs: the first
    epochs of a slow starter (smaller anchors, a bigger input) say little about where it ends."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=base.epochs // 2)


def _pruning_callback(trial, objective: str, prune: bool):
    def on_epoch(epoch, metrics, run):
        if objective not in metrics:  # an epoch without validation (see RunConfig.val_every)
            return
        value = metrics[objective]
        if not math.isfinite(value):
            raise FloatingPointError(f"{objective} is {value} after epoch {epoch}")
        with deferred():  # a store write during training, not to be cut in half (see pipeline/interrupts.py)
            trial.report(value, epoch)
        if prune and trial.should_prune():
            raise Pruned(epoch)
    return on_epoch


def _state_dir(trial: optuna.Trial, ctx: _TrialContext) -> Path:
    """Epoch states live under the first attempt's number, which a retried trial inherits in its user attrs."""
    if "root_trial" not in trial.user_attrs:
        trial.set_user_attr("root_trial", trial.number)
    return Path(ctx.options.out_dir) / "state" / ctx.study_name / f"trial-{trial.user_attrs['root_trial']}"


def objective(trial: optuna.Trial, ctx: _TrialContext) -> float:
    if "worker" not in trial.user_attrs or trial.user_attrs["worker"]["started"] != str(trial.datetime_start):
        trial.set_user_attr("worker", worker_stamp(trial.datetime_start))  # a storage that does not stamp (in memory)
    try:
        with deadline(ctx.options.trial_timeout):
            return _train_trial(trial, ctx)
    except optuna.TrialPruned:
        raise
    except BaseException as exc:  # the reason goes on the trial: Optuna itself keeps only the state FAIL
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker failed it as stale
            trial.set_user_attr("fail_reason", failure_reason(exc)[:2000])
        raise


def trial_pack(cfg: RunConfig, options: SweepOptions) -> Pack:
    """A trial's seeds: cfg.seed and the next ones, the same for every trial (paired: the control and each
    setting share their seeds, so that shared luck cancels in their difference)."""
    return Pack.of_seeds(cfg, options.seeds_per_trial)


def _train_trial(trial: optuna.Trial, ctx: _TrialContext) -> float:
    cfg = trial_config(trial, ctx)
    pack = trial_pack(cfg, ctx.options)
    state_dir = _state_dir(trial, ctx)
    tags = {"study": ctx.study_name, "trial_number": trial.number, "variant": ctx.variant.name,
            "control": bool(trial.user_attrs.get("control")), "trial_state": "RUNNING"}
    if pack.k > 1:
        tags["seeds"] = ",".join(map(str, pack.seeds))
    data = ctx.data(cfg)
    check_fits(cfg, pack.k, len(data[0].class_names), resolve_device(cfg.device))  # a trial's own input size
    try:
        result = tracked_run(pack, ctx.tracker, name=f"trial-{trial.number}", out_dir=ctx.options.out_dir,
                             parent_run_id=ctx.parent_run_id, tags=tags, progress=False, data=data,
                             on_epoch=_pruning_callback(trial, ctx.variant.objective,
                                                        ctx.options.prune and ctx.variant.prune),
                             on_start=lambda run: trial.set_user_attr("mlflow_run_id", run.run_id),
                             state_dir=state_dir)
    except Pruned:
        raise optuna.TrialPruned() from None
    finally:  # only a killed process's trial is retried from its epoch states; this one ended here, in any state
        shutil.rmtree(state_dir, ignore_errors=True)
    value = result.metrics[ctx.variant.objective]
    if not math.isfinite(value):  # Optuna would keep an inf as the best value
        raise FloatingPointError(f"final {ctx.variant.objective} is {value}")
    trial.set_user_attr("metrics", {k: (None if math.isnan(v) else v) for k, v in result.metrics.items()
                                    if "/seed_" not in k})
    if pack.k > 1:
        trial.set_user_attr("seed_values", {str(seed): v for seed, v in
                                            seed_values(result.metrics, ctx.variant.objective).items()})
    return value


def trial_context(options: SweepOptions, parent_run_id: str) -> _TrialContext:
    variant = experiments.load(options.variant)
    name = study_name_for(options)
    return _TrialContext(options, variant, base_config(variant, options), MlflowTracker(name), parent_run_id, name)
