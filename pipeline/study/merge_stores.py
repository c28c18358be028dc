"""Bring another Optuna store's studies into this one (a GPU call's store, say), so that one answer sheet shows
the exercises at every profile they were decided at. Each study is copied whole with ``optuna.copy_study``; the
store's shared controls are merged seed by seed, since both stores have that study. A study copied before from
the same source is replaced by its newer copy; a study of the target's own is never touched."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from pipeline.study.kept_packs import SHARED_CONTROLS
from pipeline.study.optuna_study import SweepError, open_storage
from pipeline.study.store_checks import check_kept_packs
from pipeline.study.storage_lock import StorageLock

COPIED_FROM = "copied_from"  # the user attribute that names the store a study was copied from
KEPT = ("verdict_packs", "secondary_packs")  # shared-controls' attributes of per-seed scores


def merge_stores(source: str, target: str) -> dict[str, list[str]]:
    """Copy every study of ``source`` into ``target``: {"copied": [...], "replaced": [...], "merged": [...]}.
    Raises SweepError, naming the study, where the target has a study of that name of its own."""
    if _same_store(source, target):
        raise SweepError(f"--storage {target} is the store being merged from: give another one")
    names = optuna.get_all_study_names(open_storage(source))
    done: dict[str, list[str]] = {"copied": [], "replaced": [], "merged": []}
    with StorageLock(target).hold():
        into = open_storage(target)
        have = set(optuna.get_all_study_names(into))
        for name in sorted(set(names) & have - {SHARED_CONTROLS}):  # every clash refused before anything is written
            _check_replaceable(optuna.load_study(study_name=name, storage=into), source)
        for name in names:
            if name == SHARED_CONTROLS and name in have:
                _merge_kept_seeds(optuna.load_study(study_name=name, storage=source),
                                  optuna.load_study(study_name=name, storage=into))
                done["merged"].append(name)
                continue
            if name in have:
                optuna.delete_study(study_name=name, storage=into)
            optuna.copy_study(from_study_name=name, from_storage=source, to_storage=into)
            copied = optuna.load_study(study_name=name, storage=into)
            copied.set_user_attr(COPIED_FROM, source)
            _end_running_trials(copied)
            done["replaced" if name in have else "copied"].append(name)
    return done


def _same_store(a: str, b: str) -> bool:
    sqlite = "sqlite:///"
    if a.startswith(sqlite) and b.startswith(sqlite):
        return Path(a.removeprefix(sqlite)).resolve() == Path(b.removeprefix(sqlite)).resolve()
    return a == b


def _check_replaceable(study: optuna.Study, source: str) -> None:
    if not _same_store(study.user_attrs.get(COPIED_FROM, ""), source):
        raise SweepError(f"study {study.study_name!r} is in both stores, and the target's own was not copied from "
                         f"{source}: nothing was merged. Rename one of them (sweep --study-name) first")


def _merge_kept_seeds(source: optuna.Study, target: optuna.Study) -> None:
    """The source's kept seeds added to the target's, seed by seed; the target keeps its own score for a seed
    both hold (the digest in each name covers the device and everything that shapes the run, so a name held by
    both is the same run)."""
    for attr in KEPT:
        theirs = check_kept_packs(source.user_attrs.get(attr, {}), source.study_name, attr)
        ours = check_kept_packs(target.user_attrs.get(attr, {}), target.study_name, attr)
        merged = dict(ours)
        for name, entry in theirs.items():
            old = ours.get(name, {"scores": {}, "seconds": {}})
            merged[name] = {"scores": {**entry["scores"], **old["scores"]},
                            "seconds": {**entry["seconds"], **old["seconds"]}}
        if merged != ours:
            target.set_user_attr(attr, merged)


def _end_running_trials(study: optuna.Study) -> None:
    """A trial the source had running (a call cut short) is no process's in the copy: it ends FAIL, or it would
    look running forever (its heartbeat stays behind in the source)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
