"""Scale-out on real servers: PostgreSQL as the Optuna storage, and an `mlflow server` as the tracking store.

The fixtures start throwaway servers on loopback; .ci/run installs PostgreSQL with apt-get.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import tiny_args
from conftest import CLI, free_port, wait_for
from test_reliability import fast_heartbeat_env

pytestmark = pytest.mark.slow
runner = CliRunner()


def pg_bin(name: str) -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return found[-1] if found else None


def as_postgres(*cmd):
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def postgres_url():
    if pg_bin("initdb") is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it with apt-get)")
    # not under pytest's tmp folder: as root that is private, and the server runs as the postgres user
    data = Path(tempfile.mkdtemp(prefix="tinyssd-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = free_port()
    as_postgres(pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres")
    as_postgres(pg_bin("pg_ctl"), "-D", data, "-w", "-l", data / "log",
                "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    as_postgres(pg_bin("createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "tinyssd")
    yield f"postgresql://postgres@127.0.0.1:{port}/tinyssd"
    as_postgres(pg_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop")
    shutil.rmtree(data, ignore_errors=True)


def sweep_args(data, storage, *extra):
    return ["sweep", "focal-loss", "--dataset", str(data), "--device", "cpu", *tiny_args(), "--no-prune",
            "--storage", storage, *extra]


def test_postgres_two_workers_then_kill_and_resume(postgres_url, workdir, tiny_bananas):
    done = runner.invoke(app, sweep_args(tiny_bananas, postgres_url, "--trials", "4", "--workers", "2",
                                         "--study-name", "pg-workers"))
    assert done.exit_code == 0, done.output
    trials = optuna.load_study(study_name="pg-workers", storage=postgres_url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)

    args = sweep_args(tiny_bananas, postgres_url, "--trials", "2", "--study-name", "pg-kill",
                      "--set", "epochs=6", "--set", "train_images=12")
    worker = subprocess.Popen([sys.executable, CLI, *args], cwd=workdir, env=fast_heartbeat_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any((workdir / "outputs" / "state").glob("pg-kill/trial-0/epoch-0000.pt")))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(4)  # past the heartbeat grace period
    resumed = subprocess.run([sys.executable, CLI, *args], cwd=workdir, env=fast_heartbeat_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    states = [t.state.name for t in optuna.load_study(study_name="pg-kill", storage=postgres_url).trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 2 and len(states) == 3


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False
    try:
        wait_for(healthy, timeout=120)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def rest(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def test_sweep_against_an_mlflow_tracking_server(mlflow_server, workdir, tiny_bananas, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = runner.invoke(app, sweep_args(tiny_bananas, "sqlite:///optuna.db", "--trials", "2", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert not (workdir / "mlflow.db").exists()  # everything went to the server
    experiment = json.loads(urllib.request.urlopen(
        f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=focal-loss-quick").read())
    assert experiment["experiment"]["experiment_id"] == summary["mlflow_experiment_id"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [summary["mlflow_experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    children = [(r, t) for r, t in zip(runs, tags) if "trial_number" in t]
    assert len(runs) == 3 and len(children) == 2
    for run, run_tags in children:
        assert run_tags["mlflow.parentRunId"] == summary["parent_run_id"]
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert params["image_size"] == "64" and {"val/map", "train/loss", "final/val/map"} <= metrics


def test_the_decision_lock_is_a_postgres_advisory_lock_released_with_its_holder(postgres_url):
    """On PostgreSQL, as on SQLite: a second decider of the same study is refused, naming the first; another
    study is not; the lock is free again once the first lets go."""
    import optuna

    from pipeline.study.decision_lock import DecisionHeld, decision_lock

    one = optuna.create_study(storage=postgres_url, study_name="lock-one", load_if_exists=True)
    two = optuna.create_study(storage=postgres_url, study_name="lock-two", load_if_exists=True)
    with decision_lock(postgres_url, one):
        with pytest.raises(DecisionHeld, match=rf"study lock-one: its verdict is being decided by pid {os.getpid()}"):
            with decision_lock(postgres_url, one):
                pass
        with decision_lock(postgres_url, two):  # another study's verdict is another lock
            pass
    with decision_lock(postgres_url, one):  # released with its holder's connection
        pass
