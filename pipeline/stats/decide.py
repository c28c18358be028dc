"""Seeds until decided: train new seeds of the best setting(s) and of the control, a pack per look, until the
paired difference is decided (pipeline.stats.verdict), or the seeds run out.

The seeds are new (no trial of the search trained them), the same for the control and every setting (so the
difference is paired), and scored on the data set's test split when it has one: the best setting was picked
for its score on the validation split, so its score there is biased upward (the winner's curse), and new
seeds remove only the seed part of that luck. Knows nothing of Optuna or MLflow: the sweep hands it a
function that trains a pack and returns each seed's score.

Failures are data: a seed that a pack returns no score for (its loss diverged) scores FAILED_SCORE, what a
model that detects nothing scores, for that setting on that seed, paired with the other's score as usual.
Dropping it would keep only the seeds on which a fragile setting happened to survive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from pipeline.config import RunConfig
from pipeline.stats.verdict import ALPHA, Verdict, holm, planned_looks, to_record, verdict

DEFAULT_SEEDS_PER_LOOK = 1  # the interval holds at every seed, so a look per seed stops soonest (docs/verdict-rules.md)
DEFAULT_MAX_SEEDS = 15  # 80% power at an effect of one paired sd (docs/verdict-rules.md)
FAILED_SCORE = 0.0  # mAP (and VOC AP) of a model that detects nothing
DEFAULT_DELTA = 0.01  # mAP: differences smaller than this are "equivalent" (the and the chapter's scale)

CONTROL_SEEDS_BEFORE_GIVING_UP = 2  # a control with no finite score on this many seeds ends the decision


class NoControlScore(ValueError):
    """The control scored nothing finite on any seed so far: a metric undefined on the split (COCO gives -1, a NaN
    here, e.g. for small objects where the split has none) or a control that diverges; no verdict can be drawn."""


TrainPack = Callable[[str, RunConfig, list[int]], dict[int, float]]  # (role, config, seeds) -> {seed: score}


@dataclass(frozen=True)
class Plan:
    """How the decision spends seeds."""
    first_seed: int  # the first new seed: the search trained seeds below it
    seeds_per_look: int = DEFAULT_SEEDS_PER_LOOK
    max_seeds: int = DEFAULT_MAX_SEEDS
    delta: float = DEFAULT_DELTA

    @property
    def looks(self) -> int:
        return planned_looks(self.seeds_per_look, self.max_seeds)

    def seeds(self, look: int) -> list[int]:
        """The seeds of look ``look`` (0-based), never past max_seeds."""
        start = look * self.seeds_per_look
        end = min(start + self.seeds_per_look, self.max_seeds)
        return list(range(self.first_seed + start, self.first_seed + end))


@dataclass
class Candidate:
    """A setting under test against the control: its trial, config and scores so far."""
    trial: int
    config: RunConfig
    scores: dict[int, float] = field(default_factory=dict)
    diverged: list[int] = field(default_factory=list)  # seeds scored FAILED_SCORE because they diverged
    look_ends: list[int] = field(default_factory=list)  # paired seeds after each of its looks
    verdict: Verdict | None = None  # set once decided, or at the end

    def diffs(self, control: dict[int, float]) -> tuple[list[int], list[float]]:
        """The paired seeds (scored for both, a diverged one as FAILED_SCORE) and their differences, in order."""
        seeds = [s for s in self.scores if s in control]
        return seeds, [self.scores[s] - control[s] for s in seeds]


def settle(candidates: list[Candidate], control: RunConfig, plan: Plan, train_pack: TrainPack,
           on_look: Callable[[dict], None] = lambda record: None) -> dict:
    """Run the looks until every candidate is decided or the seeds run out; returns the record (JSON-ready),
    which ``on_look`` also gets after every look, so a killed decision leaves what it had."""
    control_scores: dict[int, float] = {}
    control_diverged: list[int] = []
    alpha = ALPHA / len(candidates)  # Bonferroni over the settings while seeds come in: Holm at the end can only add decisions
    for look in range(plan.looks):
        open_ = [c for c in candidates if c.verdict is None]
        if not open_:
            break
        seeds = plan.seeds(look)
        control_scores.update(scored(train_pack("control", control, seeds), seeds, control_diverged))
        check_control_scored(control_scores, control_diverged)
        for candidate in open_:
            candidate.scores.update(scored(train_pack(f"trial {candidate.trial}", candidate.config, seeds), seeds,
                                           candidate.diverged))
            candidate.look_ends.append(len(candidate.diffs(control_scores)[0]))
            current = _verdict_now(candidate, control_scores, plan, alpha)
            if current.outcome != "undecided" or look == plan.looks - 1:
                candidate.verdict = current
        on_look(record(candidates, control_scores, plan, final=False, control_diverged=control_diverged))
    diffs = [c.diffs(control_scores)[1] for c in candidates]
    for candidate, final in zip(candidates, holm(diffs, plan.seeds_per_look, plan.max_seeds, plan.delta,
                                                 look_ends=[c.look_ends for c in candidates])):
        candidate.verdict = final  # one candidate: Holm is its own rule at alpha
    return record(candidates, control_scores, plan, final=True, control_diverged=control_diverged)


def check_control_scored(control_scores: dict[int, float], control_diverged: list[int]) -> None:
    """Raise NoControlScore once CONTROL_SEEDS_BEFORE_GIVING_UP seeds of the control all scored nothing finite:
    pairing failures against failures would read as 'equivalent, [0, 0]'."""
    if len(control_scores) >= CONTROL_SEEDS_BEFORE_GIVING_UP and set(control_scores) <= set(control_diverged):
        seeds = sorted(control_scores)
        raise NoControlScore(
            f"the control scored no finite value on any of seeds {seeds[0]}-{seeds[-1]}: the objective is undefined on "
            "this split (COCO reports -1 where the split has no objects of that kind, e.g. no small objects for "
            "map_small) or the control diverges on every seed; no verdict is drawn. Choose an objective the split "
            "defines, or check the control's training")


def scored(scores: dict[int, float], seeds: list[int], diverged: list[int]) -> dict[int, float]:
    """Every seed of the pack scored: one with no finite score counts as FAILED_SCORE, and joins ``diverged``."""
    out = {}
    for s in seeds:
        value = scores.get(s)
        if value is None or not math.isfinite(value):
            value = FAILED_SCORE
            diverged.append(s)
        out[s] = value
    return out


def _verdict_now(candidate: Candidate, control: dict[int, float], plan: Plan, alpha: float) -> Verdict:
    return verdict(candidate.diffs(control)[1], plan.seeds_per_look, plan.max_seeds, plan.delta, alpha,
                   candidate.look_ends)


def record(candidates: list[Candidate], control: dict[int, float], plan: Plan, final: bool,
           control_diverged: list[int] = ()) -> dict:
    """What the study keeps: the plan, each candidate's verdict and its paired seeds' scores. Before the end
    (``final`` False: kept after every look, so a killed decision leaves what it had) a candidate still open
    carries its evidence so far, with the verdict 'pending'."""
    rows = []
    for c in candidates:
        seeds, diffs = c.diffs(control)
        # an open candidate's evidence at the level it is decided at (alpha over the settings), never more decided
        pending = {"verdict": "pending", "decided_at": None, "within_delta": False}
        evidence = to_record(c.verdict if c.verdict is not None
                             else _verdict_now(c, control, plan, ALPHA / len(candidates)))
        rows.append({"trial": c.trial, "seeds": seeds, "scores": [c.scores[s] for s in seeds],
                     "control": [control[s] for s in seeds], "diffs": diffs, "look_ends": list(c.look_ends),
                     "diverged": sorted(set(c.diverged)), "control_diverged": sorted(set(control_diverged) & set(seeds)),
                     **evidence, **({} if c.verdict is not None else pending)})
    return {"final": final, "delta_margin": plan.delta, "max_seeds": plan.max_seeds,
            "seeds_per_look": plan.seeds_per_look, "planned_looks": plan.looks, "candidates": rows,
            "holm": len(candidates) > 1}
