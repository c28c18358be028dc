"""Does a regression-adjusted (control-variate) verdict keep its error rate? A simulation, run before shipping one.

With one shared control trained on many seeds, a setting's score on seed s can be compared with the control's
mean over all its seeds, less the part of the seed's luck the control's score on s predicts:
r_s = x_s - c̄ - b̂ (c_s - c̄), with b̂ fitted on the seeds before s (predictable) and c̄ the shared control's
mean over its N seeds. When the setting's and control's scores on a seed are correlated but not equally spread,
r_s varies less than the paired difference x_s - c_s. This script measures, for the shipped confidence sequence
(pipeline.stats.verdict) applied to r_s instead of x_s - c_s:

- the false-positive rate with no true difference (planned seeds, and 3 seeds then extended to 24);
- the power and expected seeds at an effect of one paired sd, against the paired rule on the same draws.

    python benchmarks/control_variate.py [--studies 4000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.stats.verdict import first_decisions  # noqa: E402

DELTA = 0.0  # no equivalence claims: only better and worse count as decisions here


def draws(rng, studies: int, seeds: int, control_seeds: int, slope: float, noise: float, effect: float):
    """Control scores on control_seeds seeds (the candidate's paired seeds are the first ``seeds`` of them) and the
    candidate's: x = effect + slope * c + e, e ~ N(0, noise²), c ~ N(0, 1)."""
    c = rng.standard_normal((studies, control_seeds))
    x = effect + slope * c[:, :seeds] + noise * rng.standard_normal((studies, seeds))
    return c, x


def adjusted(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """r_s = x_s - c̄ - b̂_{s-1} (c_s - c̄): b̂ the least-squares slope of x on c over the seeds before s (1 before
    three seeds, which is the paired difference), c̄ the control's mean over all its seeds."""
    n = x.shape[1]
    cbar = c.mean(axis=1, keepdims=True)
    cs = c[:, :n] - cbar
    slopes = np.ones_like(x)
    for s in range(3, n):
        cc, xx = cs[:, :s] - cs[:, :s].mean(1, keepdims=True), x[:, :s] - x[:, :s].mean(1, keepdims=True)
        slopes[:, s] = (cc * xx).sum(1) / np.maximum((cc * cc).sum(1), 1e-12)
    return x - cbar - slopes * cs


def rates(d: np.ndarray) -> tuple[float, float]:
    """(share decided better or worse, mean seeds used) of the confidence sequence on differences d."""
    outcome, at = first_decisions(d, DELTA)
    decided = np.isin(outcome, ["better", "worse"])
    return float(decided.mean()), float(np.where(decided, at, d.shape[1]).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=4000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| slope b, residual sd | control seeds | candidate seeds | rule | false positives (no effect) | "
          "power at 1 paired sd | mean seeds at 1 paired sd |")
    print("|---|---|---|---|---|---|---|")
    for slope, noise in ((0.5, 0.3), (1.0, 0.3), (0.2, 0.9)):  # (0.5, 0.3): residuals 0.5x the paired sd
        paired_sd = np.sqrt((slope - 1) ** 2 + noise ** 2)
        for control_seeds, seeds in ((15, 15), (30, 15), (24, 24)):
            c0, x0 = draws(rng, args.studies, seeds, control_seeds, slope, noise, 0.0)
            c1, x1 = draws(rng, args.studies, seeds, control_seeds, slope, noise, paired_sd)
            for rule, diff in (("paired", lambda c, x: x - c[:, :x.shape[1]]), ("control variate", adjusted)):
                fp, _ = rates(diff(c0, x0))
                power, used = rates(diff(c1, x1))
                print(f"| {slope}, {noise} | {control_seeds} | {seeds} | {rule} | {fp:.3f} | {power:.3f} | {used:.1f} |")


if __name__ == "__main__":
    main()
