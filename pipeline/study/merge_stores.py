"""Bring another Optuna store's studies into this one (a GPU call's store, say), so that one answer sheet shows
the exercises at every profile they were decided at. Each study is copied whole with ``optuna.copy_study``; the
store's shared controls are merged seed by seed, since both stores have that study. A study copied before is
replaced by the source's when the source's trials extend the copy's (a later call that resumed it); a study of the
target's own, or a copy the source would shorten, is refused before anything is written."""

from __future__ import annotations

import optuna
import sqlalchemy
from optuna.trial import TrialState

from pipeline.sqlite_files import sqlite_path
from pipeline.study.kept_packs import EMPTY, SHARED_CONTROLS, merged_entry
from pipeline.study.optuna_study import SweepError
from pipeline.study.store_checks import check_kept_packs
from pipeline.study.storage_lock import StorageLock

COPIED_FROM = "copied_from"  # the user attribute that names the store a study was copied from
KEPT = ("verdict_packs", "secondary_packs")  # shared-controls' attributes of per-seed scores
CUT_SHORT = "running in {source} when it was copied: no process's in this store"


def merge_stores(source: str, target: str) -> dict[str, list[str]]:
    """Copy every study of ``source`` into ``target``: {"copied": [...], "replaced": [...], "merged": [...]}.
    Raises SweepError, naming the study, where a study cannot be copied; nothing is written then."""
    if _same_store(source, target):
        raise SweepError(f"--storage {shown(target)} is the store being merged from: give another one")
    into = optuna.storages.RDBStorage(target)  # plain: a copied trial keeps its own worker, no heartbeat here
    names = optuna.get_all_study_names(source)
    done: dict[str, list[str]] = {"copied": [], "replaced": [], "merged": []}
    with StorageLock(target).hold():
        have = set(optuna.get_all_study_names(into))
        for name in names:  # every refusal before anything is written
            if name == SHARED_CONTROLS and name in have:
                _merged_kept_seeds(_load(name, source), _load(name, into))
            elif name in have:
                _check_replaceable(_load(name, into), _load(name, source), source)
        for name in names:
            if name == SHARED_CONTROLS and name in have:
                _keep_merged_seeds(_load(name, source), _load(name, into))
                done["merged"].append(name)
                continue
            if name in have:
                optuna.delete_study(study_name=name, storage=into)
            _copy(name, source, into)
            done["replaced" if name in have else "copied"].append(name)
    return done


def shown(url: str) -> str:
    """A storage URL fit to print and to keep: its password hidden."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def _load(name: str, storage) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _same_store(a: str, b: str) -> bool:
    path_a, path_b = sqlite_path(a), sqlite_path(b)
    if path_a is not None and path_b is not None:
        return path_a.resolve() == path_b.resolve()
    return shown(a) == shown(b)


def _copy(name: str, source: str, into: optuna.storages.RDBStorage) -> None:
    """The study copied, marked as a copy; a trial the source had running ends FAIL and says why. A copy cut
    short (an error, Ctrl-C) is deleted, so no half study is left to pass for the target's own."""
    try:
        optuna.copy_study(from_study_name=name, from_storage=source, to_storage=into)
        copied = _load(name, into)
        copied.set_user_attr(COPIED_FROM, shown(source))
        for trial in copied.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            into.set_trial_user_attr(trial._trial_id, "fail_reason", CUT_SHORT.format(source=shown(source)))
            into.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except BaseException:
        if name in optuna.get_all_study_names(into):
            optuna.delete_study(study_name=name, storage=into)
        raise


def _check_replaceable(copy: optuna.Study, source: optuna.Study, source_url: str) -> None:
    """A copy may be replaced by the source's study when it is one and the source's trials extend it."""
    name = copy.study_name
    if COPIED_FROM not in copy.user_attrs:
        raise SweepError(f"study {name!r} is in both stores and the target's is its own, not a copy: nothing was "
                         "merged. Rename one of them (sweep --study-name) first")
    mine, theirs = (_trial_keys(s) for s in (copy, source))
    if theirs[:len(mine)] != mine:
        raise SweepError(f"study {name!r} was copied from {copy.user_attrs[COPIED_FROM]}, and {shown(source_url)}'s "
                         "trials do not extend that copy (an older store, or trials added to the copy here): "
                         "nothing was merged. Rename one of them (sweep --study-name) first")


def _trial_keys(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.datetime_start, sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


def _merged_kept_seeds(source: optuna.Study, target: optuna.Study) -> dict[str, dict]:
    """Each kept attribute, the source's seeds added to the target's seed by seed; the target keeps its own score
    for a seed both hold (a name's digest covers the device and all that shapes the run, so a name held by both
    is the same run). Both sides are checked first: a malformed entry raises StoreError."""
    merged = {}
    for attr in KEPT:
        theirs = check_kept_packs(source.user_attrs.get(attr, {}), source.study_name, attr)
        ours = check_kept_packs(target.user_attrs.get(attr, {}), target.study_name, attr)
        merged[attr] = dict(ours)
        for name, entry in theirs.items():
            merged[attr][name] = merged_entry(entry, ours.get(name, EMPTY))
    return merged


def _keep_merged_seeds(source: optuna.Study, target: optuna.Study) -> None:
    for attr, merged in _merged_kept_seeds(source, target).items():
        if merged != target.user_attrs.get(attr, {}):
            target.set_user_attr(attr, merged)
