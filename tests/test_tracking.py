import pytest

from pipeline.tracking import MemoryTracker, MlflowTracker, artifacts_elsewhere


def test_memory_run_statuses():
    tracker = MemoryTracker()
    with tracker.run("ok", params={"lr": 0.2}) as run:
        run.log_metrics({"val/map": 0.5}, step=1)
    with pytest.raises(RuntimeError):
        with tracker.run("boom"):
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("stopped"):
            raise KeyboardInterrupt
    assert [r.status for r in tracker.runs] == ["FINISHED", "FAILED", "KILLED"]
    assert tracker.runs[0].params == {"lr": "0.2"} and tracker.runs[0].metrics == {"val/map": [(1, 0.5)]}


def test_mlflow_runs_are_always_closed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker("test", uri=uri)
    with tracker.run("parent", params={"a": 1, "b": None}) as parent:
        with tracker.run("child", parent_run_id=parent.run_id, tags={"trial": 3}) as child:
            child.log_metrics({"val/map": 0.25, "train/loss": 1.5}, step=2)
            (tmp_path / "f.txt").write_text("x")
            child.log_artifact(tmp_path / "f.txt")
        with pytest.raises(ValueError):
            with tracker.run("failing", parent_run_id=parent.run_id) as failing:
                raise ValueError("bad")
    client = MlflowClient(uri)
    got_parent, got_child, got_failing = (client.get_run(r.run_id) for r in (parent, child, failing))
    assert got_parent.info.status == "FINISHED" and got_parent.data.params == {"a": "1", "b": "None"}
    assert got_child.info.status == "FINISHED" and got_child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert got_child.data.metrics == {"val/map": 0.25, "train/loss": 1.5} and got_child.data.tags["trial"] == "3"
    assert [a.path for a in client.list_artifacts(child.run_id)] == ["f.txt"]
    assert got_failing.info.status == "FAILED"


def test_a_tag_named_in_words_mlflow_refuses_is_kept_under_a_key_it_takes(tmp_path):
    """combined-additivity's contrast is named with parentheses, and MLflow refused its tag after the whole design
    had been decided; MemoryRun keys tags as MLflow would, so tests on it see the same keys."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import MemoryRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "contrast: additivity (all three minus the sum of the single effects), γ × 2"
    with MlflowTracker("test", uri=uri).run("parent") as parent:
        parent.set_tags({name: "undecided"})
    tags = MlflowClient(uri).get_run(parent.run_id).data.tags
    assert tags["contrast: additivity all three minus the sum of the single effects γ 2"] == "undecided"
    memory = MemoryRun("x", "parent")
    memory.set_tags({name: "undecided"})
    assert set(memory.tags) & set(tags) == {"contrast: additivity all three minus the sum of the single effects γ 2"}


def test_runs_whose_process_is_gone_are_closed_failed(tmp_path):
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker("test", uri=uri)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    client = MlflowClient(uri)
    with tracker.run("alive") as alive:  # this process: left alone
        pass
    client.update_run(alive.run_id, status="RUNNING")
    orphan = client.create_run(tracker.experiment_id, run_name="killed",
                               tags={"host": os.uname().nodename, "pid": str(gone.pid), "trial_state": "RUNNING"})
    elsewhere = client.create_run(tracker.experiment_id, run_name="other host",
                                  tags={"host": "another-machine", "pid": str(gone.pid)})
    assert tracker.close_orphans() == [orphan.info.run_id]
    closed = client.get_run(orphan.info.run_id)
    assert closed.info.status == "FAILED" and closed.data.tags["trial_state"] == "FAIL"
    assert f"pid {gone.pid}" in closed.data.tags["end_reason"]
    assert client.get_run(alive.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"
    assert client.get_run(alive.run_id).data.tags["pid"] == str(os.getpid())


def test_a_finished_run_of_a_trial_that_optuna_failed_is_marked_failed(tmp_path):
    """A process killed between its run's end and Optuna's tell leaves a FINISHED, COMPLETE-tagged run for
    a trial that the heartbeat then fails (and retries): the next sweep's reconciliation says so on the run."""
    import optuna
    from mlflow.tracking import MlflowClient

    from pipeline.study.faults import reconcile_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker("s", uri=uri)
    study = optuna.create_study(study_name="s")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(value=0.5))
    runs = {}
    for number in (0, 1):
        with tracker.run(f"trial-{number}", tags={"study": "s", "trial_number": number}) as run:
            run.set_tags({"trial_state": "COMPLETE"})
        runs[number] = run.run_id
    assert reconcile_runs(study, tracker) == [runs[0]]
    client = MlflowClient(uri)
    failed, kept = client.get_run(runs[0]), client.get_run(runs[1])
    assert failed.info.status == "FAILED" and failed.data.tags["trial_state"] == "FAIL"
    assert "failed in the Optuna study" in failed.data.tags["end_reason"]
    assert kept.info.status == "FINISHED" and kept.data.tags["trial_state"] == "COMPLETE"


def test_a_copied_project_folder_refuses_to_write_into_the_original(tmp_path, monkeypatch):
    """MLflow records artifact roots as absolute paths: a copy's store points into the original folder. Every
    command that writes refuses there, naming both folders, and nothing in the original changes."""
    import shutil

    from typer.testing import CliRunner

    from cli import app
    from conftest import plain

    original, copy = tmp_path / "project", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = MlflowTracker("smooth-l1-quick")
    with tracker.run("a run") as run:
        (original / "note.txt").write_text("kept")
        run.log_artifact(original / "note.txt")
    assert artifacts_elsewhere("sqlite:///mlflow.db") is None  # at home: fine
    shutil.copytree(original, copy)
    before = sorted((p.relative_to(original), p.stat().st_mtime_ns) for p in original.rglob("*"))
    monkeypatch.chdir(copy)
    refused = CliRunner().invoke(app, ["report", "all"])
    assert refused.exit_code == 2
    text = plain(refused.output)
    assert "keeps the artifacts of experiment 'smooth-l1-quick' in" in text and "outside this folder" in text
    assert f"{original}/mlartifacts/smooth-l1-quick" in text.replace(" ", "")
    assert sorted((p.relative_to(original), p.stat().st_mtime_ns) for p in original.rglob("*")) == before
