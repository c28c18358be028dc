"""Verdicts over paired seeds: is a setting better than the control, worse, equivalent within ±delta, or undecided?

The difference is paired: the setting and the control train on the same seeds, and d_i = setting_i −
control_i, taken in seed order. The promise: whatever a user does next (looks after every pack, extends an
undecided verdict, raises --max-seeds, kills and resumes, reuses kept seeds), the chance that a verdict's
interval ever misses the true mean difference is at most alpha. A rule built for looks planned in advance
cannot keep that (the "add seeds" hint followed twice took the old Bonferroni rule to 8% false positives), so
the interval is a **confidence sequence**: valid at every number of seeds at once, by Ville's inequality.

It is the inversion of an e-process for the paired t-test (Lai 1976; Pérez-Ortiz, Lardy, de Heide and
Grünwald 2024): for a hypothesised mean m, the t statistic of d − m is scale-free, and the likelihood ratio of
its sequence (the maximal invariant under rescaling, which is what a right-Haar prior on the sd integrates to)
is a test martingale when the mean is m. The alternative is mostly (``POINT_WEIGHT``) a point mass at a
standardised effect of ±``DESIGN_EFFECT``, half on each side, the growth-optimal choice for detecting an effect
of that size (the ratio of non-central to central t densities), and a little a normal prior over effects, so
that the interval keeps narrowing as seeds accrue (docs/verdict-rules.md compares the choices). So m is excluded once that ratio reaches 1/alpha, which at n seeds is
|t| ≥ ``critical_t(n)``, and the interval at n is mean ± critical_t(n) · sd / √n. The reported interval is the
running intersection over every n so far (still valid: every member holds at once).

Decisions, from the interval:
- **better** when lo > 0, **worse** when hi < 0 (and "by less than delta" when the interval also lies inside
  ±delta);
- **equivalent** when −delta < lo and hi < delta;
- otherwise more seeds, or **undecided** once max seeds are in, with an estimate of the seeds that would likely
  decide it (following it keeps the promise: the rule does not care when you stop).

A seed scores what it scores: the caller counts a diverged seed as a model that detects nothing (0 mAP), never
drops it (pipeline.stats.decide). Validity assumes roughly normal differences, as every t-based rule does;
docs/verdict-rules.md measures how skewed or collapsing differences bend it. Several settings against one
control: ``holm`` applies Holm's step-down to the anytime p-values (1 / the largest e-value so far).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import integrate, optimize, stats

ALPHA = 0.05
POWER = 0.80
DESIGN_EFFECT = 1.0  # the standardised paired effect (mean / sd) the e-process bets on most: one paired sd
POINT_WEIGHT = 0.9  # the e-process's weight on ±DESIGN_EFFECT; the rest is a normal prior over effects
NORMAL_PRIOR_VARIANCE = 1.0
OUTCOMES = ("better", "worse", "equivalent", "undecided")
MOST_SEEDS = 256  # the largest --max-seeds; an estimate beyond it is reported as "more than 256"
RECORD_ATTR = "verdict_record"  # the study user attribute that keeps the whole record; "verdict" is its outcome


def stored_record(attrs: dict) -> dict | None:
    """The verdict record a study keeps (pipeline.study.sweep.settle_verdict). Stores written before the record
    moved to ``verdict_record`` kept it under ``verdict``, which now holds the plain outcome."""
    record = attrs.get(RECORD_ATTR)
    if record is None and isinstance(attrs.get("verdict"), dict):
        record = attrs["verdict"]
    return record


@dataclass(frozen=True)
class Look:
    """The state of the evidence after some seeds: the paired differences' mean and confidence-sequence interval."""
    n: int  # paired seeds so far
    mean: float
    sd: float  # of the paired differences (NaN with one seed)
    lo: float  # the running intersection of the confidence sequence up to n
    hi: float
    p: float  # anytime-valid p for "no difference": 1 / the largest e-value so far (capped at 1)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # one of OUTCOMES
    delta: float  # the equivalence margin, in the objective's units
    look: Look  # the evidence at the last seed
    looks: int  # looks taken
    planned_looks: int
    seeds_needed: int | None  # for undecided: the paired seeds likely to decide it, where an estimate exists
    decided_at: int | None = None  # the seeds at which the interval first decided it

    @property
    def within_delta(self) -> bool:
        """Better or worse, by less than delta: the interval excludes 0 and lies inside ±delta."""
        return self.outcome in ("better", "worse") and -self.delta < self.look.lo and self.look.hi < self.delta

    def as_dict(self) -> dict:
        return {"verdict": self.outcome, "delta_margin": self.delta, "delta": self.look.mean,
                "delta_ci95": [self.look.lo, self.look.hi], "n_seeds": self.look.n, "p": self.look.p,
                "looks": self.looks, "planned_looks": self.planned_looks, "seeds_needed": self.seeds_needed,
                "decided_at": self.decided_at, "within_delta": self.within_delta, "rule": RULE}


RULE = "t e-process confidence sequence"


def log_e_value(t: float, n: int, effect: float = DESIGN_EFFECT) -> float:
    """log of the e-value against "mean 0" after n ≥ 2 paired seeds whose t statistic is t: a mixture, weight
    POINT_WEIGHT on a standardised mean of ±effect (half each) and the rest on a normal prior of variance
    NORMAL_PRIOR_VARIANCE, which lets the interval keep narrowing at large n (alone, a point alternative
    stops narrowing at about half the effect)."""
    point = _log_point_ratio(t, n, effect)
    normal = _log_normal_prior_ratio(t, n, NORMAL_PRIOR_VARIANCE)
    return float(np.logaddexp(math.log(POINT_WEIGHT) + point, math.log(1 - POINT_WEIGHT) + normal))


def _log_point_ratio(t: float, n: int, effect: float) -> float:
    """The likelihood ratio of the scale-free sequence (the non-central to the central t density) for a
    standardised mean of ±effect, half each. With r = Σd / √(Σd²) = √n·t / √(n − 1 + t²), the ratio for a mean
    of effect is exp(−n·effect²/2) · I(effect·r) / I(0), with I(a) = ∫₀^∞ u^(n−1) exp(−u²/2 + a·u) du (the
    data's scale integrated out under the right-Haar prior): computed by quadrature in logs, stable where
    scipy's non-central t density is not (large n and |t|)."""
    r = math.sqrt(n) * t / math.sqrt(n - 1 + t * t)
    up, down = _log_i(effect * r, n), _log_i(-effect * r, n)
    return float(np.logaddexp(up, down) - math.log(2) - _log_i(0.0, n) - n * effect * effect / 2)


def _log_normal_prior_ratio(t: float, n: int, g: float) -> float:
    """The same ratio with the standardised mean drawn from N(0, g): the JZS-type Bayes factor in closed form
    (Gönen, Johnson, Lu and Westfall 2005)."""
    df, c = n - 1, 1 + n * g
    return -0.5 * math.log(c) + (df + 1) / 2 * (math.log1p(t * t / df) - math.log1p(t * t / (df * c)))


def _log_i(a: float, n: int) -> float:
    """log ∫₀^∞ u^(n−1) exp(−u²/2 + a·u) du, about the integrand's mode (it is log-concave)."""
    mode = (a + math.sqrt(a * a + 4 * (n - 1))) / 2
    log_f = lambda u: (n - 1) * math.log(u) - u * u / 2 + a * u if u > 0 else -math.inf  # noqa: E731
    peak = log_f(mode)
    area, _ = integrate.quad(lambda u: math.exp(log_f(u) - peak), 0.0, mode + 40.0, points=[mode], limit=200)
    return peak + math.log(area)


@functools.lru_cache(maxsize=4096)
def critical_t(n: int, alpha: float = ALPHA, effect: float = DESIGN_EFFECT) -> float:
    """The |t| at which the e-value reaches 1/alpha after n paired seeds; inf where it cannot (n < 5 at 0.05)."""
    if n < 2:
        return math.inf
    gap = lambda t: log_e_value(t, n, effect) - math.log(1 / alpha)  # noqa: E731
    if gap(200.0) < 0:  # t beyond 200 is a zero-spread sample: nothing larger decides either
        return math.inf
    return float(optimize.brentq(gap, 0.0, 200.0, xtol=1e-10))


def critical_ts(seeds: int, alpha: float = ALPHA) -> np.ndarray:
    """critical_t(n) for n = 1 … seeds, as an array (index n − 1)."""
    return np.array([critical_t(n, alpha) for n in range(1, seeds + 1)])


def running_intervals(diffs: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, ...]:
    """For paired differences in seed order along the last axis (one study a row, or one study), the running
    mean, sd and interval after each seed: (mean, sd, lo, hi), each of diffs' shape. The interval at n is
    mean ± critical_t(n)·sd/√n intersected with every earlier one (where the two do not meet, which only a badly
    non-normal sample does, the newer stands alone). One seed, or fewer than the rule can decide on: (−inf, inf).
    Vectorised so that the simulations in tests/stats/test_verdict.py run this very code."""
    d = np.asarray(diffs, dtype=float)
    n = np.arange(1, d.shape[-1] + 1)
    mean = np.cumsum(d, axis=-1) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (np.cumsum(d * d, axis=-1) - n * mean * mean) / (n - 1)
        sd = np.sqrt(np.maximum(var, 0.0))
        sd = np.where(sd <= 1e-9 * np.abs(mean), 0.0, sd)  # the rounding left by a zero-spread sample
        half = np.where(sd > 0, critical_ts(len(n), alpha) * sd / np.sqrt(n), 0.0)
    half = np.where(np.isfinite(critical_ts(len(n), alpha)), half, np.inf)
    lo, hi = mean - half, mean + half
    lo_run, hi_run = np.empty_like(lo), np.empty_like(hi)
    cur_lo, cur_hi = np.full(d.shape[:-1], -np.inf), np.full(d.shape[:-1], np.inf)
    for i in range(len(n)):
        new_lo, new_hi = np.maximum(cur_lo, lo[..., i]), np.minimum(cur_hi, hi[..., i])
        meet = new_lo <= new_hi
        cur_lo, cur_hi = np.where(meet, new_lo, lo[..., i]), np.where(meet, new_hi, hi[..., i])
        lo_run[..., i], hi_run[..., i] = cur_lo, cur_hi
    return mean, np.where(n > 1, sd, np.nan), lo_run, hi_run


def first_decisions(diffs: np.ndarray, delta: float, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """For each study (a row of paired differences in seed order): its outcome ('better', 'worse',
    'equivalent' or 'undecided') at the first seed whose interval decides, and that seed count (0: never)."""
    _, _, lo, hi = running_intervals(np.atleast_2d(diffs), alpha)
    codes = np.select([lo > 0, hi < 0, (-delta < lo) & (hi < delta)], [1, 2, 3], 0)
    decided = codes > 0
    first = np.where(decided.any(-1), decided.argmax(-1), -1)
    outcome = np.where(first >= 0, np.take_along_axis(codes, np.maximum(first, 0)[..., None], -1)[..., 0], 0)
    return np.array(("undecided", "better", "worse", "equivalent"))[outcome], first + 1


def running_looks(diffs: list[float], alpha: float = ALPHA) -> list[Look]:
    """The evidence after each seed, in order, with the anytime p: 1 / the largest e-value so far."""
    mean, sd, lo, hi = running_intervals(np.asarray(diffs, dtype=float), alpha)
    out, best_log_e = [], 0.0
    for i in range(len(mean)):
        n = i + 1
        if n > 1:
            t = math.copysign(200.0, mean[i]) if sd[i] == 0 and mean[i] else (mean[i] / (sd[i] / math.sqrt(n)) if sd[i] else 0.0)
            best_log_e = max(best_log_e, log_e_value(max(-200.0, min(200.0, t)), n))
        out.append(Look(n, float(mean[i]), float(sd[i]), float(lo[i]), float(hi[i]), min(1.0, math.exp(-best_log_e))))
    return out


def look(diffs: list[float], alpha: float = ALPHA) -> Look:
    """The evidence after all of ``diffs``."""
    if not diffs:
        return Look(0, math.nan, math.nan, -math.inf, math.inf, 1.0)
    return running_looks(diffs, alpha)[-1]


def decide(current: Look, delta: float) -> str | None:
    """better, worse or equivalent when the interval says so; None: not decided yet."""
    if current.lo > 0:
        return "better"
    if current.hi < 0:
        return "worse"
    if -delta < current.lo and current.hi < delta:
        return "equivalent"
    return None


def seeds_to_decide(current: Look, delta: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Paired seeds that would likely decide it, if the observed mean and sd are the truth: the fewest n whose
    minimum detectable effect (at ``power``) is below the gap to 0 or to ±delta, at least one seed more than now;
    None when not estimable, MOST_SEEDS + 1 when beyond the largest --max-seeds. Any n is safe to follow: the
    interval holds at every n."""
    if current.n < 2 or not current.sd > 0:
        return None
    gap = max(abs(current.mean), delta - abs(current.mean))
    if not gap > 0:
        return None
    for n in range(current.n + 1, MOST_SEEDS + 1):
        if minimum_detectable_effect(current.sd, n, alpha, power) < gap:
            return n
    return MOST_SEEDS + 1


def verdict(diffs: list[float], seeds_per_look: int, max_seeds: int, delta: float,
            alpha: float = ALPHA, look_ends: list[int] | None = None) -> Verdict:
    """Apply the rule to paired differences in seed order. The first seed at which the interval decides fixes
    the outcome (an interval that only narrows keeps it); with every seed in and nothing decided: undecided.
    ``seeds_per_look``, ``max_seeds`` and ``look_ends`` count the looks for the record; they do not change the
    interval, which holds at every seed."""
    planned = planned_looks(seeds_per_look, max_seeds)
    looks_taken = len(look_ends) if look_ends is not None else math.ceil(len(diffs) / seeds_per_look)
    history = running_looks(diffs, alpha)
    last = history[-1] if history else look([], alpha)
    if history:
        outcome, at = first_decisions(np.asarray(diffs, dtype=float), delta, alpha)
        if outcome[0] != "undecided":
            return Verdict(str(outcome[0]), delta, last, looks_taken, planned, None, int(at[0]))
    return Verdict("undecided", delta, last, looks_taken, planned, seeds_to_decide(last, delta, alpha))


def planned_looks(seeds_per_look: int, max_seeds: int) -> int:
    return max(1, math.ceil(max_seeds / seeds_per_look))


def holm(diffs: list[list[float]], seeds_per_look: int, max_seeds: int, delta: float,
         alpha: float = ALPHA, look_ends: list[list[int]] | None = None) -> list[Verdict]:
    """Several settings' verdicts against one control, Holm-corrected: in rounds, every setting whose interval at
    level alpha / (settings left) declares better or worse is decided and leaves; the rest are tried again at the
    larger level, until a round decides none. That is Holm's step-down on the anytime p-values (the interval at
    level a excludes 0 exactly when the largest e-value reaches 1/a): the better and worse claims keep the family's
    rate under any dependence between the settings, which share the control. Those left take their verdict at the
    last round's level (equivalent or undecided), a level Holm's argument does not cover for them."""
    remaining, level, level_of = set(range(len(diffs))), alpha, {}
    while remaining:
        level = alpha / len(remaining)
        decided = {i for i in remaining if len(diffs[i]) and
                   first_decisions(np.asarray(diffs[i], dtype=float), delta, level)[0][0] in ("better", "worse")}
        if not decided:
            break
        for i in decided:  # decided at this round's level
            level_of[i] = level
        remaining -= decided
    return [verdict(diffs[i], seeds_per_look, max_seeds, delta, level_of.get(i, level),
                    look_ends[i] if look_ends else None) for i in range(len(diffs))]


def minimum_detectable_effect(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true paired difference that this rule detects with the given power by n paired seeds: the interval's
    half-width at n plus the t quantile of the power (an approximation; tests/stats/test_verdict.py measures it)."""
    if n < 2 or not sd_diff > 0:
        return math.nan
    return _detectable_in_sds(n, alpha, power) * sd_diff


@functools.lru_cache(maxsize=4096)
def _detectable_in_sds(n: int, alpha: float, power: float) -> float:
    """(critical_t(n) + t quantile of the power) / √n: cached, as the seeds-to-decide search asks for it per n."""
    return float((critical_t(n, alpha) + stats.t.ppf(power, n - 1)) / math.sqrt(n))


def to_record(v: Verdict) -> dict:
    """JSON-ready (Optuna user attrs, --json): the verdict and its evidence."""
    return {**v.as_dict(), "look": asdict(v.look)}


def interval_text(lo: float, hi: float) -> str:
    """An interval as it is printed everywhere, signed: [lo, hi], or "[no bound yet]" while both ends are still
    infinite (a confidence sequence at few seeds, or under a strict Holm level, is unbounded until then)."""
    if math.isinf(lo) and math.isinf(hi):
        return "[no bound yet]"
    return f"[{lo:+.4f}, {hi:+.4f}]"
