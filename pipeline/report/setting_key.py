"""A setting's key: what its runs train, apart from the protocol they train it at. Two parts: the knobs the setting
changes from its control, sorted, each value written one way (4 and 4.0 alike); and the control's own knobs off the
chapter's (its data set, a knob a user `--set`), other than the protocol's and those that only change speed. A
search's trial and a design's cell that train the same configuration get the same key, whatever their parameters
are called: smooth-l1's search tries `smooth_l1_sigma=1`, and its space adds `box_loss=smooth_l1`, which a design's
cell names outright. A design's knob set relative to the profile (`Scaled`) is written as its factor
(`image_size=x1.5`), so that the same cell keys alike at every profile. The answer sheet matches settings across
profiles on it (pipeline.report.whose_answer)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optuna

import experiments
from pipeline.config import PROTOCOL_EXTRAS, PROTOCOL_KNOBS, RunConfig
from pipeline.study.optuna_study import stored_base_config

SEPARATOR = " | on "  # between a key's changes and its control's context
NEARBY = 0.05  # two numeric values this close, relative to the larger, make a "nearby" setting (focal γ 0.1017 and 0.1)
RUN_ONLY = ("seed", "device", "channels_last", "cuda_graph", "cudnn_benchmark", "torch_compile", "pack_layout",
            "val_every")  # how a run is carried out, not what it trains


def setting_key(overrides: dict[str, Any], base: RunConfig) -> str:
    """'box_loss=smooth_l1 | on dataset=shapes': the overrides that differ from ``base``, and ``base``'s knobs off
    the chapter's other than the protocol's and RUN_ONLY's ("the chapter's" where there are none)."""
    fields, chapter = dataclasses.asdict(base), dataclasses.asdict(RunConfig())
    context = {knob: value for knob, value in fields.items()
               if knob not in (*PROTOCOL_KNOBS, *PROTOCOL_EXTRAS, *RUN_ONLY)}
    context_key = _changes(context, chapter) or "the chapter's"
    return f"{_changes(overrides, fields)}{SEPARATOR}{context_key}"


def search_setting_key(study: optuna.Study, params: dict[str, Any]) -> str:
    """The key of the setting a search's trial with ``params`` trained: the variant's space replayed on them over
    the study's stored base configuration. '' where it cannot be replayed (no stored base, a variant no longer in
    experiments/, a space that asks for a parameter the trial lacks), so that the sheet falls back to the
    parameters' text."""
    try:
        base = stored_run_config(study)
        overrides = experiments.load(study.user_attrs.get("variant", "")).space(optuna.trial.FixedTrial(params), base)
    except (KeyError, ValueError, TypeError, AttributeError):
        return ""
    return setting_key(overrides, base)


def design_setting_key(study: optuna.Study, cell: str, overrides: dict[str, Any]) -> str:
    """The key of a design's cell from its stored (resolved) ``overrides``: a knob the design file sets relative to
    the profile is written as its factor where the file's cell still resolves to the stored value (an edited file
    does not: its stored value stands). '' where the study has no stored base."""
    try:
        base = stored_run_config(study)
    except (KeyError, ValueError, TypeError, AttributeError):
        return ""
    try:
        declared = experiments.load(study.user_attrs.get("variant", "")).cells.get(cell, {})
    except KeyError:
        declared = {}
    factors = {knob: f"x{value.factor:g}" for knob, value in declared.items() if isinstance(value, experiments.Scaled)
               and experiments.resolve_cell({knob: value}, base)[knob] == overrides.get(knob)}
    return setting_key({**overrides, **factors}, base)


def stored_run_config(study: optuna.Study) -> RunConfig:
    """The study's stored base configuration as a RunConfig, knobs added since at their defaults; KeyError where
    the study stored none."""
    stored = stored_base_config(study)
    if not stored:
        raise KeyError(f"study {study.study_name!r} stored no base configuration")
    return RunConfig(**{f.name: stored[f.name] for f in dataclasses.fields(RunConfig) if f.name in stored})


def nearness(key: str, other: str) -> float | None:
    """How far apart two settings are when they differ in numeric values only: the largest relative difference
    over their knobs (0 for the same setting); None where they differ in anything else (a knob's text, their
    context)."""
    values = _side_by_side(key, other)
    gaps = [_relative_gap(mine, theirs) for mine, theirs in values.values()] if values is not None else [None]
    return None if None in gaps else max(gaps, default=0.0)


def knobs_apart(key: str, other: str) -> str:
    """'focal_gamma=0.1': ``key``'s values of the knobs on which it differs from ``other`` (same context)."""
    values = _side_by_side(key, other) or {}
    return ", ".join(f"{knob}={mine}" for knob, (mine, theirs) in sorted(values.items()) if mine != theirs)


def _side_by_side(key: str, other: str) -> dict[str, tuple[str | None, str | None]] | None:
    """Each knob either key changes, with its value in both; a knob that one key leaves out has its control's
    value there (the context's, else the chapter's). None where the two keys differ in context."""
    if SEPARATOR not in key or SEPARATOR not in other:  # not a key setting_key wrote (a hand-edited sheet's)
        return None
    (knobs, context), (other_knobs, other_context) = _parsed(key), _parsed(other)
    if context != other_context:
        return None
    defaults = {**{knob: _written(value) for knob, value in dataclasses.asdict(RunConfig()).items()},
                **_pairs(context)}
    return {knob: (knobs.get(knob, defaults.get(knob)), other_knobs.get(knob, defaults.get(knob)))
            for knob in {*knobs, *other_knobs}}


def _parsed(key: str) -> tuple[dict[str, str], str]:
    changes, _, context = key.partition(SEPARATOR)
    return _pairs(changes), context


def _pairs(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(", ") if "=" in part)


def _relative_gap(value: str | None, other: str | None) -> float | None:
    if value == other:
        return 0.0
    try:
        a, b = float(value), float(other)
    except (TypeError, ValueError):
        return None
    return abs(a - b) / max(abs(a), abs(b)) if math.isfinite(a) and math.isfinite(b) else None


def _changes(overrides: dict[str, Any], base: dict[str, Any]) -> str:
    changed = {knob: value for knob, value in overrides.items() if _written(value) != _written(base.get(knob))}
    return ", ".join(f"{knob}={_written(value)}" for knob, value in sorted(changed.items()))


def _written(value: Any) -> str:
    """One spelling per value: 4 and 4.0 are '4', 0.1 and 0.1 + 1e-17 are '0.1'; strings and None as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(int(value)) if float(value).is_integer() else f"{float(value):.10g}"
