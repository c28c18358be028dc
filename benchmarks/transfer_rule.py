"""The sheet's rule for carrying a cheap study's verdict to the chapter's protocol, checked by simulation in the
workflow a user follows: the table in docs/transfer.md.

A pair of studies tests the same four settings against their controls on paired seeds, one at the quick profile
and one at the chapter's protocol, as the quick-winners design does (each setting is a verdict on the sheet: a
search's sheet row is only its best setting). The quick side is done first: 15 paired seeds, its verdicts
Holm-corrected over the four (pipeline.stats.verdict.holm, the design's rule). Then the user trains the chapter
side, 5 paired seeds (the transfer rule's least), makes the sheet, and adds a seed at a time up to 15, making the
sheet after each; the rules are read at every look. A verdict is carried wrongly when it claims better or worse
and the setting's true effect at the chapter's protocol is 0 or of the other sign. Measured, per scenario of
true effects at the chapter's protocol:
- how often the pair's transfer is shown (signs, Kendall's τ: pipeline.report.transfer_section.is_shown) at 5
  seeds, and at some look up to 15;
- how often some verdict is carried wrongly at some look: by the rule before 2026-12-05 (every better or worse
  verdict of a pair shown) and by the rule now (only where the setting's own sign, decided at the chapter's
  protocol by its confidence sequence, is the verdict's: pipeline.report.transfer.signs_there);
- the share of the right verdicts (better or worse, and right there) the rule now carries by 15 seeds: its price.

Differences are drawn as mAP: each seed's shared control noise plus each setting's own, with the sds measured on
loss-weights (quick and the 128-px rung, 5 paired seeds, docs/transfer.md); normal, or Student t with 3 degrees of
freedom (heavy tails) scaled to the same sd.

    python benchmarks/transfer_rule.py [--studies 200] [--resamples 500]    # about 30 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.report.document import Block, to_markdown  # noqa: E402
from pipeline.report.transfer import agreement, signs_there  # noqa: E402
from pipeline.report.transfer_section import is_shown  # noqa: E402
from pipeline.stats.verdict import holm  # noqa: E402

SETTINGS = ["box_weight=4", "box_weight=2", "box_weight=0.5", "box_weight=0.25"]
QUICK_EFFECT = np.array([0.070, 0.043, -0.027, -0.042])  # mean paired Δ, quick profile, 5 seeds
RUNG_EFFECT = np.array([0.082, 0.028, -0.008, -0.013])  # mean paired Δ, 128-px rung, 5 seeds
QUICK_SD = np.array([0.053, 0.020, 0.012, 0.021])  # sd of the paired Δ over the seeds
RUNG_SD = np.array([0.042, 0.005, 0.013, 0.008])
CONTROL_SHARE = 0.5  # share of a Δ's variance that is the control's, common to every setting on a seed
FIRST, LAST = 5, 15
DELTA = 0.01  # the verdicts' equivalence margin (sweep --delta)

SCENARIOS = {
    "carries, as measured at the rung": RUNG_EFFECT,
    "carries, shrunk to a third": QUICK_EFFECT / 3,
    "one setting has no effect there (box 0.5)": RUNG_EFFECT * np.array([1, 1, 0, 1]),
    "the best has no effect there (box 4)": RUNG_EFFECT * np.array([0, 1, 1, 1]),
    "one setting turns (box 0.5 at +0.008)": RUNG_EFFECT * np.array([1, 1, -1, 1]),
    "two settings have no effect there (0.5, 0.25)": RUNG_EFFECT * np.array([1, 1, 0, 0]),
    "no effect there at all": np.zeros(4),
    "the order within each sign reversed": RUNG_EFFECT[[1, 0, 3, 2]],
}


def draw(rng: np.random.Generator, effect: np.ndarray, sd: np.ndarray, seeds: int, tails: str) -> np.ndarray:
    """[settings, seeds] paired differences: a control term shared by every setting on a seed, plus each one's."""
    def noise(shape):
        if tails == "normal":
            return rng.standard_normal(shape)
        return rng.standard_t(3, shape) / np.sqrt(3.0)  # t(3) has variance 3
    shared = noise((1, seeds)) * np.sqrt(CONTROL_SHARE) * sd[:, None]
    own = noise((len(effect), seeds)) * np.sqrt(1 - CONTROL_SHARE) * sd[:, None]
    return effect[:, None] + shared + own


def pair_outcome(quick: np.ndarray, chapter: np.ndarray, resamples: int) -> tuple[bool, np.ndarray]:
    """The sheet's rules on one pair of studies' paired differences: whether the pair's transfer is shown, and
    each setting's sign as the chapter side decides it ("better", "worse" or "")."""
    effects = pd.DataFrame({"setting": SETTINGS, "diffs_quick": list(quick), "diffs_chapter": list(chapter),
                            "delta_quick": quick.mean(axis=1), "delta_chapter": chapter.mean(axis=1)})
    return is_shown(agreement(effects, resamples=resamples), effects), signs_there(effects).to_numpy()


def one_study(rng, chapter_effect: np.ndarray, tails: str, resamples: int) -> dict:
    """One simulated pair: the quick side's verdicts on 15 seeds, the chapter side read after each seed from 5."""
    quick = draw(rng, QUICK_EFFECT, QUICK_SD, LAST, tails)
    chapter = draw(rng, chapter_effect, RUNG_SD, LAST, tails)
    claims = np.array([v.outcome for v in holm([list(d) for d in quick], 1, LAST, DELTA)])
    claimed = np.isin(claims, ["better", "worse"])
    truth = np.where(chapter_effect > 0, "better", np.where(chapter_effect < 0, "worse", "none"))
    wrong = claimed & (claims != truth)
    looks = [pair_outcome(quick, chapter[:, :n], resamples) for n in range(FIRST, LAST + 1)]
    shown_ever = any(shown for shown, _ in looks)
    carried = [shown & claimed & (signs == claims) for shown, signs in looks]
    right = claimed & ~wrong
    return {"shown at 5 seeds": looks[0][0], "shown at some look": shown_ever,
            "wrong verdict carried, rule before": shown_ever and bool(wrong.any()),
            "wrong verdict carried, rule now": bool((np.any(carried, axis=0) & wrong).any()),
            "right verdicts carried by 15 seeds, rule now": (float(carried[-1][right].mean()) if right.any()
                                                             else np.nan)}


def rows(studies: int, resamples: int, seed: int = 0):
    """One row per scenario and tail, as each is measured: the share of simulated pairs (of the right verdicts,
    for the last column)."""
    rng = np.random.default_rng(seed)
    for tails in ("normal", "t3"):
        for name, effect in SCENARIOS.items():
            outcomes = pd.DataFrame([one_study(rng, effect, tails, resamples) for _ in range(studies)])
            yield {"scenario": name, "tails": tails, **{k: float(v) for k, v in outcomes.mean().items()},
                   "studies": studies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    measured = []
    for row in rows(args.studies, args.resamples):
        measured.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # a cut-short run keeps what it measured
    table = pd.DataFrame(measured).map(lambda v: f"{v:.3f}" if isinstance(v, float) else v)
    print(json.dumps(measured, indent=1) if args.json else to_markdown([Block("table", table=table)]))


if __name__ == "__main__":
    main()
