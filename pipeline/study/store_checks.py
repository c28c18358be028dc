"""What a study keeps is checked before it is used: a user attribute that is not JSON (a truncated write, a hand
edit) is named, and a verdict's kept packs must hold finite scores in the metric's range, a training time for
each, and one entry per seed. A bad record is refused with one line that names the study, the attribute and the
seed, and says how to repair it; it is never used, and never silently dropped."""

from __future__ import annotations

import json
import math
from typing import Any

import sqlalchemy

from pipeline.study.optuna_study import SweepError

SCORE_RANGE = (0.0, 1.0)  # every objective a variant may name is an AP: 0 (detects nothing) to 1


class StoreError(SweepError):
    """A study's stored record is unreadable or out of range: the message names it and how to repair it."""


def undecodable_attrs(storage_url: str) -> list[tuple[str, str]]:
    """(study, attribute) of every study user attribute whose stored JSON does not parse (Optuna's RDB schema),
    read without Optuna, which fails on the first one and names none."""
    engine = sqlalchemy.create_engine(storage_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT s.study_name, a.key, a.value_json FROM study_user_attributes a "
                "JOIN studies s ON s.study_id = a.study_id")).all()
    finally:
        engine.dispose()
    bad = []
    for study, key, value in rows:
        try:
            json.loads(value)
        except (TypeError, ValueError):
            bad.append((study, key))
    return bad


def unreadable_attrs_error(storage_url: str, exc: ValueError) -> StoreError:
    """The StoreError for a storage whose study user attributes Optuna could not decode: names the first."""
    bad = undecodable_attrs(storage_url) if storage_url.startswith(("sqlite", "postgresql")) else []
    if not bad:
        return StoreError(f"{storage_url}: a study user attribute is not valid JSON ({exc})")
    study, key = bad[0]
    return StoreError(f"study {study}: user attribute '{key}' is not valid JSON ({exc}); repair: delete it (SQL: "
                      f"DELETE FROM study_user_attributes WHERE key = '{key}' AND study_id = (SELECT study_id FROM "
                      f"studies WHERE study_name = '{study}')) and run again: a verdict's kept packs are then trained "
                      "again")


def check_kept_packs(kept: Any, study_name: str, attr: str) -> dict[str, dict]:
    """The kept packs, checked: {entry: {"scores": {seed: score or None}, "seconds": {seed: s}, and where kept
    "machines": {seed: the machine that trained it}}}, where a seed is a
    non-negative integer written once, a score is a finite number in SCORE_RANGE or None (it diverged, which the
    verdict counts as a model that detects nothing), and every scored seed has its training time."""
    where = f"study {study_name}: kept packs ('{attr}')"
    if not isinstance(kept, dict):
        raise StoreError(f"{where}: not a mapping of entries; repair: delete the attribute, its seeds are trained again")
    for entry, record in kept.items():
        if not isinstance(record, dict) or not isinstance(record.get("scores"), dict) \
                or not isinstance(record.get("seconds"), dict):
            raise StoreError(f"{where}, entry '{entry}': needs 'scores' and 'seconds'; {_repair(entry)}")
        machines = record.get("machines", {})
        if not isinstance(machines, dict) or not all(isinstance(m, str) and m for m in machines.values()):
            raise StoreError(f"{where}, entry '{entry}': 'machines' is not a mapping of seeds to machine names; "
                             f"repair: delete 'machines' from it (only the report's list of machines needs it)")
        seen: dict[int, str] = {}
        for seed, score in record["scores"].items():
            at = f"{where}, entry '{entry}', seed {seed}"
            number = _seed_number(seed)
            if number is None or number in seen:
                raise StoreError(f"{at}: {'not a seed number' if number is None else 'written twice'}; "
                                 f"{_repair(entry, seed)}")
            seen[number] = seed
            if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                      or not math.isfinite(score) or not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]):
                raise StoreError(f"{at}: score {score!r} is not a number in [{SCORE_RANGE[0]:g}, {SCORE_RANGE[1]:g}]; "
                                 f"{_repair(entry, seed)}")
            seconds = record["seconds"].get(seed)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0 \
                    or not math.isfinite(seconds):
                raise StoreError(f"{at}: training time {seconds!r} is missing or not a number of seconds; "
                                 f"{_repair(entry, seed)}")
    return kept


def _seed_number(seed: str) -> int | None:
    return int(seed) if isinstance(seed, str) and seed.isascii() and seed.isdigit() else None


def _repair(entry: str, seed: str | None = None) -> str:
    what = f"seed {seed} from entry '{entry}' (its 'scores' and 'seconds')" if seed is not None else f"entry '{entry}'"
    return (f"repair: remove {what} and store the rest back with Optuna's study.set_user_attr, then run the "
            "sweep again: what was removed is trained again")
