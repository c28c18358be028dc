"""The confirmation statistics on hand-computable values, against scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.report.stats import mean_ci, paired_comparison


def test_mean_ci_is_the_t_interval():
    ci = mean_ci([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd of 1, 2, 3 is 1
    assert ci["mean"] == 2.0 and ci["sd"] == 1.0
    assert ci["lo"] == pytest.approx(2 - half) and ci["hi"] == pytest.approx(2 + half)
    assert math.isnan(mean_ci([0.5])["lo"])


def test_paired_comparison_effect_size_p_and_noise():
    clear = paired_comparison([1.0, 2.0, 3.0, 4.0], [0.0, 1.1, 1.9, 3.0])  # diffs 1, .9, 1.1, 1
    assert clear["diff_mean"] == pytest.approx(1.0)
    assert clear["effect_size"] == pytest.approx(1.0 / np.std([1, 0.9, 1.1, 1], ddof=1))
    assert clear["p"] == pytest.approx(stats.ttest_rel([1, 2, 3, 4], [0, 1.1, 1.9, 3]).pvalue)
    assert clear["within_noise"] is False
    noisy = paired_comparison([1.0, 0.0, 1.0], [0.0, 1.0, 0.5])
    assert noisy["within_noise"] is True and noisy["diff_lo"] < 0 < noisy["diff_hi"]
    assert paired_comparison([1.0], [0.0])["within_noise"] is None  # one seed: no test
