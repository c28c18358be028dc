"""The verdict rules compared by simulation, in the workflows a user follows: the table in docs/verdict-rules.md.

Each study draws paired differences (setting − control, one per seed) and runs a rule on them as a user would:
looks planned in advance; 3 seeds, then the printed "--max-seeds N" hint followed twice; a decision killed
half-way and resumed with --max-seeds raised; skewed (centred lognormal) and collapsing (10% of seeds at a
large loss, the rest shifted so the mean stays 0) differences. Differences are in units of their sd (the rules
are scale-free). Rules:
- before: the t-interval at level 1 − alpha / L for L planned looks (Bonferroni), looks of 3, as shipped until
  2026-12-03 (re-implemented here, 20 lines);
- now: pipeline.stats.verdict, the t e-process's confidence sequence, with looks of 1 or 3 seeds.

    python benchmarks/verdict_rules.py [--studies 20000]    # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.stats.verdict import Look, first_decisions, running_intervals, seeds_to_decide  # noqa: E402

ALPHA, DELTA = 0.05, 1 / 3  # delta: ±0.01 mAP against a paired sd of 0.03


# --- the rule before: Bonferroni over planned looks -------------------------------------------------------------
def before_outcomes(d: np.ndarray, per_look: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcome (0 undecided, 1 better, 2 worse) and seeds spent, for looks of per_look up to cap."""
    looks = math.ceil(cap / per_look)
    out, spent = np.zeros(len(d), int), np.full(len(d), cap)
    for end in range(per_look, cap + 1, per_look):
        head = d[:, :end]
        se = head.std(axis=1, ddof=1) / math.sqrt(end)
        t = stats.t.ppf(1 - ALPHA / (2 * looks), end - 1)
        lo, hi = head.mean(axis=1) - t * se, head.mean(axis=1) + t * se
        new = (out == 0) & ((lo > 0) | (hi < 0))
        out[new], spent[new] = np.where(lo[new] > 0, 1, 2), end
    return out, spent


def before_hint(head: np.ndarray, looks: int) -> int:
    """The old rule's printed --max-seeds: seeds for 80% power at the observed mean and sd, at one look more."""
    n, mean, sd = len(head), abs(head.mean()), head.std(ddof=1)
    m = np.arange(n + 1, 257)
    fits = _before_quantiles(looks)[m - 2] * sd / np.sqrt(m) < mean
    return int(m[fits.argmax()]) if fits.any() else 257


@functools.lru_cache(maxsize=None)
def _before_quantiles(looks: int) -> np.ndarray:
    df = np.arange(1, 256)
    return stats.t.ppf(1 - ALPHA / (2 * (looks + 1)), df) + stats.t.ppf(0.8, df)


# --- the rule now -------------------------------------------------------------------------------------------------
def now_outcomes(d: np.ndarray, per_look: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    outcome, at = first_decisions(d[:, :cap], DELTA, ALPHA)
    code = np.select([outcome == "better", outcome == "worse", outcome == "equivalent"], [1, 2, 3], 0)
    spent = np.where(at > 0, np.minimum(np.ceil(at / per_look) * per_look, cap), cap)
    return code, spent


def now_hint(head: np.ndarray) -> int:
    mean, sd, lo, hi = (a[-1] for a in running_intervals(head))
    return seeds_to_decide(Look(len(head), mean, sd, lo, hi, 1.0), DELTA) or 257


# --- workflows ------------------------------------------------------------------------------------------------------
def hint_followed_twice(d: np.ndarray, rule: str, cap: int = 48) -> float:
    """3 seeds, then --max-seeds at the printed hint, twice (each at most ``cap``): the share declared."""
    declared = 0
    for row in d:
        n = 3
        for _ in range(3):
            if rule == "before":
                code, _ = before_outcomes(row[None, :n], 3, n)
                hint = before_hint(row[:n], math.ceil(n / 3))
            else:
                code, _ = now_outcomes(row[None, :n], 1, n)
                hint = now_hint(row[:n])
            if code[0] in (1, 2):
                declared += 1
                break
            if code[0] == 3 or n >= cap:
                break
            n = min(max(hint, n + 1), cap)
    return declared / len(d)


def killed_and_resumed(d: np.ndarray, rule: str) -> float:
    """--decide to 12 seeds, killed after 6, resumed with --max-seeds 24: the kept seeds are reused."""
    if rule == "before":  # the resumed run plans its own looks: 3 seeds a look to 24, counting the kept ones
        first, _ = before_outcomes(d[:, :6], 3, 12)
        second, _ = before_outcomes(d[:, :24], 3, 24)
        return float(((first > 0) | (second > 0)).mean())
    code, _ = now_outcomes(d[:, :24], 1, 24)  # the same sequence of seeds: the interval does not care
    return float(np.isin(code, (1, 2)).mean())


def lognormal(rng, s: float, shape) -> np.ndarray:
    x = np.exp(rng.normal(0.0, s, shape))
    return (x - math.exp(s * s / 2)) / math.sqrt((math.exp(s * s) - 1) * math.exp(s * s))


def collapse(rng, share: float, loss: float, shape) -> np.ndarray:
    """A share of seeds lose ``loss`` sd (the setting collapsed), the rest are shifted up so the mean is 0."""
    fell = rng.uniform(size=shape) < share
    return np.where(fell, -loss, rng.normal(0.0, 1.0, shape)) + share * loss


def table(studies: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    null, effect = rng.normal(0, 1, (studies, 48)), rng.normal(1, 1, (studies, 48))
    margin = rng.normal(DELTA, 1, (studies, 48))
    skewed = {f"lognormal s={s}": lognormal(rng, s, (studies, 48)) for s in (0.25, 0.5, 1.0)}
    collapsed = {f"10% collapse at -{c} sd": collapse(rng, 0.1, c, (studies, 48)) for c in (3, 5)}
    few = min(studies, 2000)  # the hint workflow runs study by study
    rows = []
    for name, rule, per_look, cap in (("before", "before", 3, 12), ("before", "before", 3, 15),
                                      ("now", "now", 1, 12), ("now", "now", 1, 15), ("now", "now", 3, 15),
                                      ("now", "now", 1, 24)):
        run = (lambda x: before_outcomes(x, per_look, cap)) if rule == "before" else (lambda x: now_outcomes(x, per_look, cap))
        code, spent = run(effect)
        row = {"rule": name, "seeds per look": per_look, "max seeds": cap,
               "power at 1 sd": float((code == 1).mean()), "expected seeds at 1 sd": float(spent.mean()),
               "false positives, planned looks": float(np.isin(run(null)[0], (1, 2)).mean())}
        if cap == 15 or (rule == "before" and cap == 12):
            row["hint followed twice (to 48)"] = hint_followed_twice(null[:few], rule)
            row["killed at 6, resumed to 24"] = killed_and_resumed(null, rule)
            for label, data in {**skewed, **collapsed}.items():
                row[label] = float(np.isin(run(data)[0], (1, 2)).mean())
            row["equivalent at the margin"] = float((run(margin)[0] == 3).mean()) if rule == "now" else 0.0
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20000)
    args = parser.parse_args()
    import pandas as pd

    from pipeline.report.document import Block, to_markdown

    frame = pd.DataFrame(table(args.studies)).set_index(["rule", "seeds per look", "max seeds"]).T
    frame.columns = [f"{rule}, looks of {k}, max {cap}" for rule, k, cap in frame.columns]
    frame = frame.map(lambda v: "" if v != v else f"{v:.3f}").reset_index(names="")
    print(to_markdown([Block("table", table=frame)]))


if __name__ == "__main__":
    main()
