"""Choosing the study: list the studies in an Optuna storage and pick the one a report is about."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.sqlite_files import sqlite_path
from pipeline.study.kept_packs import SHARED_CONTROLS


class ReportError(ValueError):
    """A report that cannot be made: the message says why and what exists."""


def _check_storage(storage: str) -> None:
    path = sqlite_path(storage)
    if path is not None:
        if not path.exists():
            raise ReportError(f"no Optuna storage at {path.resolve()}: run `python cli.py sweep VARIANT` first, "
                              "or pass the --storage the sweep used")


def list_studies(storage: str) -> list[dict[str, Any]]:
    """name, variant, profile and trial counts of every study in the storage."""
    _check_storage(storage)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name == SHARED_CONTROLS:  # the verdicts' shared control seeds: no search of its own
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        rows.append({"name": summary.study_name, "variant": summary.user_attrs.get("variant"),
                     "profile": summary.user_attrs.get("profile"), "n_trials": len(states),
                     "n_complete": sum(s == TrialState.COMPLETE for s in states)})
    return rows


def _describe(studies: list[dict[str, Any]]) -> str:
    if not studies:
        return "the storage holds no study"
    return "studies there: " + "; ".join(f"{s['name']} (variant {s['variant']}, {s['n_complete']} complete)"
                                         for s in studies)


def pick_study(target: str, storage: str, study_name: str | None = None) -> tuple[optuna.Study, str]:
    """The study to report on, and a sentence saying how it was chosen."""
    studies = list_studies(storage)
    if study_name is None and target in {s["name"] for s in studies}:
        study_name = target
    if study_name is not None:
        if study_name not in {s["name"] for s in studies}:
            raise ReportError(f"no study named {study_name!r} in {storage}; {_describe(studies)}")
        return optuna.load_study(study_name=study_name, storage=storage), f"Study `{study_name}`, as asked."
    matches = sorted((s for s in studies if s["variant"] == target), key=lambda s: -s["n_complete"])
    if not matches:
        raise ReportError(f"no study of variant {target!r} in {storage}; {_describe(studies)}")
    chosen = matches[0]
    note = f"Study `{chosen['name']}`."
    if len(matches) > 1:
        others = ", ".join(f"`{s['name']}` ({s['n_complete']} complete)" for s in matches[1:])
        note = (f"Study `{chosen['name']}`: of the studies of `{target}`, it has the most complete trials "
                f"({chosen['n_complete']}); also there: {others}. Pass --study-name to pick another.")
    return optuna.load_study(study_name=chosen["name"], storage=storage), note
