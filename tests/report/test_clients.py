"""The same story in every client: after `sweep --decide`, the MLflow UI's page of the sweep's parent run and
Optuna Dashboard's study note, rendered in headless Chromium, say the verdict in the terminal's words; and the
metric columns MLflow's runs table offers are the headline metrics only."""

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import cli
from cli import app
from conftest import free_port, plain, tiny_args, wait_for
from pipeline.metric_names import is_headline
from pipeline.tracking import tracking_uri

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (.ci/run installs it)")]


def rendered(url: str, profile: Path) -> str:
    """The page's DOM once its scripts have run (both UIs are single-page apps that fetch their data)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom"]
    return subprocess.run([str(CHROMIUM), *flags, url], capture_output=True, text=True, timeout=120).stdout


def up(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def serving(argv: list[str], health: str, env=None):
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: up(health) or server.poll() is not None, timeout=120)
        assert server.poll() is None, f"{argv[:4]} did not start"
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_mlflow_ui_and_optuna_dashboard_show_the_terminals_verdict(workdir, tmp_path):
    from pipeline.data import generate_bananas
    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    result = CliRunner().invoke(app, ["sweep", "smooth-l1", "--dataset", str(data), "--device", "cpu", *tiny_args(),
                                      "--trials", "2", "--decide", "--seeds", "2", "--max-seeds", "2"])
    assert result.exit_code == 0, result.output
    terminal = " ".join(plain(result.output).split())
    assert "Downloading artifacts" not in terminal  # each epoch's table rows are appended without a progress bar
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("smooth-l1-quick")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("role") == "sweep"]
    sentence = parent.data.tags["mlflow.note.content"]  # the description: the terminal's verdict, its words
    claim, numbers = sentence.split(". ")[0], sentence.split(". ")[1].split(" (holds")[0]
    assert claim.startswith("Verdict: trial 1 is ") and numbers.startswith("Δ mAP ")
    assert claim in terminal and numbers in terminal
    offered = {key for r in runs if r.data.tags.get("role") != "sweep" for key in r.data.metrics}
    assert offered and all(is_headline(key) for key in offered), sorted(offered)  # the Columns menu's metrics

    port = free_port()
    argv, env = cli.ui_command(tracking_uri(), "127.0.0.1", port, 1, False)
    with serving(argv, f"http://127.0.0.1:{port}/health", env):
        page = rendered(f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs/"
                        f"{parent.info.run_id}?workflowType=machine_learning", tmp_path / "chromium-mlflow")
    assert "smooth-l1 · search + verdict" in page and sentence in page  # its name and description

    port = free_port()
    dashboard = [sys.executable, "-c", "from optuna_dashboard._cli import main; main()", "sqlite:///optuna.db",
                 "--port", str(port)]  # its console script, run by this interpreter
    with serving(dashboard, f"http://127.0.0.1:{port}/api/meta"):
        study_id = optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db")._study_id
        note = rendered(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/note", tmp_path / "chromium-optuna")
    assert sentence in note and "a candidate, not the answer" in note
