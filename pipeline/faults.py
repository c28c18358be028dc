"""What a sweep does about trials that fail, hang or lose their process: timeouts, stale trials retried,
MLflow runs left RUNNING by a killed process closed as FAILED, and interrupts logged without tracebacks."""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import socket

import optuna
from optuna.trial import TrialState

from pipeline.interrupts import deliver
from pipeline.tracking import MlflowTracker, process_alive


class _InterruptWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; for Ctrl-C or SIGTERM its one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_InterruptWithoutTraceback())  # where Optuna logs it


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
