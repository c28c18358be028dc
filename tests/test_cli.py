"""End-to-end through the CLI on tiny generated data."""

import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import mlflow.artifacts
import pytest
import torch
from mlflow.tracking import MlflowClient
from pipeline.tracking import MlflowTracker, tracking_uri
from typer.testing import CliRunner

import cli
from cli import app
from conftest import CLI, plain, tiny_args, wait_for
from pipeline.config import PROFILES

runner = CliRunner()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_train_logs_one_complete_mlflow_run(workdir, tiny_bananas):
    result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--device", "cpu", *tiny_args(),
                                 "--set", "epochs=2", "--json"])
    assert result.exit_code == 0, result.output
    out = last_json(result.output)
    assert 0.0 <= out["val/map"] <= 1.0 and out["train_images_per_s"] > 0
    client = MlflowClient(tracking_uri())
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["image_size"] == "64" and run.data.params["box_loss"] == "l1"
    assert run.data.params["lr"] == str(PROFILES["quick"]["lr"])
    assert "focal_gamma" not in run.data.params and "smooth_l1_sigma" not in run.data.params  # idle under CE, L1
    config = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.json",
                                                      tracking_uri=tracking_uri()))
    assert json.loads(config.read_text())["focal_gamma"] == 2.0  # the whole config is kept
    for key in ("train/loss", "train/loss_cls", "train/loss_box", "train/class_err", "train/bbox_mae",
                "val/map", "val/map50", "val/map75", "val/map_medium", "val/map_large", "val/mar100"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    timings = {k.removeprefix("timing/"): v for k, v in run.data.metrics.items() if k.startswith("timing/")}
    assert {"setup_s", "train_s", "validate_s", "artifacts_s"} <= set(timings) and timings == pytest.approx(out["timings"])
    in_the_loop = sum(v for k, v in timings.items() if k != "scoring_s")  # scoring runs beside the loop
    assert 0 < in_the_loop <= run.data.metrics["final/trial_seconds"] == pytest.approx(out["trial_seconds"])
    startup = out["startup"]  # seconds since the (here: pytest's) process started, in order
    assert 0 < startup["imports_s"] <= startup["data_loaded_s"] <= startup["tracker_ready_s"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint.pt", "val_predictions.png", "metrics.json", "pr_curve_iou50.json"} <= artifacts
    assert (workdir / "mlartifacts").is_dir() and not (workdir / "mlruns").exists()

    evaluated = runner.invoke(app, ["evaluate", out["checkpoint"], "--dataset", str(tiny_bananas), "--device", "cpu",
                                    "--detections-out", "dets.json", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert last_json(evaluated.output)["val/map"] == out["val/map"]
    assert last_json(evaluated.output)["val/voc_ap50"] == out["val/voc_ap50"]  # VOC's AP50 beside COCO's
    assert isinstance(json.loads((workdir / "dets.json").read_text()), list)
    chosen = runner.invoke(app, ["predict", out["checkpoint"], str(next((tiny_bananas / "bananas_val" / "images")
                                                                        .iterdir())), "--out", "auto.png", "--json"])
    assert chosen.exit_code == 0, chosen.output
    assert last_json(chosen.output)["threshold"] == pytest.approx(out["val/f1_threshold"])  # --threshold auto
    assert last_json(chosen.output)["threshold_source"] == "chosen by F1 on its validation split"

    image = next((tiny_bananas / "bananas_val" / "images").iterdir())
    predicted = runner.invoke(app, ["predict", out["checkpoint"], str(image), "--out", "p.png", "--threshold", "0.0"])
    assert predicted.exit_code == 0, predicted.output
    assert (workdir / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    original = image.read_bytes()  # --out the input itself: refused, the image kept
    refused = runner.invoke(app, ["predict", out["checkpoint"], str(image), "--out", str(image)])
    assert refused.exit_code == 2 and "is the input image" in plain(refused.output), refused.output
    assert image.read_bytes() == original
    refused = runner.invoke(app, ["evaluate", out["checkpoint"], "--dataset", str(tiny_bananas), "--device", "cpu",
                                  "--detections-out", str(workdir)])
    assert refused.exit_code == 2 and "is a folder; give a file name" in plain(refused.output), refused.output


@pytest.mark.parametrize("args, problem", [
    (["data", "bananas", "--split", "holdout"], "'holdout' is not one of 'train', 'val', 'test'"),
    (["predict", "x.pt", "y.png", "--threshold", "high"], "'high': give auto or a number in [0, 1]"),
    (["data", "bananas", "--image-size", "0"], "greater than or equal to 1"),
    (["data", "bananas", "--preview", "grid.txt"], "grid.txt: give a file name ending in .png"),
    (["train", "--set", "seed=99999999999999999999999"], "seed: must be in [0, 4294967295]"),
    (["sweep", "focal-loss", "--delta", "nan"], "Invalid value for '--delta': nan is not a number"),
    (["sweep", "focal-loss", "--delta", "2"], "Invalid value for '--delta': 2 is outside [0.0001, 1.0]"),
    (["sweep", "focal-loss", "--timeout", "nan"], "Invalid value for '--timeout': nan is not a number"),
    (["sweep", "focal-loss", "--dataset", "/nonexistent"], "Invalid value for --dataset: /nonexistent"),
])
def test_bad_options_are_usage_errors_before_any_work(workdir, args, problem):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and problem in plain(result.output), result.output
    assert not (workdir / "mlflow.db").exists() and not (workdir / "cache").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("args", [["train", "--device", "cuda"], ["train", "--set", "device=cuda"],
                                  ["evaluate", "x.pt", "--device", "cuda"]])
def test_cuda_without_a_gpu_is_a_usage_error_and_starts_no_run(workdir, args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "torch sees no CUDA device" in plain(result.output), result.output
    assert not (workdir / "mlflow.db").exists()


def test_an_unreadable_label_file_names_the_file(workdir, tiny_bananas, monkeypatch):
    import builtins

    from pipeline.data import DataError, load_split

    real_open = builtins.open
    csv = tiny_bananas / "bananas_train" / "label.csv"

    def refusing_open(file, *args, **kwargs):  # what the OS answers for a file without read permission
        if Path(file) == csv:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(DataError, match=rf"^{re.escape(str(csv))}: cannot read it \(Permission denied\)"):
        load_split(str(tiny_bananas), "train", 64, progress=False)


def test_same_seed_gives_identical_metrics(workdir, tiny_bananas):
    outs = []
    for _ in range(2):
        result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--device", "cpu", *tiny_args(), "--json"])
        assert result.exit_code == 0, result.output
        outs.append({k: v for k, v in last_json(result.output).items() if k.startswith(("train/", "val/"))})
    assert outs[0] == outs[1]


def test_bad_overrides_are_usage_errors_that_name_the_key(workdir, tiny_bananas):
    for pair, words in [("learning_rate=1", "learning_rate"), ("lr=nan", "lr"), ("image_size=100", "image_size"),
                        ("focal_alpha=2", "focal_alpha")]:
        result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--set", pair])
        assert result.exit_code == 2 and words in result.output, result.output
    assert not (workdir / "mlflow.db").exists()


def test_bad_data_is_a_usage_error_and_touches_no_store(workdir):
    result = runner.invoke(app, ["train", "--dataset", str(workdir / "nowhere")])
    assert result.exit_code == 2 and "nowhere" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_knobs_lists_every_knob():
    result = runner.invoke(app, ["knobs", "--json"])
    names = {row["name"] for row in json.loads(result.output)}
    assert {"box_loss", "smooth_l1_sigma", "cls_loss", "focal_gamma", "focal_alpha", "cls_weight", "box_weight",
            "loss_normalization", "neg_sampling", "neg_pos_ratio", "image_size"} <= names


def test_a_bad_flag_value_is_reported_against_that_flag(workdir, tiny_bananas):
    result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--epochs", "0"])
    assert result.exit_code == 2 and "Invalid value for --epochs: epochs: must be" in plain(result.output), result.output
    result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--epochs", "3", "--set", "epochs=0"])
    assert result.exit_code == 2 and "Invalid value for --set: epochs: must be" in plain(result.output), result.output


@pytest.mark.parametrize("command", ["sweep", "report"])
def test_a_storage_url_that_does_not_parse_is_a_usage_error(workdir, command):
    # a data set that does not exist: the storage must be refused before any data is loaded
    args = ["sweep", "focal-loss", "--dataset", str(workdir / "nowhere")] if command == "sweep" else ["report", "all"]
    result = runner.invoke(app, [*args, "--storage", "notaurl"])
    out = plain(result.output)
    assert result.exit_code == 2 and "Invalid value for --storage" in out and "nowhere" not in out, result.output
    assert not list(workdir.iterdir())  # no database, no report folder


@pytest.fixture
def other_files(workdir):
    """A real Optuna storage, a real MLflow store and a text file: what a mistyped store URL can point at."""
    import optuna

    optuna.create_study(storage=f"sqlite:///{workdir / 'optuna-real.db'}", study_name="kept")
    MlflowClient(f"sqlite:///{workdir / 'mlflow-real.db'}").create_experiment("kept")  # absolute: MLflow caches by URI
    (workdir / "notes.txt").write_text("notes\n")
    return {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}


@pytest.mark.parametrize("command", ["sweep", "report"])
@pytest.mark.parametrize("url, problem", [
    ("sqlite:///mlflow-real.db", "mlflow-real.db is an MLflow tracking store, not an Optuna study storage"),
    ("sqlite:///notes.txt", "notes.txt is not a SQLite database"),
    ("sqlite:///:memory:", "names no database file"),
    ("sqlite://", "names no database file"),
    ("sqlite:///cache", "cache is a folder"),
    ("sqlite:///notes.txt/x.db", "notes.txt is not an existing folder"),
])
def test_a_sqlite_storage_that_is_not_an_optuna_file_is_refused_untouched(workdir, other_files, command, url, problem):
    (workdir / "cache").mkdir(exist_ok=True)
    args = ["sweep", "focal-loss", "--dataset", str(workdir / "nowhere")] if command == "sweep" else ["report", "all"]
    result = runner.invoke(app, [*args, "--storage", url])
    out = plain(result.output)
    assert result.exit_code == 2 and "Invalid value for --storage:" in out and problem in out, out
    assert {name: (workdir / name).read_bytes() for name in other_files} == other_files  # not one byte written


def test_an_mlflow_store_that_is_an_optuna_file_is_refused_untouched(workdir, other_files, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///optuna-real.db")
    result = runner.invoke(app, ["train", "--dataset", str(workdir / "nowhere"), "--device", "cpu"])
    out = plain(result.output)
    assert result.exit_code == 2 and "Invalid value for MLFLOW_TRACKING_URI:" in out, out
    assert "is an Optuna study storage, not an MLflow tracking store" in out, out
    assert {name: (workdir / name).read_bytes() for name in other_files} == other_files


def test_an_unreachable_storage_is_a_usage_error_with_the_reason(workdir):
    result = runner.invoke(app, ["sweep", "focal-loss", "--dataset", str(workdir / "nowhere"),
                                 "--storage", "postgresql://user:secret@127.0.0.1:1/x"])  # nothing listens on port 1
    out = plain(result.output)
    assert result.exit_code == 2 and "Invalid value for --storage" in out and "Connection refused" in out, out
    assert "secret" not in out  # the password is masked


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is not None, reason="psycopg2 is installed")
def test_a_storage_whose_driver_is_missing_is_a_usage_error_naming_the_driver(workdir):
    result = runner.invoke(app, ["report", "all", "--storage", "postgresql+psycopg2://user@127.0.0.1:1/x"])
    out = plain(result.output)
    assert result.exit_code == 2 and "Invalid value for --storage" in out and "psycopg2" in out, out


def test_ui_runs_this_interpreters_mlflow(workdir, monkeypatch):
    calls = []
    monkeypatch.setattr("shutil.which", lambda name: None)  # no `mlflow` on PATH
    monkeypatch.setattr(cli.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    result = runner.invoke(app, ["ui", "--port", "5001"])
    assert result.exit_code == 0, result.output
    [(path, argv, env)] = calls
    assert (path, argv) == (sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                                             tracking_uri(), "--host", "127.0.0.1", "--port", "5001", "--workers", "1"])
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no job workers unless --jobs
    runner.invoke(app, ["ui", "--jobs", "--workers", "2"])
    assert calls[-1][1][-1] == "2" and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in calls[-1][2]


def test_the_ui_it_starts_is_sized_for_a_small_machine(workdir):
    """MLflow's own defaults started about 13 processes on a 2-core machine; the project's `ui` starts a few."""
    import subprocess
    import time
    import urllib.request

    from conftest import free_port
    port = free_port()
    argv, env = cli.ui_command("sqlite:///mlflow.db", "127.0.0.1", port, 1, False)
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the UI did not come up"
                time.sleep(0.5)
        group = [p for p in os.listdir("/proc") if p.isdigit() and _in_group(int(p), server.pid)]
        assert 1 <= len(group) <= 4, group  # the launcher, one web worker, and little else
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except OSError:
        return False


def test_ui_prints_a_link_to_each_experiments_runs_table(workdir, monkeypatch):
    monkeypatch.setattr(cli.os, "execve", lambda path, argv, env: None)
    assert "experiments/" not in plain(runner.invoke(app, ["ui"]).output)  # no store yet: none listed, none made
    assert not (workdir / "mlflow.db").exists()
    with MlflowTracker("focal-loss-quick").run("trial 0"):
        pass
    experiment_id = MlflowClient(tracking_uri()).get_experiment_by_name("focal-loss-quick").experiment_id
    out = plain(runner.invoke(app, ["ui", "--port", "5001"]).output)
    assert (f"focal-loss-quick: http://127.0.0.1:5001/#/experiments/{experiment_id}?workflowType=machine_learning"
            in out), out
    assert "Default" not in out
    ipv6 = plain(runner.invoke(app, ["ui", "--host", "::1"]).output)
    assert f"http://[::1]:5000/#/experiments/{experiment_id}?workflowType=machine_learning" in ipv6
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://nobody@127.0.0.1:1/none")  # not reached before the UI
    remote = runner.invoke(app, ["ui"])
    assert remote.exit_code == 0 and "MLflow UI on" in remote.output and "experiments/" not in remote.output


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_sigterm_during_train_ends_its_run_killed(workdir, tiny_bananas):
    uri = f"sqlite:///{workdir / 'store.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # the store's schema is made here, not by two processes at once
    with open(workdir / "train.log", "w") as log:  # a file, not a pipe that nobody reads
        proc = subprocess.Popen([sys.executable, CLI, "train", "--dataset", str(tiny_bananas), "--device", "cpu",
                                 *tiny_args(), "--set", "epochs=200"], cwd=workdir, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    try:
        wait_for(lambda: proc.poll() is not None or any(  # inside the run's first epochs
            client.get_metric_history(r.info.run_id, "train/loss") for r in all_runs(client)))
        assert proc.poll() is None, (workdir / "train.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
    [run] = all_runs(client)
    assert run.info.status == "KILLED", (workdir / "train.log").read_text()
    assert run.data.tags["end_reason"] == "interrupted by signal SIGTERM"



def test_a_study_name_that_is_not_plain_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sweep", "focal-loss", "--study-name", "a`b/../c", "--device", "cpu"])
    assert result.exit_code == 2 and "--study-name" in plain(result.output)
    assert not any(tmp_path.iterdir())  # refused before anything was stored


def test_a_store_left_with_a_hot_journal_by_kill_9_is_recovered_not_refused(tmp_path):
    """A process killed mid-write leaves a hot rollback journal; a read-only open cannot roll it back
    (SQLITE_READONLY_ROLLBACK), so the store check used to refuse the next run's MLflow store as unreadable."""
    from pipeline.sqlite_files import sqlite_problem

    path = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE experiments (name TEXT)")
        db.execute("INSERT INTO experiments VALUES ('kept')")
        db.commit()
    writer = ("import os, signal, sqlite3, sys\n"
              "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "db.execute('PRAGMA cache_size=1')\n"  # spill pages to the file mid-transaction
              "db.execute('BEGIN')\n"
              "db.execute('CREATE TABLE half (x TEXT)')\n"
              "for _ in range(2000): db.execute('INSERT INTO half VALUES (?)', ('x' * 1000,))\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", writer, str(path)], check=False)
    assert Path(f"{path}-journal").stat().st_size > 0  # the hot journal is there
    assert sqlite_problem(f"sqlite:///{path}", "mlflow") is None
    with closing(sqlite3.connect(path)) as db:  # rolled back: the committed row kept, the killed write gone
        assert db.execute("SELECT name FROM experiments").fetchall() == [("kept",)]
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
