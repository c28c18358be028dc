"""Statistics of the confirmation runs over seeds: t-intervals, the paired t-test and its verdict (scipy)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95  # confidence level of every interval


def mean_ci(values: list[float], level: float = LEVEL) -> dict[str, float]:
    """n, mean, sd and the t-interval of the mean (lo, hi are NaN with one value)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=sd / math.sqrt(n))
    else:
        lo, hi = (mean, mean) if n > 1 else (math.nan, math.nan)
    return {"n": n, "mean": mean, "sd": sd, "lo": float(lo), "hi": float(hi)}


def paired_comparison(best: list[float], control: list[float], level: float = LEVEL) -> dict[str, Any]:
    """Best minus control, seed by seed: mean difference with its CI, paired t-test p, effect size d_z.

    d_z = mean(diff) / sd(diff). 'within_noise' is True when the CI includes 0 or p >= 1 - level,
    and None when no test is possible (fewer than 2 seeds, or identical differences).
    """
    diff = np.asarray(best, dtype=float) - np.asarray(control, dtype=float)
    ci = mean_ci(list(diff), level)
    out = {**{f"diff_{k}": v for k, v in ci.items()}, "p": math.nan, "t": math.nan, "effect_size": math.nan,
           "within_noise": None}
    if len(diff) < 2 or not ci["sd"] > 0:
        return out
    test = stats.ttest_rel(best, control)
    out.update(t=float(test.statistic), p=float(test.pvalue), effect_size=ci["mean"] / ci["sd"])
    out["within_noise"] = bool(ci["lo"] <= 0 <= ci["hi"] or out["p"] >= 1 - level)
    return out


def verdict(comparison: dict[str, Any]) -> str:
    """One plain sentence about the paired comparison."""
    n = comparison["diff_n"]
    if n < 2:
        return f"Only {n} confirmation seed: no test is possible. Run the sweep again with `--seeds 3` or more."
    if comparison["within_noise"] is None:
        return "The differences are identical on every seed, so the t-test is undefined: treat it as untested."
    ci = f"the 95% CI of the difference, [{comparison['diff_lo']:+.4f}, {comparison['diff_hi']:+.4f}],"
    includes = comparison["diff_lo"] <= 0 <= comparison["diff_hi"]
    p = f"p = {comparison['p']:.3g}"
    if comparison["within_noise"]:
        why = f"{ci} includes 0 ({p})" if includes else f"{p} ≥ 0.05"
        return (f"**Within noise**: {why}. On these seeds the best setting is not reliably different "
                "from the control.")
    winner = "best trial beats the control" if comparison["diff_mean"] > 0 else "control beats the best trial"
    return f"**The {winner}** beyond seed noise: {ci[:-1]} excludes 0 and {p}."


def confirmation_stats(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Per-role mean ± CI and the paired comparison, from the study's 'confirmation' user attr."""
    record = attrs.get("confirmation")
    if not record or not record.get("best") or not record.get("control"):
        return None
    return {"best_trial": record.get("best_trial"), "seeds": record.get("seeds", []),
            "best": mean_ci(record["best"]), "control": mean_ci(record["control"]),
            "paired": paired_comparison(record["best"], record["control"]),
            "values": {"best": record["best"], "control": record["control"]}, "split": record.get("split", "val")}
