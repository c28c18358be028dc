"""Verdicts over paired seeds: is a setting better than the control, worse, equivalent within ±delta, or undecided?

The difference is paired: the setting and the control train on the same seeds, and d_i = setting_i −
control_i. Seeds come in looks (one pack of seeds per look), and after each look the rule may stop. Looking
after every pack and stopping when an ordinary 95% interval excludes 0 would declare a difference that is
not there in more than 5% of studies (tests/stats/test_verdict.py measures how much more). So each look's interval
is a repeated confidence interval: a t-interval at level 1 − alpha / L, where L is the number of looks
planned (max seeds / seeds per look). By the union bound, the chance that any of the L intervals misses
the true difference is at most alpha, whatever the rule does with them, so every decision below holds its
error rate under repeated looks. (Pocock's or O'Brien-Fleming's boundaries are a little tighter, but need
the normal approximation that a handful of seeds does not justify; the test measures how conservative this is.)

At a look with interval [lo, hi]:
- **better** when lo > 0, **worse** when hi < 0;
- **equivalent** when −delta < lo and hi < delta (two one-sided tests, each at alpha / (2L) by this two-sided
  interval: conservative);
- otherwise more seeds, or **undecided** once max seeds are in, with an estimate of the seeds that would
  likely decide it.

Several settings against one control: while seeds come in, each setting's rule runs at alpha / m (m
settings), so a setting that stops early stays decided; at the end, Holm's step-down (see holm) may decide
more of the others.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.80
OUTCOMES = ("better", "worse", "equivalent", "undecided")


@dataclass(frozen=True)
class Look:
    """The state of the evidence after some seeds: the paired differences' mean and repeated interval."""
    n: int  # paired seeds so far
    mean: float
    sd: float  # of the paired differences (NaN with one seed)
    lo: float
    hi: float
    p: float  # two-sided paired t-test p, Bonferroni-adjusted for the looks (capped at 1)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # one of OUTCOMES
    delta: float  # the equivalence margin, in the objective's units
    look: Look  # the evidence at the look that decided (the last one)
    looks: int  # looks taken
    planned_looks: int
    seeds_needed: int | None  # for undecided: the paired seeds likely to decide it, where an estimate exists

    def as_dict(self) -> dict:
        return {"verdict": self.outcome, "delta_margin": self.delta, "delta": self.look.mean,
                "delta_ci95": [self.look.lo, self.look.hi], "n_seeds": self.look.n, "p": self.look.p,
                "looks": self.looks, "planned_looks": self.planned_looks, "seeds_needed": self.seeds_needed}


def look(diffs: list[float], planned_looks: int, alpha: float = ALPHA) -> Look:
    """The repeated confidence interval of the mean paired difference: t at level 1 − alpha / planned_looks."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return Look(n, mean, math.nan, -math.inf, math.inf, 1.0)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t = stats.t.ppf(1 - alpha / (2 * planned_looks), n - 1)
    if se == 0:  # every seed gave the same difference: no spread to test with
        return Look(n, mean, sd, mean, mean, 0.0 if mean else 1.0)
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return Look(n, mean, sd, mean - t * se, mean + t * se, min(1.0, p * planned_looks))


def decide(current: Look, delta: float) -> str | None:
    """better, worse or equivalent when the interval says so; None: not decided yet."""
    if current.lo > 0:
        return "better"
    if current.hi < 0:
        return "worse"
    if -delta < current.lo and current.hi < delta:
        return "equivalent"
    return None


MOST_SEEDS = 256  # the largest --max-seeds; an estimate beyond it is reported as "more than 256"


def seeds_to_decide(current: Look, delta: float, planned_looks: int, alpha: float = ALPHA,
                    power: float = POWER) -> int | None:
    """Paired seeds that would likely decide it in one more look, if the observed mean and sd are the truth:
    the fewer of those needed to exclude 0 and those needed to fit inside ±delta, with t quantiles at the
    rule's level for ``planned_looks`` + 1 looks (a longer decision has one look more), at least one seed more
    than now; None when not estimable, MOST_SEEDS + 1 when beyond the largest --max-seeds."""
    if current.n < 2 or not current.sd > 0:
        return None
    gaps = [g for g in (abs(current.mean), delta - abs(current.mean)) if g > 0]
    if not gaps:
        return None
    ns = np.arange(current.n + 1, MOST_SEEDS + 1)
    t = _t_quantile_sums(alpha / (2 * (planned_looks + 1)), power)[ns - 2]
    fits = t * current.sd / np.sqrt(ns) < max(gaps)
    return int(ns[fits.argmax()]) if fits.any() else MOST_SEEDS + 1


@functools.lru_cache(maxsize=64)
def _t_quantile_sums(level: float, power: float) -> np.ndarray:
    """t(1 − level) + t(power) with n − 1 degrees of freedom, for n = 2 … MOST_SEEDS (one scipy call each,
    cached: a simulation asks for the same few levels thousands of times)."""
    df = np.arange(1, MOST_SEEDS)
    return stats.t.ppf(1 - level, df) + stats.t.ppf(power, df)


def verdict(diffs: list[float], seeds_per_look: int, max_seeds: int, delta: float,
            alpha: float = ALPHA, look_ends: list[int] | None = None) -> Verdict:
    """Apply the rule to paired differences as they came in, look by look: the first look that decides stops
    it. ``look_ends``: how many differences there were after each look (default: ``seeds_per_look`` more each
    time; fewer where a seed diverged and its pair was left out). With all ``max_seeds`` in and nothing
    decided: undecided."""
    planned = planned_looks(seeds_per_look, max_seeds)
    ends = look_ends if look_ends is not None else range(seeds_per_look, len(diffs) + seeds_per_look, seeds_per_look)
    current, taken = look([], planned, alpha), 0
    for end in ends:
        current, taken = look(diffs[:end], planned, alpha), taken + 1
        outcome = decide(current, delta)
        if outcome is not None:
            return Verdict(outcome, delta, current, taken, planned, None)
    return Verdict("undecided", delta, current, taken, planned, seeds_to_decide(current, delta, planned, alpha))


def planned_looks(seeds_per_look: int, max_seeds: int) -> int:
    return max(1, math.ceil(max_seeds / seeds_per_look))


def holm(diffs: list[list[float]], seeds_per_look: int, max_seeds: int, delta: float,
         alpha: float = ALPHA, look_ends: list[list[int]] | None = None) -> list[Verdict]:
    """Several settings' verdicts against one control, Holm-corrected: in rounds, every setting whose rule at
    level alpha / (settings left) declares better or worse is decided and leaves; the rest are tried again at the
    larger level, until a round decides none. That is Holm's step-down, applied to the sequential rule, for the
    claims better and worse. Those left take their verdict at the last round's level (equivalent or undecided):
    an equivalence claim there is at that round's level, outside Holm's argument (conservative at alpha / m
    in the first round, not always after it)."""
    remaining, out = set(range(len(diffs))), {}
    while remaining:
        level = alpha / len(remaining)
        this_round = {i: verdict(diffs[i], seeds_per_look, max_seeds, delta, level,
                                 look_ends[i] if look_ends else None) for i in remaining}
        decided = {i for i, v in this_round.items() if v.outcome in ("better", "worse")}
        out.update({i: this_round[i] for i in (decided or remaining)})
        if not decided:
            break
        remaining -= decided
    return [out[i] for i in range(len(diffs))]


def minimum_detectable_effect(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true paired difference that n paired seeds detect with the given power by a two-sided t-test at
    alpha (iterated from the normal approximation to the t's n − 1 degrees of freedom)."""
    if n < 2 or not sd_diff > 0:
        return math.nan
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_diff / math.sqrt(n))


def to_record(v: Verdict) -> dict:
    """JSON-ready (Optuna user attrs, --json): the verdict and its evidence."""
    return {**v.as_dict(), "look": asdict(v.look)}
