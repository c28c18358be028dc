"""Optuna studies over the chapter's exercises, each trial a nested MLflow run.

Storage is Optuna's own: ``sqlite:///optuna.db`` by default, any RDB URL (PostgreSQL)
to share a study between machines. The study, its control (trial 0, the chapter's
configuration) and both databases are created once, in this process, before any
worker starts: several processes creating SQLite schemas at once crash.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

import experiments
from pipeline import best as best_rule
from pipeline.config import RunConfig, make_config
from pipeline.sqlite_files import DEFAULT_STORAGE
from pipeline.pack import Pack, PackError, check_fits
from pipeline.run import failure_reason, load_data, sigterm_as_interrupt, tracked_run
from pipeline.storage_lock import StorageLock
from pipeline.tracking import MlflowTracker, process_alive
from pipeline.seeds import seed_values
from pipeline.train import Pruned, resolve_device

_log = logging.getLogger(__name__)
# Heartbeats let a resumed sweep notice a worker that was killed mid-trial; the env vars exist for tests.
HEARTBEAT_INTERVAL = int(os.environ.get("TINYSSD_HEARTBEAT_INTERVAL", "10"))
HEARTBEAT_GRACE = int(os.environ.get("TINYSSD_HEARTBEAT_GRACE", "60"))
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class _InterruptWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; for Ctrl-C or SIGTERM its one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_InterruptWithoutTraceback())  # where Optuna logs it


class SweepError(ValueError):
    """A sweep that must not start: the message says why and what to do."""


@dataclass(frozen=True)
class SweepOptions:
    variant: str
    trials: int | None = None  # None: the study's default for the profile
    profile: str = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)  # --epochs, --dataset, --set ...
    storage: str = DEFAULT_STORAGE
    study_name: str | None = None
    workers: int = 1
    seed: int = 0  # the sampler's seed
    timeout: float | None = None
    prune: bool = True
    seeds: int = 0  # confirmation seeds for the best trial and the control
    seeds_per_trial: int = 1  # each trial trains this many seeds as one pack; its value is their mean
    out_dir: Path = Path("outputs")
    trial_timeout: float | None = None  # seconds; a longer trial fails with reason "timeout"
    skip_invalid: bool = False  # skip and count bad data records instead of refusing the data set


class SpaceRecorder:
    """A stand-in trial that records the suggest_* calls of a space: the study's search space, described.

    A categorical returns the choice that ``plan`` names for it (by index; the first otherwise), so
    that :func:`describe_space` can walk the branches of a conditional space."""

    def __init__(self, plan: dict[str, int] | None = None):
        self.plan = plan or {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.categoricals: list[tuple[str, int]] = []  # (name, number of choices), in the order met

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.calls[name] = {"type": "float", "low": low, "high": high, "log": log, "step": step}
        return low

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.calls[name] = {"type": "int", "low": low, "high": high, "log": log, "step": step}
        return low

    def suggest_categorical(self, name, choices):
        self.calls[name] = {"type": "categorical", "choices": list(choices)}
        self.categoricals.append((name, len(choices)))
        return choices[self.plan.get(name, 0)]


MAX_SPACE_BRANCHES = 10_000  # combinations of categorical choices walked; the largest study here has 60


def describe_space(study: experiments.Study, base: RunConfig) -> dict[str, dict[str, Any]]:
    """Every parameter the space can suggest, with its distribution: each combination of categorical
    choices is tried, so a parameter that only one branch suggests (focal_gamma when cls_loss is
    focal) is recorded too. A branch chosen by the value of a float or int is not walked."""
    calls: dict[str, dict[str, Any]] = {}
    pending, seen = [{}], set()
    while pending and len(seen) < MAX_SPACE_BRANCHES:
        plan = pending.pop()
        if frozenset(plan.items()) in seen:
            continue
        seen.add(frozenset(plan.items()))
        recorder = SpaceRecorder(plan)
        study.space(recorder, base)
        for name, spec in recorder.calls.items():
            calls.setdefault(name, spec)
        pending += [{**plan, name: i} for name, n in recorder.categoricals if name not in plan for i in range(1, n)]
    return dict(sorted(calls.items()))


def base_config(study: experiments.Study, options: SweepOptions) -> RunConfig:
    """The control's configuration: defaults, profile, the study's fixed overrides, then the user's flags."""
    return make_config(options.profile, {**study.fixed, **options.overrides})


def _engine_kwargs(url: str) -> dict:
    # SQLite serialises writers: wait for the lock instead of failing when workers write together
    return {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}


def open_storage(url: str, on_stale: Callable | None = None) -> optuna.storages.RDBStorage:
    """Optuna RDB storage with heartbeats, so a killed worker's trial is failed and retried."""
    return optuna.storages.RDBStorage(
        url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE,
        heartbeat_stale_trial_callback=on_stale or optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))


def study_name_for(options: SweepOptions) -> str:
    return options.study_name or f"{options.variant}-{options.profile}"


def _signature(study: experiments.Study, base: RunConfig, seeds_per_trial: int) -> dict[str, Any]:
    return {"space": describe_space(study, base), "base_config": dataclasses.asdict(base), "objective": study.objective,
            "seeds_per_trial": seeds_per_trial}


def _check_unchanged(stored: dict[str, Any], current: dict[str, Any], name: str) -> None:
    """Refuse to mix trials of two different experiments in one study."""
    diffs = []
    stored = {"seeds_per_trial": 1, **stored}  # a study from before packs trained one seed per trial
    current = {"seeds_per_trial": 1, **current}
    for part in ("space", "objective", "seeds_per_trial"):
        if json.dumps(stored.get(part), sort_keys=True) != json.dumps(current[part], sort_keys=True):
            diffs.append(f"{part}: stored {json.dumps(stored.get(part))} != now {json.dumps(current[part])}")
    old, new = stored.get("base_config", {}), current["base_config"]
    defaults = dataclasses.asdict(RunConfig())  # a knob added since the study was created, at its default, is no change
    diffs += [f"{k}: stored {old.get(k)!r} != now {new[k]!r}" for k in new
              if k != "device" and old.get(k, defaults.get(k)) != new[k]]
    if diffs:
        raise SweepError(f"study {name!r} was created with a different search space or configuration:\n  "
                         + "\n  ".join(diffs) + "\nUse --study-name to start a new study, or the original options.")


def load_spec(variant: str) -> experiments.Study:
    try:
        return experiments.load(variant)
    except KeyError as exc:
        raise SweepError(exc.args[0]) from None


def prepare(options: SweepOptions) -> tuple[optuna.Study, experiments.Study, RunConfig]:
    """Create or resume the study, refusing a changed space; enqueue the control in a new study."""
    spec = load_spec(options.variant)
    base = base_config(spec, options)
    name = study_name_for(options)
    storage = open_storage(options.storage)
    signature = _signature(spec, base, options.seeds_per_trial)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                sampler=spec.sampler(options.seed), load_if_exists=True)
    if "signature" in study.user_attrs:
        _check_unchanged(study.user_attrs["signature"], signature, name)
    else:
        study.set_user_attr("signature", signature)
        study.set_user_attr("variant", spec.name)
        study.set_user_attr("question", spec.question)
        study.set_user_attr("profile", options.profile)
    ensure_control(study)
    return study, spec, base


def ensure_control(study: optuna.Study) -> bool:
    """Queue the control (the chapter's configuration untouched) unless the study has one done, running or
    waiting: in a new study it is trial 0, and a control that failed (Ctrl-C, a timeout, a NaN) is queued
    again, so that every study keeps its baseline. A killed worker's control is retried by the heartbeat
    callback instead. Returns whether it queued one."""
    alive = (*DONE, TrialState.RUNNING, TrialState.WAITING)
    if any(t.user_attrs.get("control") for t in study.get_trials(deepcopy=False, states=alive)):
        return False
    study.enqueue_trial({}, user_attrs={"control": True})
    return True


@dataclass
class _TrialContext:
    """What a worker needs to run trials: rebuilt in each worker process from the options."""
    options: SweepOptions
    spec: experiments.Study
    base: RunConfig
    tracker: MlflowTracker
    parent_run_id: str
    study_name: str
    data_cache: dict = field(default_factory=dict)

    def data(self, cfg: RunConfig):
        key = (cfg.dataset, cfg.image_size, cfg.train_images, cfg.val_images)
        if key not in self.data_cache:  # the input-size study needs the data at several sizes
            self.data_cache[key] = load_data(cfg, progress=False, skip_invalid=self.options.skip_invalid)
        return self.data_cache[key]


def trial_config(trial, ctx: _TrialContext) -> RunConfig:
    """The control runs the base config untouched; every other trial applies the study's space."""
    if trial.user_attrs.get("control"):
        return ctx.base
    return dataclasses.replace(ctx.base, **ctx.spec.space(trial, ctx.base))


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
        trial.report(value, epoch)
        if prune and trial.should_prune():
            raise Pruned(epoch)
    return on_epoch


class TrialTimeout(TimeoutError):
    """The trial ran past --trial-timeout."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise TrialTimeout in this (main) thread after ``seconds``: a hung trial fails instead of blocking the sweep."""
    if not seconds:
        yield
        return

    def on_alarm(signum, frame):
        raise TrialTimeout(f"timeout: the trial ran past {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _state_dir(trial: optuna.Trial, ctx: _TrialContext) -> Path:
    """Epoch states live under the first attempt's number, which a retried trial inherits in its user attrs."""
    if "root_trial" not in trial.user_attrs:
        trial.set_user_attr("root_trial", trial.number)
    return Path(ctx.options.out_dir) / "state" / ctx.study_name / f"trial-{trial.user_attrs['root_trial']}"


def objective(trial: optuna.Trial, ctx: _TrialContext) -> float:
    # who runs this attempt (a retry copies its user attrs, so "started" tells this attempt's from the last one's)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "started": str(trial.datetime_start)})
    try:
        with deadline(ctx.options.trial_timeout):
            return _train_trial(trial, ctx)
    except optuna.TrialPruned:
        raise
    except BaseException as exc:  # the reason goes on the trial: Optuna itself keeps only the state FAIL
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
    tags = {"study": ctx.study_name, "trial_number": trial.number, "variant": ctx.spec.name,
            "control": bool(trial.user_attrs.get("control")), "trial_state": "RUNNING"}
    if pack.k > 1:
        tags["seeds"] = ",".join(map(str, pack.seeds))
    data = ctx.data(cfg)
    check_fits(cfg, pack.k, len(data[0].class_names), resolve_device(cfg.device))  # a trial's own input size
    try:
        result = tracked_run(pack, ctx.tracker, name=f"trial-{trial.number}", out_dir=ctx.options.out_dir,
                             parent_run_id=ctx.parent_run_id, tags=tags, progress=False, data=data,
                             on_epoch=_pruning_callback(trial, ctx.spec.objective,
                                                        ctx.options.prune and ctx.spec.prune),
                             on_start=lambda run: trial.set_user_attr("mlflow_run_id", run.run_id),
                             state_dir=state_dir)
    except Pruned:
        raise optuna.TrialPruned() from None
    finally:  # only a killed process's trial is retried from its epoch states; this one ended here, in any state
        shutil.rmtree(state_dir, ignore_errors=True)
    value = result.metrics[ctx.spec.objective]
    if not math.isfinite(value):  # Optuna would keep an inf as the best value
        raise FloatingPointError(f"final {ctx.spec.objective} is {value}")
    trial.set_user_attr("metrics", {k: (None if math.isnan(v) else v) for k, v in result.metrics.items()
                                    if "/seed_" not in k})
    if pack.k > 1:
        trial.set_user_attr("seed_values", {str(seed): v for seed, v in
                                            seed_values(result.metrics, ctx.spec.objective).items()})
    return value


def _context(options: SweepOptions, parent_run_id: str) -> _TrialContext:
    spec = experiments.load(options.variant)
    name = study_name_for(options)
    return _TrialContext(options, spec, base_config(spec, options), MlflowTracker(name), parent_run_id, name)


def _stale_callback(tracker: MlflowTracker, study_name: str):
    """Retry a killed worker's trial, and close its MLflow run as FAILED."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)

    def on_stale(study, trial):
        tracker.fail_stale_runs({"study": study_name, "trial_number": str(trial.number)},
                                "its worker stopped sending heartbeats: killed")
        retry(study, trial)
    return on_stale


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail, now, the RUNNING trials whose worker process on this host is gone (killed outright), and hand
    each to the storage's stale-trial callback (retry, close its MLflow run), as a missed heartbeat would
    after its grace period. Another host's trials are left to the heartbeat. Returns the trial numbers."""
    host, failed = socket.gethostname(), []
    storage = study._storage  # as optuna.storages.fail_stale_trials does
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if (worker.get("host") != host or worker.get("started") != str(trial.datetime_start)
                or process_alive(int(worker["pid"]))):
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another process failed it first
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
                if callback is not None:
                    callback(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
    return failed


class StudyFull(Exception):
    """Every trial slot of the study is done or taken: this worker stops."""


def claim_slots(study: optuna.Study, lock: StorageLock, target: int) -> None:
    """Make ``study.ask`` take a slot under the storage lock, so any number of workers, started
    at once or on several machines, create exactly ``target`` trials that are not failures.

    Study.ask is the one public hook that Study.optimize calls before creating a trial.
    """
    ask = study.ask

    def ask_for_a_slot(*args, **kwargs):
        with lock.hold():
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial frees its slot
            fail_dead_local_trials(study)  # at once when the worker was on this host
            taken = study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
            if len(taken) >= target:
                raise StudyFull()
            return ask(*args, **kwargs)
    study.ask = ask_for_a_slot


def worker_sampler(spec: experiments.Study, seed: int, index: int) -> optuna.samplers.BaseSampler:
    """Worker ``index``'s sampler. TPE workers get seeds of their own, so that two of them starting at
    once do not propose the same point. A GridSampler's seed shuffles the grid itself, so its grid_id
    means the same point in every worker only with one seed for all of them."""
    sampler = spec.sampler(seed + index)
    return spec.sampler(seed) if isinstance(sampler, optuna.samplers.GridSampler) else sampler


def run_worker(options: SweepOptions, parent_run_id: str, n_trials: int, index: int = 0,
               callbacks: list | None = None) -> None:
    """Run trials of the study in this process until its slots are taken (at most n_trials attempts)."""
    import torch

    if options.workers > 1:  # the cores are shared between the workers
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // options.workers))
    ctx = _context(options, parent_run_id)
    storage = open_storage(options.storage, _stale_callback(ctx.tracker, ctx.study_name))
    study = optuna.load_study(study_name=ctx.study_name, storage=storage, pruner=pruner(ctx.base),
                              sampler=worker_sampler(ctx.spec, options.seed, index))
    claim_slots(study, StorageLock(options.storage), options.trials or ctx.spec.trials[options.profile])
    with sigterm_as_interrupt(), contextlib.suppress(StudyFull):  # SIGTERM: the trial ends FAIL, its run KILLED
        study.optimize(lambda t: objective(t, ctx), n_trials=n_trials, timeout=options.timeout, catch=(Exception,),
                       callbacks=callbacks)


def _worker_process(*args) -> None:
    """A worker process: run_worker, ending quietly on an interrupt (its trial and run are closed by then)."""
    try:
        run_worker(*args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _spawn_workers(options: SweepOptions, parent_run_id: str, n_trials: int, on_poll: Callable) -> None:
    mp = multiprocessing.get_context("spawn")
    procs = [mp.Process(target=_worker_process, args=(options, parent_run_id, n_trials, i), daemon=False)
             for i in range(options.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            on_poll()
            time.sleep(1.0)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and not exc.args:  # Ctrl-C: the terminal interrupted the workers too
            deadline = time.time() + 15
            while any(p.is_alive() for p in procs) and time.time() < deadline:
                time.sleep(0.2)  # let them close their trials, rather than interrupt them again mid-cleanup
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: each worker fails its trial and closes its run
        for p in procs:
            p.join(30)
        raise
    on_poll()
    crashed = [p.exitcode for p in procs if p.exitcode and p.exitcode > 0]
    if crashed:
        raise RuntimeError(f"{len(crashed)} of {len(procs)} workers exited with an error (exit codes {crashed})")
    killed = [(i, -p.exitcode) for i, p in enumerate(procs) if p.exitcode and p.exitcode < 0]
    if killed:  # by a signal, from outside: their trials were failed and queued again; finish them here
        for i, signum in killed:
            _log.warning("worker %d was killed (%s); its trial is run again", i, signal.Signals(signum).name)
        run_worker(options, parent_run_id, n_trials, index=len(procs))


def best_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The study's best trial by the one rule of pipeline.best (never the control; ties to the lower number)."""
    number = best_rule.best_number(best_rule.from_trials(trials))
    return next((t for t in trials if t.number == number), None)


def study_objective(study: optuna.Study) -> str:
    """The metric the study maximises, as its signature recorded it."""
    return study.user_attrs.get("signature", {}).get("objective", "val/map")


def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {state.name: sum(t.state == state for t in trials) for state in TrialState}


def summary(study: optuna.Study, options: SweepOptions, tracker: MlflowTracker, parent_run_id: str) -> dict[str, Any]:
    """What --json prints: counts, the best trial (by pipeline.best's rule: never the control) and the control."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = best_trial(trials)
    control = next((t for t in complete if t.user_attrs.get("control")), None)
    n = counts(study)
    return {"study": study.study_name, "storage": options.storage, "n_complete": n["COMPLETE"],
            "n_pruned": n["PRUNED"], "n_failed": n["FAIL"], "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None, "best_trial": best.number if best else None,
            "control_value": control.value if control else None, "seeds_per_trial": options.seeds_per_trial,
            "best_ci95": (best.user_attrs.get("metrics") or {}).get(f"{study_objective(study)}_ci95") if best else None,
            "best_seed_values": best.user_attrs.get("seed_values") if best else None,
            "mlflow_experiment_id": tracker.experiment_id, "parent_run_id": parent_run_id}


def _device_description(device: str) -> str:
    """What the trials run on, for the report: 'cpu (8 cores)' or the GPU's name."""
    import torch

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return torch.cuda.get_device_name(resolved)
    return f"cpu ({os.cpu_count()} cores)"


def reconcile_runs(study: optuna.Study, tracker: MlflowTracker) -> list[str]:
    """Close MLflow runs that a killed process left RUNNING: trials that Optuna no longer runs, and any run
    whose process on this host is gone (another host's sweep may still be alive: left alone)."""
    optuna.storages.fail_stale_trials(study)
    fail_dead_local_trials(study)
    running = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    closed = [tracker.close_stale(run, "its trial is no longer running in the Optuna study")
              for run in tracker.running_runs({"study": study.study_name})
              if "trial_number" in run.data.tags and run.data.tags["trial_number"] not in running]
    # a run can finish and its process die before Optuna records the value: the trial is failed (and retried)
    failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    closed += [tracker.close_stale(run, "its trial failed in the Optuna study after the run had ended "
                                        "(the process died before Optuna recorded the result)")
               for run in tracker.runs({"study": study.study_name, "trial_state": "COMPLETE"})
               if run.data.tags.get("trial_number") in failed]
    return closed + tracker.close_orphans()


def check_packs(spec: experiments.Study, base: RunConfig, options: SweepOptions, num_classes: int) -> None:
    """Refuse, before anything is stored, packs that cannot work: seeds per trial for a study that searches the
    seed itself, or a pack of the control's size that will not fit in memory."""
    if options.seeds_per_trial > 1 and "seed" in describe_space(spec, base):
        raise SweepError(f"--seeds-per-trial: the {spec.name} study searches the seed itself; use 1")
    device = resolve_device(base.device)
    for flag, k in (("--seeds-per-trial", options.seeds_per_trial), ("--seeds", options.seeds)):
        try:
            check_fits(base, k, num_classes, device)
        except PackError as exc:
            raise SweepError(f"{flag}: {exc}") from None


def remaining_trials(study: optuna.Study, target: int) -> int:
    done = sum(t.state in DONE for t in study.get_trials(deepcopy=False))
    return max(0, target - done)


def run_sweep(options: SweepOptions, on_update: Callable[[optuna.Study, int], None] | None = None) -> dict[str, Any]:
    """Run or resume the study up to ``trials`` finished trials; returns the summary."""
    spec = load_spec(options.variant)
    # data first: bad data must be refused before any store is created, and generated once, before workers race
    train, _ = load_data(base_config(spec, options), progress=True, skip_invalid=options.skip_invalid)
    check_packs(spec, base_config(spec, options), options, len(train.class_names))
    with StorageLock(options.storage).hold():  # schemas are created by one process at a time
        study, spec, base = prepare(options)
        tracker = MlflowTracker(study.study_name)
        reconcile_runs(study, tracker)
    target = options.trials or spec.trials[options.profile]
    update = (lambda: on_update(study, target)) if on_update else (lambda: None)
    with sigterm_as_interrupt():
        update()
        with tracker.run(f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", params=dataclasses.asdict(base),
                         tags={"study": study.study_name, "variant": spec.name, "role": "sweep",
                               "profile": options.profile, "workers": options.workers}) as parent:
            study.set_user_attr("last_parent_run_id", parent.run_id)
            study.set_user_attr("device_used", _device_description(base.device))
            # claimed slots bound the trials; attempts are bounded too, with room to replace failed trials
            todo = 2 * remaining_trials(study, target)
            if options.workers == 1:
                run_worker(options, parent.run_id, todo, callbacks=[lambda s, t: update()])
            elif todo:
                _spawn_workers(options, parent.run_id, todo, update)
            if options.seeds:
                confirm(study, options, spec, base, tracker, parent.run_id, update)
            result = summary(study, options, tracker, parent.run_id)
            parent.log_metrics({k: v for k, v in result.items() if k.startswith("n_") or k.endswith("_value")})
            return result


def confirmation_seeds(base: RunConfig, options: SweepOptions) -> list[int]:
    """N seeds that no trial of the search trained (those used base.seed and the next seeds_per_trial - 1), so
    the best trial's lucky draw does not count twice."""
    first = base.seed + options.seeds_per_trial
    return list(range(first, first + options.seeds))


def confirm(study, options: SweepOptions, spec, base: RunConfig, tracker: MlflowTracker, parent_run_id: str,
            update: Callable = lambda: None) -> dict[str, Any]:
    """Re-train the best trial's and the control's configurations with new seeds, each as one pack of N seeds.

    Both get the same seeds, so the difference is paired seed by seed. A seed that diverges in either is
    left out of both (and named in the record). The best trial is pipeline.best's: with no complete trial
    besides the control there is nothing to confirm.
    """
    best = best_trial(study.get_trials(deepcopy=False))
    if best is None:
        return {}
    ctx = _context(options, parent_run_id)
    configs = {"best": trial_config(optuna.trial.FixedTrial(best.params), ctx), "control": base}
    seeds = confirmation_seeds(base, options)
    values: dict[str, dict[int, float]] = {}
    for role, cfg in configs.items():
        pack = Pack.of_seeds(dataclasses.replace(cfg, seed=seeds[0]), len(seeds))
        tags = {"study": study.study_name, "role": "confirmation", "confirm_of": role, "seeds": ",".join(map(str, seeds)),
                "source_trial": best.number if role == "best" else "control"}
        result = tracked_run(pack, tracker, name=f"confirm-{role}-seeds{seeds[0]}-{seeds[-1]}", out_dir=options.out_dir,
                             parent_run_id=parent_run_id, tags=tags, progress=False, data=ctx.data(cfg),
                             stop_on_divergence=False)
        values[role] = seed_values(result.metrics, spec.objective) or {seeds[0]: result.metrics[spec.objective]}
        update()
    paired = [s for s in seeds if all(s in v for v in values.values())]
    record = {"best_trial": best.number, "seeds": paired, "best": [values["best"][s] for s in paired],
              "control": [values["control"][s] for s in paired], "dropped_seeds": sorted(set(seeds) - set(paired))}
    study.set_user_attr("confirmation", record)
    return record
