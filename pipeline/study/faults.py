"""What a sweep does about trials that fail, hang or lose their process: timeouts, stale trials retried,
MLflow runs left RUNNING by a killed process closed as FAILED, a trial taken over by another worker dropped, and
interrupts logged without tracebacks."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import socket
import time
from typing import Callable

import optuna
from optuna.trial import TrialState

from pipeline.interrupts import deliver
from pipeline.study.optuna_study import HEARTBEAT_GRACE
from pipeline.tracking import MlflowTracker, process_alive


_log = logging.getLogger(__name__)


class _InterruptWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; for Ctrl-C, SIGTERM or a trial another worker took over
    (see optimize_past_takeovers) its one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt,
                                                                optuna.exceptions.UpdateFinishedTrialError)):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_InterruptWithoutTraceback())  # where Optuna logs it


MAX_RETRIES = 3  # attempts after the first that a killed or interrupted trial gets


class TrialTimeout(TimeoutError):
    """The trial ran past --trial-timeout."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise TrialTimeout in this (main) thread after ``seconds``: a hung trial fails instead of blocking the sweep."""
    if not seconds:
        yield
        return

    def on_alarm(signum, frame):  # not in the middle of a store write (see pipeline/interrupts.py)
        deliver(TrialTimeout(f"timeout: the trial ran past {seconds:g} s"))
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def stale_callback(tracker: MlflowTracker, study_name: str):
    """Retry a killed worker's trial, and close its MLflow run as FAILED."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def on_stale(study, trial):
        tracker.fail_stale_runs({"study": study_name, "trial_number": str(trial.number)},
                                "its worker stopped sending heartbeats: killed")
        retry(study, trial)
    return on_stale


ENDED_UNRECORDED = ("its worker (pid {pid} on {host}) ended without recording why: killed, or interrupted before "
                    "its trial began")


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
            if not trial.user_attrs.get("fail_reason"):  # a finished trial takes no attribute: say why, first
                storage.set_trial_user_attr(trial._trial_id, "fail_reason", ENDED_UNRECORDED.format(**worker))
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
                if callback is not None:
                    callback(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
    return failed


def requeue_interrupted(study: optuna.Study, limit: int) -> list[int]:
    """Queue again, once, up to ``limit`` trials (the finished trials the study still wants, less those already
    queued) that a Ctrl-C or SIGTERM interrupted and whose setting nothing has measured since: "run the same
    command again to resume" then measures what the interrupt cut, instead of a grid losing that point for good
    (Optuna's grid counts a failed point as visited and re-runs another in its place) or TPE moving on past it.
    The retry is Optuna's own (the failed trial's params and grid point), at most MAX_RETRIES in a trial's
    history. The control is queued by ensure_control; a killed worker's trial by the stale-trial callback; a
    timeout or a NaN is not an interrupt, so it is not run again. Returns the numbers of the trials queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # every attempt retried
    measured = {_setting(t) for t in trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)}
    retry, queued = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES), []
    limit -= sum(t.state == TrialState.WAITING for t in trials)  # a queued control or retry takes a slot too
    for trial in trials:
        if len(queued) >= limit:
            break
        if (trial.state == TrialState.FAIL and not trial.user_attrs.get("control") and trial.number not in retried
                and str(trial.user_attrs.get("fail_reason", "")).startswith("interrupted by")
                and len(trial.system_attrs.get("retry_history", [])) < MAX_RETRIES
                and _setting(trial) not in measured):
            retry(study, copy.deepcopy(trial))  # Optuna appends to the history of the trial it is given
            measured.add(_setting(trial))
            queued.append(trial.number)
    return queued


def _setting(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's setting, also for a queued one whose params are still only its fixed ones."""
    return json.dumps({**trial.system_attrs.get("fixed_params", {}), **trial.params}, sort_keys=True)


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


def optimize_past_takeovers(study: optuna.Study, func: Callable, n_trials: int, timeout: float | None,
                            callbacks: list | None) -> None:
    """study.optimize, going on after a trial of this worker was taken over: another worker failed it as stale
    (its heartbeats had stopped reaching the store for the grace period: a suspended machine, a starved or
    locked-out heartbeat thread) and queued its retry. Optuna then raises ValueError("Cannot tell a FAIL
    trial") out of optimize; this worker drops that attempt and goes on with the others."""
    end = None if timeout is None else time.monotonic() + timeout
    attempts: list[optuna.Trial] = []

    def counted(trial: optuna.Trial):
        attempts.append(trial)
        return func(trial)

    while len(attempts) < n_trials:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            return
        try:
            study.optimize(counted, n_trials=n_trials - len(attempts), timeout=left, catch=(Exception,),
                           callbacks=callbacks)
            return
        except ValueError:
            if not attempts or not _finished_elsewhere(study, attempts[-1]):
                raise
            _log.warning("trial %d was failed by another worker: its heartbeats had not reached the store for %d s"
                         " (see TINYSSD_HEARTBEAT_GRACE); its result is dropped and its retry runs in its place",
                         attempts[-1].number, HEARTBEAT_GRACE)


def _finished_elsewhere(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the store already holds ``trial`` as finished: Optuna's tell failed because another process ended it."""
    stored = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    return stored.state.is_finished()
