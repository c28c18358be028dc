"""Faults a long sweep must survive: kill -9, SIGTERM, NaN loss, hung trials, bad data, racing workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import pipeline.training.run
import pipeline.training.step
from cli import app
from conftest import CLI, plain, tiny_args, wait_for
from pipeline.model.checkpoint import load_latest_epoch_state, save_epoch_state
from pipeline.tracking import tracking_uri

runner = CliRunner()
pytestmark = pytest.mark.slow


def sweep_args(data, *extra):
    return ["sweep", "focal-loss", "--dataset", str(data), "--device", "cpu", *tiny_args(), "--no-prune", *extra]


def fast_heartbeat_env():
    return {**os.environ, "TINYSSD_HEARTBEAT_INTERVAL": "1", "TINYSSD_HEARTBEAT_GRACE": "3"}


def start_sweep(workdir, data, *extra, env=None):
    return subprocess.Popen([sys.executable, CLI, *sweep_args(data, *extra)], cwd=workdir,
                            env=env or fast_heartbeat_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load(name="focal-loss-quick"):
    return optuna.load_study(study_name=name, storage="sqlite:///optuna.db")


def runs(name="focal-loss-quick"):
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id])


def first_epoch_written(workdir):
    return lambda: any((workdir / "outputs" / "state").glob("*/trial-0/epoch-0000.pt"))


SLOW = ["--set", "epochs=6", "--set", "train_images=12"]  # long enough to be caught mid-trial
# for two workers on two cores: long enough that no trial ends before the signal lands
SLOWER = ["--set", "epochs=40", "--set", "train_images=12"]


def test_kill_9_then_resume_retries_the_trial_from_its_last_epoch(workdir, tiny_bananas):
    worker = start_sweep(workdir, tiny_bananas, "--trials", "2", *SLOW)
    wait_for(first_epoch_written(workdir))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert load().trials[0].state.name == "RUNNING"  # what a killed worker leaves behind
    time.sleep(4)  # past the heartbeat grace period
    resumed = subprocess.run([sys.executable, CLI, *sweep_args(tiny_bananas, "--trials", "2", *SLOW)], cwd=workdir,
                             env=fast_heartbeat_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = load().trials
    states = [t.state.name for t in trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2 and states[0] == "FAIL"
    retry = next(t for t in trials if t.user_attrs.get("root_trial") == 0 and t.number != 0)
    assert retry.user_attrs["control"] is True and retry.params == trials[0].params  # same parameters again
    by_trial = {r.data.tags.get("trial_number"): r for r in runs() if "trial_number" in r.data.tags}
    assert by_trial["0"].info.status == "FAILED" and by_trial["0"].data.tags["trial_state"] == "FAIL"  # reconciled
    assert int(by_trial[str(retry.number)].data.tags["resumed_from_epoch"]) >= 0  # not from scratch
    assert all(r.info.status != "RUNNING" for r in runs())


def test_kill_9_then_resume_at_once_retries_the_trial_without_waiting_for_the_heartbeat(workdir, tiny_bananas):
    """The killed worker ran on this host and its process is gone: the trial is failed and retried at once,
    not after the heartbeat's grace period (here 10 minutes). Before, the resumed sweep counted the dead
    trial as a running slot, exited 0 with the study short, and left the trial RUNNING."""
    worker = start_sweep(workdir, tiny_bananas, "--trials", "2", *SLOW)
    wait_for(first_epoch_written(workdir))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    resumed = subprocess.run([sys.executable, CLI, *sweep_args(tiny_bananas, "--trials", "2", *SLOW)], cwd=workdir,
                             env={**os.environ, "TINYSSD_HEARTBEAT_GRACE": "600"}, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    states = [t.state.name for t in load().trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 2 and "RUNNING" not in states, states
    assert f"its worker (pid {worker.pid} on " in load().trials[0].user_attrs["fail_reason"]  # a failure says why
    assert all(r.info.status != "RUNNING" for r in runs())


def test_a_worker_killed_mid_sweep_has_its_trial_run_again_in_the_same_sweep(workdir, tiny_bananas):
    # a grace period longer than the test: the killed worker's trial must be noticed through its pid
    sweep = start_sweep(workdir, tiny_bananas, "--trials", "3", "--workers", "2", *SLOWER,
                        env={**fast_heartbeat_env(), "TINYSSD_HEARTBEAT_GRACE": "600"})
    wait_for(lambda: any((workdir / "outputs" / "state").glob("*/trial-*/epoch-0000.pt")))
    children = subprocess.run(["pgrep", "-P", str(sweep.pid)], capture_output=True, text=True).stdout.split()
    running = {t.user_attrs["worker"]["pid"] for t in load().trials if t.state.name == "RUNNING"
               and "worker" in t.user_attrs}
    victim = next(int(pid) for pid in children if int(pid) in running)
    os.kill(victim, signal.SIGKILL)
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, out
    assert "was killed (SIGKILL); its trial is run again" in out and "Traceback" not in out, out
    trials = load().trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1 and "RUNNING" not in states, states
    assert all(r.info.status != "RUNNING" for r in runs())


def test_ctrl_c_on_a_two_worker_sweep_closes_everything_without_tracebacks(workdir, tiny_bananas):
    """A terminal's Ctrl-C reaches the whole process group: the workers and the parent at once."""
    sweep = subprocess.Popen([sys.executable, CLI, *sweep_args(tiny_bananas, "--trials", "3", "--workers", "2", *SLOWER)],
                             cwd=workdir, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)  # default heartbeats: no live trial taken over
    wait_for(lambda: any((workdir / "outputs" / "state").glob("*/trial-*/epoch-0000.pt")))
    os.killpg(sweep.pid, signal.SIGINT)
    out, _ = sweep.communicate(timeout=120)
    assert sweep.returncode != 0 and "Traceback" not in out, out
    trials = load().trials
    assert trials and all(t.state.name in ("FAIL", "COMPLETE") for t in trials), [t.state.name for t in trials]
    # every failure says why: the interrupt, or, where it landed between Optuna creating the trial and the
    # objective starting (the worker then ends without a word), the reconciliation's reason
    reasons = {t.user_attrs.get("fail_reason", "none") for t in trials if t.state.name == "FAIL"}
    assert reasons <= {"interrupted by Ctrl-C (SIGINT)"} | {r for r in reasons if "ended without recording why" in r}
    assert all(r.info.status in ("KILLED", "FINISHED") for r in runs())


def _deaf_worker(ready):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker hung in a store call that never returns, say
    ready.set()
    time.sleep(600)


def _start_deaf_worker():
    import multiprocessing
    mp = multiprocessing.get_context("fork")
    ready = mp.Event()
    deaf = mp.Process(target=_deaf_worker, args=(ready,), daemon=True)
    deaf.start()
    assert ready.wait(30)
    return deaf


def test_a_worker_that_outlives_sigterm_is_killed_and_its_leftovers_handed_on(monkeypatch):
    """Else the sweep's parent waits for it at exit, forever (CI saw a Ctrl-C'd sweep hang so)."""
    from pipeline.study import workers

    monkeypatch.setattr(workers, "INTERRUPT_GRACE", 0.5)
    monkeypatch.setattr(workers, "TERMINATE_GRACE", 0.5)
    deaf = _start_deaf_worker()
    closed = []
    workers.stop_workers([deaf], ctrl_c=True, on_killed=lambda: closed.append("reconciled"))
    assert deaf.exitcode == -signal.SIGKILL and closed == ["reconciled"]


def test_a_second_ctrl_c_kills_the_workers_at_once_and_ends_with_the_interrupt():
    """A user who presses Ctrl-C again does not wait out the graces; a failure to close the leftovers (the store
    locked, say) is logged, and the command still ends with the interrupt."""
    import threading

    from pipeline import interrupts
    from pipeline.study import workers

    deaf = _start_deaf_worker()

    def fail_to_reconcile():
        raise OSError("database is locked")
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # the second Ctrl-C
    with pytest.raises(KeyboardInterrupt), interrupts.sigterm_as_interrupt():
        workers.stop_workers([deaf], ctrl_c=True, on_killed=fail_to_reconcile)  # graces of 15 s and 30 s
    assert deaf.exitcode == -signal.SIGKILL


def test_sigterm_fails_the_trial_and_kills_the_run(workdir, tiny_bananas):
    worker = start_sweep(workdir, tiny_bananas, "--trials", "2", *SLOW)
    wait_for(first_epoch_written(workdir))
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode != 0, out
    trial = load().trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted by signal SIGTERM"
    assert "failed with parameters" in out and "Traceback" not in out, out  # Optuna's one line, no traceback
    statuses = {r.data.tags.get("role", "trial"): r.info.status for r in runs()}
    assert statuses == {"trial": "KILLED", "sweep": "KILLED"}
    assert not any((workdir / "outputs" / "state").glob("*/trial-0"))  # never retried: its states are gone

    resumed = subprocess.run([sys.executable, CLI, *sweep_args(tiny_bananas, "--trials", "2", *SLOW)], cwd=workdir,
                             env=fast_heartbeat_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = load().trials  # the failed control is queued again: the study keeps its baseline
    assert [(t.state.name, bool(t.user_attrs.get("control"))) for t in trials] == [
        ("FAIL", True), ("COMPLETE", True), ("COMPLETE", False)]


def test_a_setting_cut_by_sigterm_is_measured_when_the_sweep_resumes(workdir, tiny_bananas):
    """Not only the control: trial 1's setting, interrupted, is run again by the resumed sweep (Optuna would
    otherwise move on; a grid would lose the point for good), and no more trials than --trials are finished."""
    worker = start_sweep(workdir, tiny_bananas, "--trials", "2", *SLOW)
    wait_for(lambda: any((workdir / "outputs" / "state").glob("*/trial-1/epoch-0000.pt")), timeout=300)
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)
    cut = load().trials[1]
    assert cut.state.name == "FAIL" and cut.user_attrs["fail_reason"] == "interrupted by signal SIGTERM"

    resumed = subprocess.run([sys.executable, CLI, *sweep_args(tiny_bananas, "--trials", "2", *SLOW)], cwd=workdir,
                             env=fast_heartbeat_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    finished = [t for t in load().trials if t.state.name == "COMPLETE"]
    assert len(finished) == 2 and finished[1].params == cut.params, [(t.number, t.params) for t in load().trials]
    assert finished[1].system_attrs["failed_trial"] == 1


def test_truncated_epoch_state_falls_back_to_the_previous_one(tmp_path):
    for epoch in range(3):
        save_epoch_state(tmp_path, epoch, {"weights": torch.full((4,), float(epoch))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]
    newest = tmp_path / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[:40])  # a write cut short
    state = load_latest_epoch_state(tmp_path)
    assert state["epoch"] == 1 and state["weights"].tolist() == [1.0] * 4


def test_nan_loss_fails_the_trial_with_its_step_and_the_sweep_goes_on(workdir, tiny_bananas, monkeypatch):
    real = pipeline.training.step.pack_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2 + 2:  # trial 0 takes 2 steps (8 images, batch 4); trial 1 goes bad at its second
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(pipeline.training.step, "pack_loss", poisoned)
    result = runner.invoke(app, sweep_args(tiny_bananas, "--trials", "3", "--json"))
    assert result.exit_code == 0, result.output
    trials = load().trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "non-finite loss" in trials[1].user_attrs["fail_reason"] and "epoch 0, step 1" in trials[1].user_attrs["fail_reason"]
    failed_run = next(r for r in runs() if r.data.tags.get("trial_number") == "1")
    assert failed_run.info.status == "FAILED" and "non-finite" in failed_run.data.tags["end_reason"]


def test_a_sweep_whose_every_trial_fails_exits_non_zero_with_the_first_failure(workdir, tiny_bananas, monkeypatch):
    """Nothing completed, so nothing to compare: no verdict sentence, exit 1, the parent run FAILED."""
    real = pipeline.training.step.pack_loss

    def always_nan(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(pipeline.training.step, "pack_loss", always_nan)
    result = runner.invoke(app, sweep_args(tiny_bananas, "--trials", "2", "--json"))
    assert result.exit_code == 1, result.output
    assert "Sweep failed: no trial completed" in plain(result.output) and "non-finite loss" in result.output
    assert "Verdict" not in result.output
    assert {t.state.name for t in load().trials} == {"FAIL"}
    [parent] = [r for r in runs() if r.data.tags.get("role") == "sweep"]
    assert parent.info.status == "FAILED"


def test_ctrl_c_says_that_the_same_command_resumes(workdir, tiny_bananas, monkeypatch):
    import pipeline.study.sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.study.sweep, "run_worker", interrupted)
    result = runner.invoke(app, sweep_args(tiny_bananas, "--trials", "1", "--decide"))
    assert result.exit_code == 130
    assert "Run the same command again to resume" in plain(result.output) and "packs are kept" in plain(result.output)


def test_a_hung_trial_times_out_and_the_sweep_goes_on(workdir, tiny_bananas, monkeypatch):
    real = pipeline.training.run.fit
    calls = {"n": 0}

    def hangs_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            time.sleep(3600)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.training.run, "fit", hangs_once)
    result = runner.invoke(app, sweep_args(tiny_bananas, "--trials", "2", "--trial-timeout", "15", "--json"))
    assert result.exit_code == 0, result.output
    trials = load().trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1].user_attrs["fail_reason"].startswith("TrialTimeout: timeout: the trial ran past 15 s")


def test_a_worker_whose_trial_another_worker_failed_as_stale_goes_on(workdir, tiny_bananas, monkeypatch):
    """A worker whose heartbeats stopped reaching the store (a suspended machine, a starved thread) finds its
    trial failed and queued again by another worker; Optuna then raises out of optimize. It drops the attempt."""
    real = pipeline.training.run.fit
    calls = {"n": 0}

    def taken_over_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # as another worker's fail_stale_trials would: fail it, then retry it
            study = load()
            trial = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))[0]
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study._storage.get_trial(trial._trial_id))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.training.run, "fit", taken_over_once)
    result = runner.invoke(app, sweep_args(tiny_bananas, "--trials", "2", "--json"))
    assert result.exit_code == 0, result.output
    trials = load().trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["root_trial"] == 1
    taken_over = next(r for r in runs() if r.data.tags.get("trial_number") == "1")
    assert taken_over.info.status == "FAILED"


def write_coco(root: Path, val_annotations: bool):
    from PIL import Image
    root.mkdir()
    images, anns = [], []
    for i in range(4):
        Image.new("RGB", (64, 64), (i * 40, 90, 20)).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 8, 30, 30], "area": 900, "iscrowd": 0})
    cats = [{"id": 1, "name": "thing"}]
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    val = {"images": images, "annotations": anns if val_annotations else [], "categories": cats}
    (root / "val.json").write_text(json.dumps(val))


def test_a_degenerate_evaluation_set_is_refused_before_any_store(workdir):
    write_coco(workdir / "coco", val_annotations=False)
    result = runner.invoke(app, ["sweep", "focal-loss", "--dataset", str(workdir / "coco"), *tiny_args()])
    assert result.exit_code == 2 and "val split has no annotations" in plain(result.output)
    assert not list(workdir.glob("*.db"))


def test_bad_data_names_the_file_and_line_and_creates_no_store(workdir, tiny_bananas, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bananas, broken)
    label = broken / "bananas_train" / "label.csv"
    lines = label.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 2)[0] + ",-5,9999"  # an impossible box on line 4
    label.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, sweep_args(broken))
    assert result.exit_code == 2 and "label.csv:4" in plain(result.output).replace(" ", "")
    assert not list(workdir.glob("*.db"))
    skipped = runner.invoke(app, ["train", "--dataset", str(broken), "--device", "cpu", *tiny_args(),
                                  "--skip-invalid", "--json"])
    assert skipped.exit_code == 0 and "skipped 1 invalid train" in skipped.output


def test_four_workers_started_at_once_on_fresh_sqlite(workdir, tiny_bananas):
    # the default heartbeat grace: four workers on two loaded cores can miss the fast one (a live trial taken over)
    procs = [start_sweep(workdir, tiny_bananas, "--trials", "5", env=dict(os.environ)) for _ in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    failed = [out[-4000:] for p, out in zip(procs, outputs) if p.returncode != 0]
    assert not failed, "\n----\n".join(failed)
    trials = load().trials
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    assert sum(bool(t.user_attrs.get("control")) for t in trials) == 1
    numbers = [r.data.tags["trial_number"] for r in runs() if "trial_number" in r.data.tags]
    assert sorted(numbers) == ["0", "1", "2", "3", "4"]  # one MLflow run per trial, no duplicates


def test_an_interrupt_inside_torch_save_propagates_as_the_interrupt_and_leaves_no_file(tmp_path, monkeypatch):
    """torch.save's zip writer turns a Ctrl-C that lands inside it into a RuntimeError on its way out."""
    import pipeline.model.checkpoint as checkpoint

    def interrupted_save(obj, f):
        try:
            raise KeyboardInterrupt("signal SIGTERM")
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2981120 vs 2981016")

    monkeypatch.setattr(checkpoint.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        checkpoint.atomic_save({"x": 1}, tmp_path / "state.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_signal_whose_interrupt_python_dropped_still_ends_the_command(monkeypatch):
    """Raised inside a weakref callback (where SQLAlchemy cleans up), the interrupt is dropped by Python, quietly;
    the next safe point raises it again, and so does the end of the block if no safe point came."""
    import gc
    import weakref

    from pipeline import interrupts

    class Pooled:
        pass

    def drop_an_interrupt():
        obj = Pooled()
        ref = weakref.ref(obj, lambda ref: interrupts._raise_interrupt(signal.SIGTERM, None))  # dropped by Python
        del obj
        gc.collect()
        assert ref() is None

    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"), interrupts.sigterm_as_interrupt():
        drop_an_interrupt()
        interrupts.raise_if_interrupted()  # a training batch, say
    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"), interrupts.sigterm_as_interrupt():
        drop_an_interrupt()  # no safe point after it: the block's end raises
    with interrupts.sigterm_as_interrupt():  # the next command starts clean
        interrupts.raise_if_interrupted()


def test_a_signal_during_a_store_write_is_raised_when_the_write_is_whole(tmp_path):
    """SIGTERM in the middle of an MLflow write: the write completes (no SQLite lock left held), the interrupt
    comes right after it, and the run ends KILLED with what was written."""
    import os

    from pipeline import interrupts
    from pipeline.tracking import MlflowTracker, MlflowReader

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tracker = MlflowTracker("signals", uri=uri)
    real_log_batch = tracker.client._client.log_batch

    def log_batch_hit_by_a_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, halfway through the call
        return real_log_batch(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"), interrupts.sigterm_as_interrupt():
        with tracker.run("hit") as run:
            tracker.client._client.log_batch = log_batch_hit_by_a_signal
            run.log_metrics({"train/loss": 0.5}, step=1)
            tracker.client._client.log_batch = real_log_batch
            pytest.fail("the interrupt must come right after the write")
    [record] = MlflowReader(uri).find_runs("signals")
    assert record.status == "KILLED" and record.metrics == {"train/loss": 0.5}


def test_a_signal_during_an_optuna_store_read_leaves_no_lock_held(tmp_path, monkeypatch):
    """Ctrl-C after a read's statement ran and before its rows were read: on Python 3.11 the statement stays
    active, holding SQLite's read lock, as long as the interrupt's traceback lives (see WholeCallsStorage: a
    Ctrl-C'd sweep hung in CI so). Optuna's bare RDBStorage leaves the lock held (this test fails with it)."""
    import sqlalchemy.orm.loading

    from pipeline import interrupts
    from pipeline.study.optuna_study import open_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "signals")
    trial_id = storage.create_new_trial(study_id)
    read_rows = sqlalchemy.orm.loading.instances

    def signal_before_the_rows_are_read(*args, **kwargs):
        monkeypatch.setattr(sqlalchemy.orm.loading, "instances", read_rows)
        os.kill(os.getpid(), signal.SIGINT)
        return read_rows(*args, **kwargs)
    monkeypatch.setattr(sqlalchemy.orm.loading, "instances", signal_before_the_rows_are_read)
    with pytest.raises(KeyboardInterrupt) as interrupted, interrupts.sigterm_as_interrupt():
        storage.get_all_trials(study_id)
    assert interrupted.traceback  # alive, as in the parent at exit
    another_process = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 1}})
    another_process.set_trial_user_attr(trial_id, "fail_reason", "interrupted")  # "database is locked" if held


def test_a_signal_during_an_optuna_store_write_is_raised_when_the_write_is_whole(tmp_path):
    """SIGTERM between a write's statement and its commit: the write is committed and the interrupt comes after it,
    as for MLflow's writes. Optuna's bare RDBStorage lets the interrupt cut the write (this test fails with it)."""
    from sqlalchemy import event

    from pipeline import interrupts
    from pipeline.study.optuna_study import open_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "signals")
    trial_id = storage.create_new_trial(study_id)

    def signal_after_the_insert(conn, cursor, statement, *args):
        if statement.lstrip().startswith("INSERT INTO trial_user_attributes"):
            os.kill(os.getpid(), signal.SIGTERM)  # delivered here: the row is written, not yet committed
    event.listen(storage.engine, "after_cursor_execute", signal_after_the_insert)
    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"), interrupts.sigterm_as_interrupt():
        storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted")
    event.remove(storage.engine, "after_cursor_execute", signal_after_the_insert)
    another_process = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 1}})
    assert another_process.get_trial(trial_id).user_attrs["fail_reason"] == "interrupted"
    another_process.set_trial_user_attr(trial_id, "next", 1)  # no lock left held


def test_a_signal_while_a_run_is_created_leaves_it_killed_not_running(tmp_path):
    """SIGTERM inside the call that creates a run (CI saw it: a worker's trial run stayed RUNNING after a Ctrl-C):
    the run exists when the interrupt is raised, so it is closed KILLED."""
    import os

    from pipeline import interrupts
    from pipeline.tracking import MlflowReader, MlflowTracker

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tracker = MlflowTracker("signals", uri=uri)
    real_create_run = tracker.client._client.create_run

    def create_run_hit_by_a_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, while the run is being created
        return real_create_run(*args, **kwargs)

    tracker.client._client.create_run = create_run_hit_by_a_signal
    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"), interrupts.sigterm_as_interrupt():
        with tracker.run("hit", params={"lr": 0.4}):
            pytest.fail("the interrupt must come before the run's body")
    [record] = MlflowReader(uri).find_runs("signals")
    assert record.status == "KILLED"


def test_a_store_write_after_an_interrupt_is_not_interrupted_again():
    """The closing writes that follow an interrupt (a run's KILLED status) run; only a new signal stops them."""
    import os

    from pipeline import interrupts

    closed = []
    with pytest.raises(KeyboardInterrupt), interrupts.sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            with interrupts.deferred():
                pass
            closed.append("status")
            raise
    assert closed == ["status"]


def test_a_trial_timeout_waits_for_the_store_write_it_falls_in():
    import time

    from pipeline import interrupts
    from pipeline.study.faults import TrialTimeout, deadline

    written = []
    with pytest.raises(TrialTimeout, match="ran past 0.05 s"), deadline(0.05):
        with interrupts.deferred():
            time.sleep(0.3)  # the alarm rings in here
            written.append("whole")
        pytest.fail("the timeout must come right after the write")
    assert written == ["whole"]


def test_a_trial_timeout_that_falls_in_a_failing_store_call_is_not_lost():
    """The alarm rings once: were its timeout dropped with the call's error, the trial would run on unbounded."""
    import time

    from pipeline import interrupts
    from pipeline.study.faults import TrialTimeout, deadline

    with pytest.raises(TrialTimeout) as raised, deadline(0.05):
        with interrupts.deferred():
            time.sleep(0.3)  # the alarm rings in here
            raise OSError("database is locked")
    assert isinstance(raised.value.__context__, OSError)


def test_a_second_decider_on_the_same_study_refuses_naming_the_first(workdir, tiny_bananas):
    """Two `--decide` at once: the second refuses at once, naming the first's pid; the first trains every pack
    once and keeps every seed."""
    args = ["sweep", "smooth-l1", "--dataset", str(tiny_bananas), "--device", "cpu", *tiny_args(), "--trials", "2",
            "--decide", "--seeds", "1", "--max-seeds", "8", "--delta", "0.0001"]
    first = subprocess.Popen([sys.executable, CLI, *args], cwd=workdir, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)

    def deciding():
        try:
            return "decider" in load("smooth-l1-quick").user_attrs
        except Exception:  # not created yet, or the store busy
            return False
    wait_for(deciding, timeout=240)
    second = subprocess.run([sys.executable, CLI, *args], cwd=workdir, capture_output=True, text=True, timeout=240)
    out = plain(second.stdout + second.stderr)
    assert second.returncode == 2 and f"being decided by pid {first.pid}" in out, out
    assert first.wait(timeout=300) == 0, first.stdout.read()
    verdict_runs = [r.data.tags["mlflow.runName"] for r in runs("smooth-l1-quick") if r.data.tags.get("role") == "verdict"]
    assert len(verdict_runs) == len(set(verdict_runs))  # no pack trained twice
    kept = load("smooth-l1-quick").user_attrs["verdict_packs"]
    record = load("smooth-l1-quick").user_attrs["verdict_record"]
    seeds = {str(s) for s in record["candidates"][0]["seeds"]}
    assert all(seeds <= set(entry["scores"]) for entry in kept.values())


def test_the_decision_lock_on_sqlite_is_per_study_and_freed_by_its_holder(workdir):
    from pipeline.study.decision_lock import DecisionHeld, decision_lock

    url = "sqlite:///optuna.db"
    one = optuna.create_study(storage=url, study_name="lock-one")
    two = optuna.create_study(storage=url, study_name="lock-two")
    with decision_lock(url, one):
        with pytest.raises(DecisionHeld, match=rf"study lock-one: its verdict is being decided by pid {os.getpid()} on "):
            with decision_lock(url, one):
                pass
        with decision_lock(url, two):
            pass
    with decision_lock(url, one):
        pass
