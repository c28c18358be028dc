"""Experiment tracking. The only module that imports mlflow.

Training and evaluation take a ``Tracker``; ``MlflowTracker`` writes to an MLflow store
(``sqlite:///mlflow.db`` unless MLFLOW_TRACKING_URI says otherwise) and ``MemoryTracker``
records in memory for tests. A run is always closed: FINISHED when its block ends
normally, KILLED on an interrupt, FAILED on any other exception. Every run carries its host and
process id, so a run whose process was killed outright (kill -9, power loss) is found and closed
as FAILED by the next command that uses the experiment (:meth:`MlflowTracker.close_orphans`).
"""

from __future__ import annotations

import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
import contextlib
from pathlib import Path
from typing import Any, Iterator

from pipeline.interrupts import deferred, run_whole
from pipeline.sqlite_files import DEFAULT_TRACKING_URI, sqlite_path

PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI reads to nest a run under its parent
# MLflow 3's UI opens an experiment without a kind in its GenAI view (traces, judges, prompts), where a new user
# sees none of the runs; this kind opens the model-training view, with the runs table.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
UI_BASE = "http://127.0.0.1:5000"  # where `python cli.py ui` serves by default
UI_VIEW = "workflowType=machine_learning"  # the same view asked for in a link, for stores made before the tag


def quiet_store_setup() -> None:
    """MLflow logs 'Creating initial MLflow database tables...' and alembic's migrations at INFO when it makes a
    store: setup noise between the user and the sweep's own lines."""
    import logging

    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def experiment_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link that opens the runs view of an experiment (or one of its runs) in the MLflow UI at ``base``."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}/{page}?{UI_VIEW}"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded store; a relative SQLite path is made absolute,
    because MLflow caches one store per URI string for the whole process."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(sqlite_path(uri).resolve())
    return uri


class _WholeCalls:
    """An MlflowClient whose every call runs whole: a Ctrl-C or SIGTERM during a call is raised when it returns,
    so no store write is cut in half (see pipeline/interrupts.py)."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        return run_whole(attr) if callable(attr) else attr


def _client(uri: str) -> _WholeCalls:
    from mlflow.tracking import MlflowClient
    return _WholeCalls(MlflowClient(tracking_uri=uri))


def tag_key(text: str) -> str:
    """``text`` as an MLflow tag key: MLflow refuses any key with a character but letters, digits, ``_ - . : /``
    and spaces (a contrast named "additivity (all three minus ...)" failed a finished design's last step)."""
    return " ".join(re.sub(r"[^\w\-.:/ ]", " ", text).split())


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


class RunHandle:
    """What code inside a run may do: log params, metrics, tags and files."""

    run_id: str
    outcome: str | None = None  # set to override the final status (e.g. a pruned trial is FINISHED)

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_table(self, columns: dict[str, list], artifact_file: str) -> None: ...


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow's download progress bars off inside: one bar per small file is noise."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def _final_status(handle: RunHandle, error: BaseException | None) -> str:
    if error is None:
        return handle.outcome or "FINISHED"
    if handle.outcome:
        return handle.outcome
    return "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"


class _MlflowRun(RunHandle):
    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params):
        from mlflow.entities import Param
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics, step=None):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags):
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(tag_key(k), str(v)) for k, v in tags.items()])

    def log_artifact(self, path, artifact_path=None):
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, columns, artifact_file):
        import pandas as pd  # MLflow's table artifact, which its UI shows as a table
        with no_progress_bars():  # appending downloads the table so far: a bar each epoch would scroll the sweep
            self.client.log_table(self.run_id, data=pd.DataFrame(columns), artifact_file=artifact_file)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside an embedded SQLite store, artifacts go to mlartifacts/ (as `mlflow ui` expects), next to the database."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides for itself
    db = sqlite_path(uri).resolve()
    return (db.parent / "mlartifacts" / experiment).as_uri()


def artifacts_elsewhere(uri: str) -> str | None:
    """Why an embedded store would write outside its own folder, or None. MLflow records each experiment's
    artifact root as an absolute path: in a project folder copied or moved elsewhere, the copy's store still
    points into the original folder, and runs made in the copy would write their artifacts there."""
    import sqlite3
    from urllib.parse import unquote, urlparse

    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None
    home = path.resolve().parent
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name, artifact_location FROM experiments WHERE experiment_id != 0").fetchall()
    except sqlite3.Error:  # not an MLflow store yet (sqlite_problem says what is wrong with it)
        return None
    for name, location in rows:
        if not location or not location.startswith("file://"):
            continue
        where = Path(unquote(urlparse(location).path))
        if not where.is_relative_to(home):
            return (f"{path} keeps the artifacts of experiment {name!r} in {where}, outside this folder ({home}): "
                    "the project folder was copied or moved, and runs made here would write into the other folder. "
                    "Run from the folder the store was made in, or give this copy a store of its own: move "
                    f"{path.name} and mlartifacts/ aside (the old runs stay readable with `mlflow ui "
                    "--backend-store-uri sqlite:///<the moved file>`).")
    return None


class MlflowTracker:
    """Runs in one MLflow experiment of the store at ``uri``."""

    def __init__(self, experiment: str = "tinyssd", uri: str | None = None):
        quiet_store_setup()
        self.uri = uri or tracking_uri()
        self.client = _client(self.uri)
        self.experiment_id = self._experiment_id(experiment)

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before the project tagged its experiments
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=_artifact_location(self.uri, name),
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # another worker created it between our two calls
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    @contextmanager
    def run(self, name: str, *, params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
            parent_run_id: str | None = None) -> Iterator[RunHandle]:
        all_tags = {"host": socket.gethostname(), "pid": str(os.getpid()), **{tag_key(k): str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        handle: _MlflowRun | None = None
        error: BaseException | None = None
        try:
            with deferred():  # an interrupt that comes while the run is created is raised here, once it can be closed
                handle = _MlflowRun(self.client, self.client.create_run(self.experiment_id, run_name=name,
                                                                        tags=all_tags).info.run_id)
            if params:
                handle.log_params(params)
            yield handle
        except BaseException as exc:
            error = exc
            raise
        finally:
            if handle is not None:
                self.client.set_terminated(handle.run_id, status=_final_status(handle, error))

    def runs(self, tag_filter: dict[str, str], status: str | None = None) -> list:
        """This experiment's runs whose tags match, and with ``status`` when given."""
        query = [f"tags.`{k}` = '{v}'" for k, v in tag_filter.items()] + ([f"attributes.status = '{status}'"] if status else [])
        return self.client.search_runs([self.experiment_id], filter_string=" and ".join(query))

    def tag_runs(self, tag_filter: dict[str, str], tags: dict[str, str]) -> int:
        """Set ``tags`` on every run of this experiment whose tags match; returns how many."""
        found = self.runs(tag_filter)
        for run in found:
            _MlflowRun(self.client, run.info.run_id).set_tags(tags)
        return len(found)

    def running_runs(self, tag_filter: dict[str, str]) -> list:
        return self.runs(tag_filter, "RUNNING")

    def close_stale(self, run, reason: str) -> str:
        """End a run that a killed process left RUNNING: FAILED, with the reason, and a trial's state FAIL."""
        tags = {"end_reason": reason[:5000]}
        if "trial_state" in run.data.tags:
            tags["trial_state"] = "FAIL"
        _MlflowRun(self.client, run.info.run_id).set_tags(tags)
        self.client.set_terminated(run.info.run_id, status="FAILED")
        return run.info.run_id

    def fail_stale_runs(self, tag_filter: dict[str, str], reason: str) -> list[str]:
        """Close the RUNNING runs whose tags match: what a killed worker left behind."""
        return [self.close_stale(run, reason) for run in self.running_runs(tag_filter)]

    def close_orphans(self) -> list[str]:
        """Close this experiment's RUNNING runs whose process, on this host, is gone (another host's are left alone)."""
        host = socket.gethostname()
        return [self.close_stale(run, f"its process ({host}, pid {run.data.tags['pid']}) is gone")
                for run in self.running_runs({"host": host})
                if run.data.tags.get("pid", "").isdigit() and not process_alive(int(run.data.tags["pid"]))]


@dataclass
class MemoryRun(RunHandle):
    run_id: str
    name: str
    parent_run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)
    status: str = "RUNNING"
    outcome: str | None = None

    def log_params(self, params):
        self.params.update({k: _param_value(v) for k, v in params.items()})

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            if v is not None:
                self.metrics.setdefault(k, []).append((step or 0, float(v)))

    def set_tags(self, tags):
        self.tags.update({tag_key(k): str(v) for k, v in tags.items()})  # as MLflow would take them

    def log_artifact(self, path, artifact_path=None):
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        self.artifacts += [f"{artifact_path + '/' if artifact_path else ''}{p.name}" for p in files]

    def log_table(self, columns, artifact_file):  # appended, as MLflow's log_table does
        table = self.tables.setdefault(artifact_file, {column: [] for column in columns})
        for column, values in columns.items():
            table[column] += values


class MemoryTracker:
    """Records runs in memory, with the same interface as MlflowTracker: for tests."""

    def __init__(self):
        self.runs: list[MemoryRun] = []

    @contextmanager
    def run(self, name, *, params=None, tags=None, parent_run_id=None) -> Iterator[RunHandle]:
        handle = MemoryRun(run_id=f"run{len(self.runs)}", name=name, parent_run_id=parent_run_id)
        self.runs.append(handle)
        handle.set_tags(tags or {})
        handle.log_params(params or {})
        error: BaseException | None = None
        try:
            yield handle
        except BaseException as exc:
            error = exc
            raise
        finally:
            handle.status = _final_status(handle, error)



# ---------------------------------------------------------------------------
# Reading a store back (the report): runs, metric histories and artifacts.
# Plain Python values come out, so callers never touch mlflow's own types.
# ---------------------------------------------------------------------------

@dataclass
class RunRecord:
    """What the report needs of one MLflow run."""
    run_id: str
    name: str
    status: str
    start_time_ms: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric


class MlflowReader:
    """Read-only view of the store at ``uri`` (default: :func:`tracking_uri`); never creates an experiment."""

    def __init__(self, uri: str | None = None):
        self.uri = uri or tracking_uri()
        self.client = _client(self.uri)

    def experiment_id(self, name: str) -> str | None:
        found = self.client.get_experiment_by_name(name)
        return None if found is None else found.experiment_id

    def find_runs(self, experiment_name: str, tag_filter: dict[str, str] | None = None) -> list[RunRecord]:
        """Every run of the experiment whose tags match ``tag_filter``; [] when the experiment does not exist."""
        experiment_id = self.experiment_id(experiment_name)
        if experiment_id is None:
            return []
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tag_filter or {}).items())
        return self._records([experiment_id], query)

    def experiments(self, limit: int = 10) -> list[tuple[str, str]]:
        """(name, id) of the store's most recently updated experiments, MLflow's empty "Default" left out."""
        found = self.client.search_experiments(max_results=limit + 1, order_by=["last_update_time DESC"])
        return [(e.name, e.experiment_id) for e in found if e.name != "Default"][:limit]

    def all_runs(self) -> list[RunRecord]:
        """Every run of every (active) experiment in the store."""
        return self._records([e.experiment_id for e in self.client.search_experiments()])

    def _records(self, experiment_ids: list[str], query: str = "") -> list[RunRecord]:
        if not experiment_ids:
            return []
        runs = self.client.search_runs(experiment_ids, filter_string=query, max_results=50_000)
        return [RunRecord(r.info.run_id, r.info.run_name, r.info.status, r.info.start_time, dict(r.data.tags),
                          dict(r.data.params), dict(r.data.metrics)) for r in runs]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def download_artifact(self, run_id: str, path: str, dst_dir: Path) -> Path | None:
        """A copy of the run's artifact ``path`` under ``dst_dir``; None when the run has no such file."""
        with no_progress_bars():
            try:
                return Path(self.client.download_artifacts(run_id, path, str(dst_dir)))
            except Exception:  # missing file, or a run whose artifacts were removed
                return None

    def log_artifacts_to_run(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        """Add the files of ``local_dir`` to an existing (possibly finished) run."""
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)
