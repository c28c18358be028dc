"""Metrics of several seeds as one: the mean, its 95% t-interval, and each seed's own value under its own name.

A pack (pipeline/model/pack.py) trains K seeds; MLflow, Optuna's pruner and the report see one run whose
``val/map`` is the mean over the seeds, ``val/map_ci95`` the half-width of the 95% t-interval of that
mean, and ``val/map/seed_3`` seed 3's own value. A single run (K = 1) is logged exactly as it always was.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95  # confidence level of every interval the project reports
CI_SUFFIX = "_ci95"


def seed_key(key: str, seed: int) -> str:
    """The name of one seed's value of metric ``key``: 'val/map' -> 'val/map/seed_3'."""
    return f"{key}/seed_{seed}"


def t_half_width(values: list[float], level: float = LEVEL) -> float:
    """Half-width of the t-interval of the mean of ``values`` (NaN with fewer than two)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def combine(per_seed: dict[int, dict[str, float]], pack_size: int) -> dict[str, float]:
    """The metrics of a pack's live seeds as one dict: each key's mean over the seeds that have it, its CI
    half-width (key + '_ci95', with two seeds or more) and each seed's value (seed_key), so a seed's value is
    always found under its own name, even when the others diverged. A single run (pack_size 1): its own
    metrics, unchanged."""
    if pack_size == 1:
        return dict(next(iter(per_seed.values())))
    keys = list(dict.fromkeys(k for metrics in per_seed.values() for k in metrics))
    out: dict[str, float] = {}
    for key in keys:
        values = {seed: m[key] for seed, m in per_seed.items() if key in m and not math.isnan(m[key])}
        out[key] = float(np.mean(list(values.values()))) if values else math.nan
        if len(values) >= 2:
            out[key + CI_SUFFIX] = t_half_width(list(values.values()))
        out.update({seed_key(key, seed): value for seed, value in values.items()})
    return out


def seed_values(metrics: dict[str, float], key: str) -> dict[int, float]:
    """The per-seed values of ``key`` in a combined dict: {seed: value} (empty for a single run)."""
    prefix = f"{key}/seed_"
    return {int(name[len(prefix):]): value for name, value in metrics.items()
            if name.startswith(prefix) and name[len(prefix):].isdigit()}
