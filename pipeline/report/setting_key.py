"""A setting's key: the knobs its run configuration changes from its control's, sorted, each value written one way
(4 and 4.0 alike). A search's trial and a design's cell that train the same configuration get the same key, whatever
their parameters are called: smooth-l1's search tries `smooth_l1_sigma=1`, and its space adds `box_loss=smooth_l1`,
which a design's cell names outright. The answer sheet matches settings across profiles on it."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

import experiments
from pipeline.config import RunConfig
from pipeline.study.optuna_study import stored_base_config


def changes_key(overrides: dict[str, Any], base: dict[str, Any]) -> str:
    """'box_loss=smooth_l1, smooth_l1_sigma=1': the overrides that differ from ``base`` (a RunConfig's fields)."""
    changed = {knob: value for knob, value in overrides.items() if _written(value) != _written(base.get(knob))}
    return ", ".join(f"{knob}={_written(value)}" for knob, value in sorted(changed.items()))


def search_setting_key(study: optuna.Study, params: dict[str, Any]) -> str:
    """The key of the setting a search's trial with ``params`` trained: the variant's space replayed on them over
    the study's stored base configuration. '' where it cannot be replayed (a variant no longer in experiments/, or
    a space that asks for a parameter the trial lacks), so that the sheet falls back to the parameters' text."""
    base = stored_base_config(study)
    try:
        variant = experiments.load(study.user_attrs.get("variant", ""))
        config = RunConfig(**{f.name: base[f.name] for f in dataclasses.fields(RunConfig) if f.name in base})
        overrides = variant.space(optuna.trial.FixedTrial(params), config)
    except (KeyError, ValueError, TypeError):
        return ""
    return changes_key(overrides, base)


def _written(value: Any) -> str:
    """One spelling per value: 4, 4.0 and 4.00000001 are '4'; strings and None as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{float(value):.6g}"
