"""The verdict rule's error rates, measured by simulation: with no true difference it declares better or worse
in at most 5% of studies despite looking after every pack; a naive rule does not; equivalence is not declared
at the margin; Holm keeps several settings' family-wise rate; the minimum detectable effect has its power."""

import numpy as np
import pytest
from scipy import stats

from pipeline.stats.verdict import decide, holm, look, minimum_detectable_effect, seeds_to_decide, verdict

SD = 0.03  # the paired difference's sd: the size of seed noise on bananas, quick profile
STUDIES = 4000


def simulate(true_mean, seeds_per_look=3, max_seeds=12, delta=0.01, studies=STUDIES, seed=0):
    rng = np.random.default_rng(seed)
    return [verdict(list(rng.normal(true_mean, SD, max_seeds)), seeds_per_look, max_seeds, delta).outcome
            for _ in range(studies)]


def rate(outcomes, *wanted):
    return sum(o in wanted for o in outcomes) / len(outcomes)


def test_with_no_true_difference_better_or_worse_is_declared_in_at_most_5_percent_of_studies():
    outcomes = simulate(0.0)
    assert rate(outcomes, "better", "worse") <= 0.05


def test_a_naive_rule_that_looks_after_every_pack_at_95_percent_declares_too_often():
    """The reason for the repeated intervals: the same looks with an ordinary 95% interval each time."""
    rng, hits = np.random.default_rng(1), 0
    for _ in range(STUDIES):
        d = rng.normal(0.0, SD, 12)
        hits += any(stats.ttest_1samp(d[:n], 0.0).pvalue < 0.05 for n in (3, 6, 9, 12))
    assert hits / STUDIES > 0.08  # 0.137 here: more than twice the promise


def test_equivalence_is_not_declared_when_the_true_difference_is_the_margin():
    for true_mean in (0.01, -0.01):
        assert rate(simulate(true_mean, max_seeds=24, seeds_per_look=6, delta=0.01), "equivalent") <= 0.05


def test_a_real_difference_is_found():
    outcomes = simulate(0.05, studies=500)
    assert rate(outcomes, "better") >= 0.9 and rate(outcomes, "worse") == 0


def test_holm_keeps_the_family_wise_rate_of_three_null_settings():
    rng, any_declared = np.random.default_rng(2), 0
    for _ in range(2000):
        diffs = [list(rng.normal(0.0, SD, 12)) for _ in range(3)]
        any_declared += any(v.outcome in ("better", "worse") for v in holm(diffs, 3, 12, 0.01))
    assert any_declared / 2000 <= 0.05


def test_one_look_is_the_ordinary_paired_t_interval_and_test():
    d = [0.01, 0.03, -0.005, 0.02, 0.012]
    current = look(d, planned_looks=1)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    assert (current.lo, current.hi) == pytest.approx((lo, hi))
    assert current.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert look(d, planned_looks=4).p == pytest.approx(4 * current.p)
    assert look(d, planned_looks=4).hi > hi  # wider for the looks


def test_decisions_by_hand():
    assert decide(look([0.02, 0.021, 0.019, 0.02], 1), 0.01) == "better"
    assert decide(look([-0.02, -0.021, -0.019, -0.02], 1), 0.01) == "worse"
    assert decide(look([0.001, -0.001, 0.0005, -0.0005, 0.0], 1), 0.01) == "equivalent"
    assert decide(look([0.05, -0.05], 1), 0.01) is None
    undecided = verdict([0.05, -0.04, 0.03, -0.02], 2, 4, 0.01)
    assert undecided.outcome == "undecided" and undecided.looks == 2 and undecided.seeds_needed > 4


def test_the_seeds_to_decide_estimate_decides_about_as_often_as_its_power_says():
    """Where the estimate says n seeds, a fixed-n study at the observed mean and sd decides in about 80%."""
    current = look(list(np.random.default_rng(3).normal(0.015, SD, 6)), planned_looks=1)
    n = seeds_to_decide(current, delta=0.01, planned_looks=1)
    rng = np.random.default_rng(4)
    decided = [decide(look(list(rng.normal(current.mean, current.sd, n)), 1), 0.01) for _ in range(2000)]
    assert 0.7 <= sum(d is not None for d in decided) / 2000 <= 0.95


def test_the_minimum_detectable_effect_has_80_percent_power():
    n, mde = 8, minimum_detectable_effect(SD, 8)
    rng = np.random.default_rng(5)
    rejected = sum(stats.ttest_1samp(rng.normal(mde, SD, n), 0.0).pvalue < 0.05 for _ in range(4000)) / 4000
    assert rejected == pytest.approx(0.80, abs=0.03)


def test_holm_decides_in_rounds_at_growing_levels():
    """A clear effect is decided at alpha/2 in the first round; the second setting then gets alpha itself."""
    rng = np.random.default_rng(7)
    strong, weak = list(rng.normal(0.05, SD, 12)), list(rng.normal(0.025, SD, 12))
    alone = verdict(weak, 12, 12, 0.01, alpha=0.05)
    corrected = holm([strong, weak], 12, 12, 0.01)
    assert corrected[0].outcome == "better"
    assert corrected[1].outcome == alone.outcome and corrected[1].look.lo == pytest.approx(alone.look.lo)


def test_the_seeds_to_decide_are_always_more_than_the_seeds_used():
    """On three seeds the t interval is wide: the estimate must not say fewer seeds would have decided it."""
    v = verdict([0.025, 0.05, 0.075], 3, 3, 0.01)
    assert v.outcome == "undecided" and v.seeds_needed > 3
