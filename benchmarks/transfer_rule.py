"""The sheet's rule for "a cheap study's effects carry over to the chapter's protocol", checked by simulation in
the workflow a user follows: the table in docs/transfer.md.

A pair of studies tests the same settings against their controls on paired seeds, one at the quick profile and one
at the chapter's protocol (or a rung). The rule (pipeline.report.transfer_section.is_shown, on
pipeline.report.transfer.agreement, the code the sheet runs) says the cheap study's effects carry over; the sheet
then counts its verdicts as the chapter's answers. What a user does: trains 5 paired seeds a side (the rule's
least), regenerates the sheet, and adds a seed at a time up to 15, regenerating it after each; the rule is read at
every look. Measured, per scenario of true effects at the chapter's protocol:
- how often the pair's transfer is shown (signs, Kendall's τ) at 5 seeds, and at some look up to 15;
- how often a verdict is carried as the chapter's answer at some look while its setting's true effect there is 0
  or of the other sign: by the rule before 2026-12-05 (every verdict of a pair shown), and by the rule now (only
  a setting whose own sign the chapter's protocol decides the same way, pipeline.report.transfer.decided_there);
- the share of the right verdicts the rule now carries by 15 seeds (its price).

Differences are drawn as mAP: each seed's shared control noise plus each setting's own, with the sds measured on
loss-weights (quick and the 128-px rung, 5 paired seeds, docs/transfer.md); normal, or Student t with 3 degrees of
freedom (heavy tails) scaled to the same sd.

    python benchmarks/transfer_rule.py [--studies 400] [--resamples 500]    # about 5 minutes on 2 cores
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
from pipeline.report.transfer import agreement, decided_there  # noqa: E402
from pipeline.report.transfer_section import is_shown  # noqa: E402

SETTINGS = ["box_weight=4", "box_weight=2", "box_weight=0.5", "box_weight=0.25"]
QUICK_EFFECT = np.array([0.070, 0.043, -0.027, -0.042])  # mean paired Δ, quick profile, 5 seeds
RUNG_EFFECT = np.array([0.082, 0.028, -0.008, -0.013])  # mean paired Δ, 128-px rung, 5 seeds
QUICK_SD = np.array([0.053, 0.020, 0.012, 0.021])  # sd of the paired Δ over the seeds
RUNG_SD = np.array([0.042, 0.005, 0.013, 0.008])
CONTROL_SHARE = 0.5  # share of a Δ's variance that is the control's, common to every setting on a seed
FIRST, LAST = 5, 15

SCENARIOS = {
    "carries, as measured at the rung": RUNG_EFFECT,
    "carries, shrunk to a third": QUICK_EFFECT / 3,
    "one setting has no effect there (box 0.5)": RUNG_EFFECT * np.array([1, 1, 0, 1]),
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
    """The sheet's rules on one pair of studies' paired differences: whether the pair's transfer is shown (the
    rule before 2026-12-05 carried every verdict of the cheap study on this alone), and which settings' verdicts
    are carried now (shown, and the setting's own sign decided the same way at the chapter's protocol)."""
    effects = pd.DataFrame({"setting": SETTINGS, "diffs_quick": list(quick), "diffs_chapter": list(chapter),
                            "delta_quick": quick.mean(axis=1), "delta_chapter": chapter.mean(axis=1)})
    shown = is_shown(agreement(effects, resamples=resamples), effects)
    return shown, (decided_there(effects).to_numpy() if shown else np.zeros(len(SETTINGS), bool))


def one_study(rng, chapter_effect: np.ndarray, tails: str, resamples: int) -> dict:
    """One simulated pair, the rules read after each seed from 5 to 15 a side."""
    quick = draw(rng, QUICK_EFFECT, QUICK_SD, LAST, tails)
    chapter = draw(rng, chapter_effect, RUNG_SD, LAST, tails)
    looks = [pair_outcome(quick[:, :n], chapter[:, :n], resamples) for n in range(FIRST, LAST + 1)]
    wrong = np.sign(chapter_effect) != np.sign(QUICK_EFFECT)  # a cheap verdict on it claims a sign it lacks there
    carried_ever = np.any([settings for _, settings in looks], axis=0)
    return {"shown at 5 seeds": looks[0][0], "shown at some look": any(shown for shown, _ in looks),
            "wrong verdict carried, rule before": any(shown for shown, _ in looks) and bool(wrong.any()),
            "wrong verdict carried, rule now": bool((carried_ever & wrong).any()),
            "right verdicts carried by 15 seeds, rule now": (float(looks[-1][1][~wrong].mean()) if (~wrong).any()
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
    parser.add_argument("--studies", type=int, default=400)
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
