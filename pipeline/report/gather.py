"""Gathering: the Optuna study and its MLflow runs (read through pipeline.tracking) become one StudyData."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from pipeline.report.trials import curve_picks, pr_picks, trials_frame
from pipeline.sqlite_files import sqlite_path
from pipeline.tracking import MlflowReader, RunRecord, tracking_uri


@dataclass
class StudyData:
    """Everything the figures and the text need, read once."""
    study: optuna.Study
    note: str  # how the study was chosen
    storage: str
    trials: pd.DataFrame  # one row per trial: what trials.csv holds
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)  # label, trial, epoch, value
    pr: pd.DataFrame = field(default_factory=pd.DataFrame)  # label, class, recall, precision
    runs: dict[int, RunRecord] = field(default_factory=dict)  # trial number → its MLflow run
    parents: list[tuple[RunRecord, dict[str, int]]] = field(default_factory=list)  # each sweep's parent, and how
    # many runs of each role (trial, verdict) are nested under it
    experiment_id: str | None = None
    tracking_uri: str = ""
    mlflow_note: str = ""  # why MLflow data is missing, if it is

    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    @property
    def space(self) -> dict[str, dict[str, Any]]:
        """The searched parameters: the study's recorded space, plus any the trials show that it lacks
        (a study recorded before describe_space walked conditional branches)."""
        space = dict(self.attrs.get("signature", {}).get("space", {}))
        for trial in self.study.get_trials(deepcopy=False):
            for name, dist in trial.distributions.items():
                space.setdefault(name, describe_distribution(dist))
        return space

    @property
    def base_config(self) -> dict[str, Any]:
        return self.attrs.get("signature", {}).get("base_config", {})

    @property
    def objective(self) -> str:
        return self.attrs.get("signature", {}).get("objective", "val/map")


def describe_distribution(dist: optuna.distributions.BaseDistribution) -> dict[str, Any]:
    """An Optuna distribution in the form the sweep records a space (pipeline.study.space.SpaceRecorder)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log, "step": dist.step}


def _open_reader() -> tuple[MlflowReader | None, str]:
    uri = tracking_uri()
    if (path := sqlite_path(uri)) is not None and not path.exists():
        return None, (f"no MLflow store at {uri} (set MLFLOW_TRACKING_URI to the sweep's store): "
                      "the figures that need run histories and artifacts are left out")
    return MlflowReader(uri), ""


def trial_runs(reader: MlflowReader, study: optuna.Study) -> dict[int, RunRecord]:
    """The MLflow run of each trial: the one its user_attrs name, else the latest tagged with its number."""
    runs = reader.find_runs(study.study_name, {"study": study.study_name})
    by_id = {r.run_id: r for r in runs}
    found: dict[int, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time_ms or 0):
        if run.tags.get("trial_number", "").isdigit():
            found[int(run.tags["trial_number"])] = run
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id in by_id:
            found[trial.number] = by_id[run_id]
    return found


def epochs_frame(reader: MlflowReader, runs: dict[int, RunRecord], picks: dict[str, int],
                 metric: str = "val/map") -> pd.DataFrame:
    """label, trial, epoch (1-based), value: the metric's history of each picked trial's run."""
    rows = [{"label": label, "trial": number, "epoch": step + 1, "value": value}
            for label, number in picks.items() if number in runs
            for step, value in reader.metric_history(runs[number].run_id, metric)]
    return pd.DataFrame(rows, columns=["label", "trial", "epoch", "value"])


def pr_frame(reader: MlflowReader, run_ids: dict[str, str]) -> pd.DataFrame:
    """label, class, recall, precision from each run's pr_curve_iou50.json (COCOeval, IoU 0.5, all areas)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, run_id in run_ids.items():
            path = reader.download_artifact(run_id, "pr_curve_iou50.json", Path(tmp) / run_id)
            if path is None:
                continue
            curves = json.loads(path.read_text())
            for name, precision in curves["precision"].items():
                rows += [{"label": label, "class": name, "recall": r, "precision": p}
                         for r, p in zip(curves["recall"], precision) if p is not None]
    return pd.DataFrame(rows, columns=["label", "class", "recall", "precision"])


def parent_runs(records: list[RunRecord]) -> list[tuple[RunRecord, dict[str, int]]]:
    """The study's parent runs, oldest first, each with the count of its nested runs by role: one sweep invocation
    is one parent, and the search's trials and a verdict's packs may sit under different ones."""
    parents = sorted((r for r in records if r.tags.get("role") == "sweep"), key=lambda r: r.start_time_ms or 0)
    counts = {p.run_id: {} for p in parents}
    for r in records:
        held = counts.get(r.tags.get("mlflow.parentRunId"))
        if held is not None:
            role = "trial" if "trial_number" in r.tags else r.tags.get("role", "other")
            held[role] = held.get(role, 0) + 1
    return [(p, counts[p.run_id]) for p in parents]


def gather(study: optuna.Study, note: str, storage: str) -> StudyData:
    """Read the study and its MLflow runs into one StudyData."""
    reader, mlflow_note = _open_reader()
    runs = trial_runs(reader, study) if reader else {}
    trials = trials_frame(study, runs)
    data = StudyData(study, note, storage, trials, runs=runs, mlflow_note=mlflow_note)
    if reader is None:
        return data
    data.tracking_uri = reader.uri
    data.experiment_id = reader.experiment_id(study.study_name)
    if data.experiment_id is None:
        data.mlflow_note = (f"the MLflow store {reader.uri} has no experiment {study.study_name!r}: the figures "
                            "that need run histories and artifacts are left out")
        return data
    data.parents = parent_runs(reader.find_runs(study.study_name))
    data.epochs = epochs_frame(reader, runs, curve_picks(trials))
    data.pr = pr_frame(reader, {label: runs[n].run_id for label, n in pr_picks(trials).items() if n in runs})
    return data
