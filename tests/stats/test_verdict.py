"""The verdict rule, checked by simulating the workflows a user follows (benchmarks/verdict_rules.py is the same
code at a larger scale, for docs/verdict-rules.md): looks planned in advance, the printed hint followed twice, a
decision killed and resumed with more seeds, skewed and collapsing differences, equivalence at the margin. The
rule before (Bonferroni over planned looks) fails the extension workflows here, which shows the simulations can
fail. Also: the e-value is the likelihood ratio it claims to be, Holm keeps a family's rate, and the hints."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from benchmarks.verdict_rules import (DELTA, before_outcomes, collapse, hint_followed_twice, killed_and_resumed,
                                      lognormal, now_outcomes)
from pipeline.stats.verdict import (_log_normal_prior_ratio, _log_point_ratio, critical_t, decide, first_decisions,
                                    holm, log_e_value, look, minimum_detectable_effect, seeds_to_decide, verdict)

STUDIES = 20000  # vectorised: a few seconds for all the workflows below
PROMISE = 0.05


def declared(codes) -> float:
    return float(np.isin(codes, (1, 2)).mean())


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


# --- the e-value is what it says ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,t", [(5, 2.0), (8, -1.3), (12, 4.0)])
def test_the_point_part_is_the_non_central_to_central_t_ratio(n, t):
    shift = math.sqrt(n)
    ref = np.logaddexp(stats.nct.logpdf(t, n - 1, shift), stats.nct.logpdf(t, n - 1, -shift)) - math.log(2)
    assert _log_point_ratio(t, n, 1.0) == pytest.approx(ref - stats.t.logpdf(t, n - 1), abs=1e-9)


def test_the_normal_prior_part_integrates_the_scale_out_under_the_right_haar_prior():
    d = np.array([0.9, -0.2, 1.4, 0.3, 0.8])
    n, t = len(d), d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))

    def marginal(prior_var):
        def lik(sd, effect):
            return np.prod(stats.norm.pdf(d, effect * sd, sd)) / sd
        if prior_var is None:
            return integrate.quad(lambda sd: lik(sd, 0.0), 0, np.inf)[0]
        return integrate.dblquad(lambda sd, e: lik(sd, e) * stats.norm.pdf(e, 0, math.sqrt(prior_var)),
                                 -np.inf, np.inf, 0, np.inf)[0]
    assert math.exp(_log_normal_prior_ratio(t, n, 1.0)) == pytest.approx(marginal(1.0) / marginal(None), rel=1e-6)


def test_the_critical_t_is_where_the_e_value_reaches_one_over_alpha():
    for n in (5, 8, 15, 60):
        assert log_e_value(critical_t(n), n) == pytest.approx(math.log(20), abs=1e-6)
    assert math.isinf(critical_t(4))  # four seeds cannot reach 20, whatever they show


# --- the workflows ---------------------------------------------------------------------------------------------------
def test_planned_looks_declare_at_most_5_percent_with_no_true_difference(rng):
    null = rng.normal(0, 1, (STUDIES, 15))
    assert declared(now_outcomes(null, 3, 12)[0]) <= PROMISE
    assert declared(now_outcomes(null, 1, 15)[0]) <= PROMISE


def test_the_hint_followed_twice_keeps_the_promise_where_the_rule_before_broke_it(rng):
    null = rng.normal(0, 1, (1500, 48))
    assert hint_followed_twice(null, "now") <= PROMISE
    assert hint_followed_twice(null, "before") > 0.065  # 8% measured: the number


def test_killed_and_resumed_with_more_seeds_keeps_the_promise(rng):
    null = rng.normal(0, 1, (STUDIES, 24))
    assert killed_and_resumed(null, "now") <= PROMISE
    assert killed_and_resumed(null, "before") > PROMISE


def test_mildly_skewed_and_collapsing_differences_keep_the_promise(rng):
    """The envelope docs/verdict-rules.md states: centred lognormal of shape 0.25 (skewness 0.8), and 10% of
    seeds collapsing by 3 paired sd (a diverged seed at 0 mAP against a control near 0.1, paired sd 0.03). Heavier
    skew bends it, as it does every rule on a mean from a dozen seeds (measured there)."""
    assert declared(now_outcomes(lognormal(rng, 0.25, (STUDIES, 15)), 1, 15)[0]) <= PROMISE
    assert declared(now_outcomes(-lognormal(rng, 0.25, (STUDIES, 15)), 1, 15)[0]) <= PROMISE
    assert declared(now_outcomes(collapse(rng, 0.1, 3.0, (STUDIES, 15)), 1, 15)[0]) <= PROMISE


def test_equivalence_is_not_declared_at_the_margin(rng):
    for sign in (1, -1):
        at_margin = rng.normal(sign * DELTA, 1, (STUDIES, 48))
        outcome, _ = first_decisions(at_margin, DELTA)
        assert (outcome == "equivalent").mean() <= PROMISE


def test_at_one_paired_sd_it_spends_no_more_seeds_than_the_rule_before_at_the_same_most_seeds(rng):
    effect = rng.normal(1, 1, (STUDIES, 15))
    now_codes, now_spent = now_outcomes(effect, 1, 15)
    before_codes, before_spent = before_outcomes(effect, 3, 15)
    assert now_spent.mean() <= before_spent.mean()
    assert (now_codes == 1).mean() >= 0.78  # 80% power at the default --max-seeds 15
    assert (now_codes == 2).mean() == 0


def test_holm_keeps_the_family_wise_rate_of_three_null_settings_sharing_a_control(rng):
    any_declared = 0
    for _ in range(1000):
        control = rng.normal(0, 1, 15)
        settings = [rng.normal(0, 1, 15) for _ in range(3)]
        diffs = [list(s - control) for s in settings]  # correlated through the shared control
        any_declared += any(v.outcome in ("better", "worse") for v in holm(diffs, 1, 15, DELTA))
    assert any_declared / 1000 <= PROMISE


def test_holm_decides_in_rounds_at_growing_levels(rng):
    strong, weak = list(rng.normal(2.0, 1, 15)), list(rng.normal(1.0, 1, 15))
    corrected = holm([strong, weak], 1, 15, DELTA)
    alone = verdict(weak, 1, 15, DELTA)
    assert corrected[0].outcome == "better"
    assert corrected[1].outcome == alone.outcome and corrected[1].look.lo == pytest.approx(alone.look.lo)


# --- by hand -----------------------------------------------------------------------------------------------------
def test_decisions_by_hand():
    assert decide(look([0.02, 0.021, 0.019, 0.02, 0.022]), 0.01) == "better"
    assert decide(look([-0.02, -0.021, -0.019, -0.02, -0.022]), 0.01) == "worse"
    assert decide(look([0.02, 0.021, 0.019, 0.02]), 0.01) is None  # four seeds decide nothing
    undecided = verdict([0.05, -0.04, 0.03, -0.02], 2, 4, 0.01)
    assert undecided.outcome == "undecided" and undecided.looks == 2 and undecided.seeds_needed > 4


def test_a_real_difference_smaller_than_the_margin_reads_better_by_less_than_delta():
    v = verdict([0.0050, 0.0052, 0.0049, 0.0051, 0.0050, 0.0048], 1, 15, 0.01)
    assert v.outcome == "better" and v.within_delta and v.as_dict()["within_delta"]
    assert not verdict([0.05, 0.052, 0.049, 0.051, 0.05], 1, 15, 0.01).within_delta


def test_the_interval_is_the_running_intersection_and_decides_at_the_first_seed_that_can():
    v = verdict([0.02, 0.021, 0.019, 0.02, 0.022, 0.018, 0.02], 1, 15, 0.01)
    assert v.decided_at == 5 and v.look.n == 7 and v.look.lo > 0
    widths = [look([0.02, 0.021, 0.019, 0.02, 0.022, 0.018, 0.02][:n]) for n in range(5, 8)]
    assert all(b.hi - b.lo <= a.hi - a.lo for a, b in zip(widths, widths[1:]))


def test_the_seeds_to_decide_estimate_decides_about_as_often_as_its_power_says(rng):
    """Where the estimate says n seeds, studies at the observed mean and sd decide by n in roughly 80%."""
    current = look([0.9, -0.3, 1.6, 0.2, 1.1, 0.4])  # mean 0.65, sd 0.68: undecided at 6 seeds
    n = seeds_to_decide(current, delta=DELTA)
    outcome, _ = first_decisions(rng.normal(current.mean, current.sd, (4000, n)), DELTA)
    assert decide(current, DELTA) is None and n > 6
    assert 0.75 <= (outcome != "undecided").mean() <= 0.95


def test_the_minimum_detectable_effect_has_about_80_percent_power(rng):
    n = 12
    mde = minimum_detectable_effect(1.0, n)
    outcome, _ = first_decisions(rng.normal(mde, 1.0, (8000, n)), DELTA)
    assert 0.75 <= (outcome == "better").mean() <= 0.92
    assert math.isinf(minimum_detectable_effect(1.0, 4))


def test_the_record_is_read_under_its_name_and_from_stores_that_kept_it_under_verdict():
    from pipeline.stats.verdict import stored_record
    record = {"candidates": [{"trial": 1, "verdict": "better"}], "delta_margin": 0.01}
    assert stored_record({"verdict": "better", "verdict_record": record}) is record  # today: outcome + record
    assert stored_record({"verdict": record}) is record  # a store written before the record had its own name
    assert stored_record({"verdict": "better"}) is None and stored_record({}) is None
