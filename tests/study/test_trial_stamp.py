"""A trial is stamped with its worker when Optuna starts it, so a process that dies before its objective's first
line (a Ctrl-C between Optuna's ask and the objective) leaves a trial that the next reconciliation fails."""

import os
import socket
import subprocess
import sys
import time

import optuna

from pipeline.study.faults import ENDED_UNRECORDED, fail_dead_local_trials
from pipeline.study.optuna_study import StampedStorage, open_storage

ASK_THEN_DIE = """
import os, optuna
from pipeline.study.optuna_study import StampedStorage, open_storage
study = optuna.load_study(study_name="s", storage=open_storage({url!r}))
study.ask()
os._exit(1)  # as a Ctrl-C that landed before the objective began: nothing else written
"""


def test_a_new_trial_and_a_waiting_retry_are_stamped_when_they_start(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path}/o.db"))
    study.add_trial(optuna.trial.create_trial(value=0.1))  # a finished trial is nobody's attempt
    fresh = study.ask()
    study.enqueue_trial({})
    retried = study.ask()
    stored = study.get_trials(deepcopy=False)
    assert "worker" not in stored[0].user_attrs
    for trial in (fresh, retried):
        frozen = stored[trial.number]
        assert frozen.user_attrs["worker"] == {"host": socket.gethostname(), "pid": os.getpid(),
                                               "started": str(frozen.datetime_start)}


def test_a_worker_that_dies_between_ask_and_objective_has_its_trial_failed_with_a_reason(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    died = subprocess.run([sys.executable, "-c", ASK_THEN_DIE.format(url=url)], cwd=os.getcwd(),
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert died.returncode == 1
    (orphan,) = study.get_trials(deepcopy=False)
    assert orphan.state.name == "RUNNING"
    assert fail_dead_local_trials(study) == [0]
    (failed, *retry) = study.get_trials(deepcopy=False)
    assert failed.state.name == "FAIL"
    assert failed.user_attrs["fail_reason"] == ENDED_UNRECORDED.format(**orphan.user_attrs["worker"])
    assert [t.state.name for t in retry] == ["WAITING"]  # handed to the retry callback, as a missed heartbeat is
    # the retry dies the same way: its own reason, with its own worker, not the copy of the first attempt's
    assert subprocess.run([sys.executable, "-c", ASK_THEN_DIE.format(url=url)],
                          env={**os.environ, "PYTHONPATH": os.getcwd()}).returncode == 1
    assert fail_dead_local_trials(study) == [1]
    retried = study.get_trials(deepcopy=False)[1]
    assert retried.user_attrs["worker"]["pid"] != orphan.user_attrs["worker"]["pid"]
    assert retried.user_attrs["fail_reason"] == ENDED_UNRECORDED.format(**retried.user_attrs["worker"])


def test_another_hosts_trial_that_died_before_its_objective_goes_stale(tmp_path):
    """Optuna marks stale only a trial with a heartbeat recorded: the first is recorded as the trial starts."""
    url = f"sqlite:///{tmp_path}/o.db"
    storage = StampedStorage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    assert subprocess.run([sys.executable, "-c", ASK_THEN_DIE.format(url=url)],
                          env={**os.environ, "PYTHONPATH": os.getcwd()}).returncode == 1
    time.sleep(2.5)  # past the grace period, with no heartbeat since the start
    optuna.storages.fail_stale_trials(study)  # what any worker of any host runs before each trial
    assert [t.state.name for t in study.get_trials(deepcopy=False)][:1] == ["FAIL"]
