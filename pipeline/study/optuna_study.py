"""The Optuna study behind a sweep: its options, storage, creation or resumption (refusing a changed search),
its control, and what is counted and called best in it.

Storage is Optuna's own: ``sqlite:///optuna.db`` by default, any RDB URL (PostgreSQL) to share a study
between machines. The study, its control (trial 0, the chapter's configuration) and both databases are
created once, in this process, before any worker starts: several processes creating SQLite schemas at
once crash.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

import experiments
from pipeline.config import RunConfig, make_config
from pipeline.interrupts import run_whole
from pipeline.machine import devices_list, devices_used
from pipeline.sqlite_files import DEFAULT_STORAGE
from pipeline.stats.decide import DEFAULT_MAX_SEEDS
from pipeline.study import best as best_rule
from pipeline.study.space import describe_space


# Heartbeats let a resumed sweep notice a worker that was killed mid-trial; the env vars exist for tests.
HEARTBEAT_INTERVAL = int(os.environ.get("TINYSSD_HEARTBEAT_INTERVAL", "10"))


HEARTBEAT_GRACE = int(os.environ.get("TINYSSD_HEARTBEAT_GRACE", "60"))
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
# A study's verdict as plain user attributes, until --decide settles one (pipeline.study.sweep.plain_verdict)
NOT_DECIDED = {"verdict": "not decided", "verdict_trial": None, "verdict_delta": None, "verdict_interval": None,
               "verdict_seeds": 0, "verdict_split": None}


class SweepError(ValueError):
    """A sweep that must not start: the message says why and what to do."""


class NoTrialCompleted(RuntimeError):
    """A search whose every trial failed: nothing to compare, so no verdict; the message has the first failure."""


def check_some_trial_completed(trials: list[optuna.trial.FrozenTrial]) -> None:
    """Raise NoTrialCompleted when the study has trials, every one has ended, and none of them COMPLETE, naming the
    first failure. Trials still running or waiting (another worker's, another host's) may yet complete."""
    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    if not trials or any(t.state in live for t in trials):
        return
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    first = failed[0] if failed else trials[0]
    reason = first.user_attrs.get("fail_reason") or first.system_attrs.get("fail_reason") or first.state.name
    line = next((part.strip() for part in reversed(str(reason).strip().splitlines()) if part.strip()), "")
    raise NoTrialCompleted(f"no trial completed ({len(failed)} failed of {len(trials)}); trial {first.number}: {line}")


@dataclass(frozen=True)
class SweepOptions:
    variant: str
    trials: int | None = None  # None: the variant's default for the profile
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
    decide: bool = False  # add seeds to the best trial and the control until the verdict is decided
    delta: float = 0.01  # the equivalence margin of a verdict, in the objective's units
    max_seeds: int = DEFAULT_MAX_SEEDS  # the most seeds --decide spends on each setting
    candidates: int = 1  # how many of the best trials get a verdict (Holm-corrected when more than one)
    contrasts: tuple[str, ...] = ()  # a designed variant's contrasts that take new seeds (empty: every one)
    out_dir: Path = Path("outputs")
    trial_timeout: float | None = None  # seconds; a longer trial fails with reason "timeout"
    skip_invalid: bool = False  # skip and count bad data records instead of refusing the data set


def base_config(variant: experiments.Variant, options: SweepOptions) -> RunConfig:
    """The control's configuration: defaults, profile, the variant's fixed overrides, then the user's flags."""
    return make_config(options.profile, {**variant.fixed_for(options.profile), **options.overrides})


def _engine_kwargs(url: str) -> dict:
    # SQLite serialises writers: wait for the lock instead of failing when workers write together
    return {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}


class WholeCallsStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, every call of which runs whole: a Ctrl-C or SIGTERM during a read or a write is raised
    when the call returns (see pipeline/interrupts.py). Cut short between a read's statement and its rows, a call
    leaves the statement active, and SQLite's read lock held, for as long as the interrupt's traceback lives
    (Python 3.11's sqlite3 no longer resets statements on rollback); cut short before its commit, a write is lost.
    CI saw a Ctrl-C'd sweep hang so: its workers' closing writes waited for a read lock that none of their own
    statements held, while its parent, which reads the study every second for the progress line, waited at exit
    for them."""


for _name, _method in vars(optuna.storages.RDBStorage).items():
    if inspect.isfunction(_method) and not _name.startswith("__"):
        setattr(WholeCallsStorage, _name, run_whole(_method))


def worker_stamp(datetime_start: Any) -> dict[str, Any]:
    """Who runs a trial's attempt: this host and process. ``started`` tells this attempt from a retried trial's
    last one (a retry copies its user attrs)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": str(datetime_start)}


class StampedStorage(WholeCallsStorage):
    """A trial is stamped with its worker, and its first heartbeat recorded, in the same whole call that starts it
    (a new trial, or a waiting retry set RUNNING). Stamped only later by the objective, a trial that a Ctrl-C or a
    kill caught between Optuna starting it and the objective's first line stayed RUNNING with nothing to say whose
    it was (CI saw a Ctrl-C'd two-worker sweep leave ['FAIL', 'RUNNING']); and since Optuna marks stale only trials
    with a heartbeat recorded, and records the first once the objective's thread starts, no other host ever failed
    it either. A retry's copied ``fail_reason`` (the attempt before's) is cleared as it starts."""

    @run_whole
    def _create_new_trial(self, study_id: int, template_trial: Any = None) -> optuna.trial.FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)  # what Optuna's cached storage calls
        if trial.state == TrialState.RUNNING:  # not a finished (add_trial) or waiting (enqueue, retry) one
            trial.set_user_attr("worker", self._start(trial._trial_id))
        return trial

    @run_whole
    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        started = super().set_trial_state_values(trial_id, state, values)
        if started and state == TrialState.RUNNING:  # a waiting trial taken: an enqueued one, or a retry
            self._start(trial_id)
        return started

    def _start(self, trial_id: int) -> dict[str, Any]:
        stored = self.get_trial(trial_id)  # its start as stored (a database may keep less of it than Python)
        stamp = worker_stamp(stored.datetime_start)
        self.set_trial_user_attr(trial_id, "worker", stamp)
        if stored.user_attrs.get("fail_reason"):
            self.set_trial_user_attr(trial_id, "fail_reason", None)  # the failed attempt's, copied by its retry
        if self.get_heartbeat_interval():
            self.record_heartbeat(trial_id)
        return stamp


def open_storage(url: str, on_stale: Callable | None = None) -> optuna.storages.RDBStorage:
    """Optuna RDB storage with heartbeats, so a killed worker's trial is failed and retried."""
    return StampedStorage(
        url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE,
        heartbeat_stale_trial_callback=on_stale or optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))


def save_dashboard_note(study: optuna.Study, text: str) -> bool:
    """``text`` as the study's note in Optuna Dashboard, where optuna-dashboard is installed (the ``dashboard``
    extra; nothing needs it). Returns whether it was saved."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return False
    save_note(study, text)
    return True


def study_name_for(options: SweepOptions) -> str:
    return options.study_name or f"{options.variant}-{options.profile}"


def _signature(variant: experiments.Variant, base: RunConfig, seeds_per_trial: int) -> dict[str, Any]:
    return {"space": describe_space(variant, base), "base_config": dataclasses.asdict(base),
            "objective": variant.objective, "seeds_per_trial": seeds_per_trial}


def _check_unchanged(stored: dict[str, Any], current: dict[str, Any], name: str) -> None:
    """Refuse to mix trials of two different searches in one study."""
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


def load_variant(variant_name: str) -> experiments.Variant:
    """The variant called ``variant_name``, or a SweepError that lists the valid names."""
    try:
        return experiments.load(variant_name)
    except KeyError as exc:
        raise SweepError(exc.args[0]) from None


def prepare(options: SweepOptions) -> tuple[optuna.Study, experiments.Variant, RunConfig]:
    """Create or resume the study, refusing a changed space; enqueue the control in a new study."""
    variant = load_variant(options.variant)
    base = base_config(variant, options)
    name = study_name_for(options)
    storage = open_storage(options.storage)
    signature = _signature(variant, base, options.seeds_per_trial)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                sampler=variant.sampler(options.seed), load_if_exists=True)
    if "signature" in study.user_attrs:
        _check_unchanged(study.user_attrs["signature"], signature, name)
    else:
        for key, value in NOT_DECIDED.items():  # first, so that Optuna Dashboard lists the verdict first
            study.set_user_attr(key, value)
        study.set_user_attr("signature", signature)
        study.set_user_attr("variant", variant.name)
        study.set_user_attr("question", variant.question)
        study.set_user_attr("profile", options.profile)
    if study.metric_names != [variant.objective]:  # Optuna Dashboard shows this name instead of "Objective 0"
        study.set_metric_names([variant.objective])
    ensure_control(study)
    return study, variant, base


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


def best_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The study's best trial by the one rule of pipeline.study.best (never the control; ties to the lower number)."""
    number = best_rule.best_number(best_rule.from_trials(trials))
    return next((t for t in trials if t.number == number), None)


def record_device(study: optuna.Study, description: str) -> None:
    """Note on the study that its sweep runs on ``description`` now: ``device_used`` is the latest machine,
    ``devices_used`` every one so far (pipeline.machine.devices_text words them for the reports)."""
    study.set_user_attr("devices_used", devices_used(study.user_attrs, description))
    study.set_user_attr("device_used", description)


def note_devices(study: optuna.Study, descriptions: list[str]) -> None:
    """Add to the study's ``devices_used`` the machines that trained seeds it reused or adopted from another study
    (the shared control's among them); ``device_used``, the machine its own sweep ran on last, is left as it is."""
    used = devices_list(study.user_attrs)
    new = [d for d in descriptions if d not in used]
    if new:
        study.set_user_attr("devices_used", used + new)


def storage_url(study: optuna.Study) -> str | None:
    """The URL of the store that holds ``study`` as it was opened (None for one held in memory)."""
    storage = getattr(study, "_storage", None)
    return getattr(getattr(storage, "_backend", storage), "url", None)


def stored_base_config(study: optuna.Study) -> dict[str, Any]:
    """The base configuration (RunConfig fields) the study's signature recorded when it was created."""
    return study.user_attrs.get("signature", {}).get("base_config", {})


def study_objective(study: optuna.Study) -> str:
    """The metric the study maximises, as its signature recorded it."""
    return study.user_attrs.get("signature", {}).get("objective", "val/map")


def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {state.name: sum(t.state == state for t in trials) for state in TrialState}


def remaining_trials(study: optuna.Study, target: int) -> int:
    done = sum(t.state in DONE for t in study.get_trials(deepcopy=False))
    return max(0, target - done)
