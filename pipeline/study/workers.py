"""The processes that run a sweep's trials: each claims trial slots under a lock, so any number of workers on
any number of machines create exactly the trials asked for; a killed worker's trial is run again."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from typing import Callable

import optuna
from optuna.trial import TrialState

import experiments
from pipeline.interrupts import raise_if_interrupted, sigterm_as_interrupt
from pipeline.study.faults import fail_dead_local_trials, optimize_past_takeovers, stale_callback
from pipeline.study.optuna_study import DONE, SweepOptions, open_storage
from pipeline.study.storage_lock import StorageLock
from pipeline.study.trial import objective, pruner, trial_context


_log = logging.getLogger(__name__)


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


RESUME_SEED_STEP = 1009  # more workers than this on one study would share a seed with a later session's


def worker_sampler(variant: experiments.Variant, seed: int, index: int, started: int = 0) -> optuna.samplers.BaseSampler:
    """Worker ``index``'s sampler, in a study where ``started`` trials had begun when the sweep started.

    TPE workers get seeds of their own, so that two of them starting at once do not propose the same point.
    A resumed study gets seeds no earlier session of it used: with the same seed, a resumed TPE search drew its
    random start-up points again (combined, resumed at 3 of 10 trials, re-ran trials 1 and 2 as 5 and 6). A new
    study keeps ``seed + index``. Two sessions that start one study at once, on two hosts, still share seeds.
    A GridSampler's seed shuffles the grid itself, so its grid_id means the same point in every worker only
    with one seed for all of them (and a grid never proposes a point twice anyway)."""
    sampler = variant.sampler(seed + index + RESUME_SEED_STEP * started)
    return control_safe(variant.sampler(seed)) if isinstance(sampler, optuna.samplers.GridSampler) else sampler


def control_safe(grid: optuna.samplers.GridSampler) -> optuna.samplers.GridSampler:
    """``grid``, made to take the enqueued control in its stride: Optuna 5.0's GridSampler.after_trial raises
    KeyError('grid_id') after an enqueued trial when exactly one grid point is left (optuna PR #6844, open),
    which ended every sweep of a one-point grid (precision) after its control, and would end a grid study whose
    control is queued again near the end of its grid. An enqueued trial has no grid point, so it cannot be the
    one that completes the grid: only the other trials are passed on."""
    after_grid_trial = grid.after_trial

    def after_trial(study, trial, state, values):
        if "grid_id" in trial.system_attrs:
            after_grid_trial(study, trial, state, values)
        elif grid.is_exhausted(study):  # the control after the whole grid: stop, as Optuna does
            study.stop()

    grid.after_trial = after_trial
    return grid


def started_trials(study: optuna.Study) -> int:
    """How many of the study's trials have begun (all but the waiting ones): counted once per sweep, so that every
    worker of a session steps its seed from the same count, whenever it starts."""
    return len(study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING)))


def run_worker(options: SweepOptions, parent_run_id: str, n_trials: int, index: int = 0,
               callbacks: list | None = None, started: int = 0) -> None:
    """Run trials of the study in this process until its slots are taken (at most n_trials attempts); ``started``:
    the trials the study had begun when this sweep started (see worker_sampler)."""
    import torch

    if options.workers > 1:  # the cores are shared between the workers
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // options.workers))
    ctx = trial_context(options, parent_run_id)
    storage = open_storage(options.storage, stale_callback(ctx.tracker, ctx.study_name))
    study = optuna.load_study(study_name=ctx.study_name, storage=storage, pruner=pruner(ctx.base),
                              sampler=worker_sampler(ctx.variant, options.seed, index, started))
    claim_slots(study, StorageLock(options.storage), options.trials or ctx.variant.trials[options.profile])
    with sigterm_as_interrupt(), contextlib.suppress(StudyFull):  # SIGTERM: the trial ends FAIL, its run KILLED
        optimize_past_takeovers(study, lambda t: objective(t, ctx), n_trials, options.timeout, callbacks)


def _worker_process(*args) -> None:
    """A worker process: run_worker, ending quietly on an interrupt (its trial and run are closed by then)."""
    try:
        run_worker(*args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


INTERRUPT_GRACE = 15  # seconds the workers get to close their trials after Ctrl-C, before SIGTERM
TERMINATE_GRACE = 30  # and after SIGTERM, before SIGKILL


def spawn_workers(options: SweepOptions, parent_run_id: str, n_trials: int, on_poll: Callable, started: int = 0,
                  on_killed: Callable = lambda: None) -> None:
    """Run the workers, polling; on an interrupt, stop them (stop_workers)."""
    mp = multiprocessing.get_context("spawn")
    procs = [mp.Process(target=_worker_process, args=(options, parent_run_id, n_trials, i, None, started), daemon=False)
             for i in range(options.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            on_poll()
            raise_if_interrupted()  # this process trains nothing: a dropped SIGTERM is noticed here
            time.sleep(1.0)
    except BaseException as exc:
        stop_workers(procs, ctrl_c=isinstance(exc, KeyboardInterrupt) and not exc.args, on_killed=on_killed)
        raise
    on_poll()
    crashed = [p.exitcode for p in procs if p.exitcode and p.exitcode > 0]
    if crashed:
        raise RuntimeError(f"{len(crashed)} of {len(procs)} workers exited with an error (exit codes {crashed})")
    killed = [(i, -p.exitcode) for i, p in enumerate(procs) if p.exitcode and p.exitcode < 0]
    if killed:  # by a signal, from outside: their trials were failed and queued again; finish them here
        for i, signum in killed:
            _log.warning("worker %d was killed (%s); its trial is run again", i, signal.Signals(signum).name)
        run_worker(options, parent_run_id, n_trials, index=len(procs), started=started)


def stop_workers(procs: list, ctrl_c: bool, on_killed: Callable) -> None:
    """Stop the workers. After Ctrl-C, which the terminal sent them too, wait INTERRUPT_GRACE s for them to close
    their trials rather than interrupt them again mid-cleanup; then SIGTERM (a worker fails its trial and closes its
    run); then SIGKILL for one still alive TERMINATE_GRACE s later, or at once on another Ctrl-C (else this process
    would wait for it at exit, forever)."""
    try:
        if ctrl_c:
            _wait_for_exit(procs, INTERRUPT_GRACE)
        for p in procs:
            if p.is_alive():
                p.terminate()
        _wait_for_exit(procs, TERMINATE_GRACE)
    finally:
        _kill_the_hung(procs, on_killed)


def _kill_the_hung(procs: list, on_killed: Callable) -> None:
    """SIGKILL the workers still alive, then ``on_killed`` closes their trials and runs (as a killed worker's)."""
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        _log.warning("a worker (pid %d) had not stopped: killed", p.pid)
        p.kill()
        p.join(10)  # a process in uninterruptible sleep dies later; not waited for
    if hung:
        try:
            on_killed()
        except Exception as exc:  # the interrupt being handled is what the command ends with
            _log.warning("the killed workers' trials and runs were not closed (%s); the next sweep closes them", exc)


def _wait_for_exit(procs: list, seconds: float) -> None:
    """Wait up to ``seconds`` for the processes to exit."""
    deadline = time.monotonic() + seconds
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
