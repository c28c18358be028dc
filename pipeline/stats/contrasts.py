"""Seeds until decided, for a designed question: every cell trains the same new seeds, and each contrast (weights
over cells summing to 0: a knob's effect at matched balance, an interaction) is decided on its per-seed values
Σ w·score, paired through the seeds, with the confidence sequence of pipeline.stats.verdict: the promise that
survives extensions and resumes holds here too. While seeds come in, each open contrast is tried at alpha over
the contrasts (Bonferroni); at the end Holm's step-down over them. A seed that diverged scores FAILED_SCORE in its
cell, as in any verdict. Knows nothing of Optuna or MLflow: the caller hands in a function that trains a cell's
seeds and returns their scores.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Collection

import numpy as np

from pipeline.config import RunConfig
from pipeline.stats.decide import CONTROL_SEEDS_BEFORE_GIVING_UP, Plan, TrainPack, check_control_scored, scored
from pipeline.stats.verdict import ALPHA, holm, to_record, verdict
from pipeline.stats.noise import sd_interval

KeptScores = Callable[[str, RunConfig, list[int]], dict[int, float | None]]  # the kept seeds only, None: diverged


def contrast_values(weights: dict[str, float], scores: dict[str, dict[int, float]]) -> tuple[list[int], list[float]]:
    """The seeds every cell of the contrast has scored, in order, and Σ w·score on each."""
    seeds = sorted(set.intersection(*(set(scores[cell]) for cell in weights)))
    return seeds, [float(sum(w * scores[cell][s] for cell, w in weights.items())) for s in seeds]


def cell_role(cell: str, control: str) -> str:
    """The role a cell's packs train and are kept under: "control" for the control cell (the store shares it)."""
    return "control" if cell == control else f"cell {cell}"


def secondary_rows(contrasts: dict[str, dict[str, float]], scores: dict[str, dict[int, float]], plan: Plan) -> list[dict]:
    """Each contrast on a secondary outcome: Σ w·score on the seeds every cell has, with the confidence sequence's
    interval at alpha over the contrasts. Reported beside the decided contrasts; it never decides when to stop."""
    rows = []
    for name, weights in contrasts.items():
        seeds, values = contrast_values(weights, scores)
        evidence = to_record(verdict(values, plan.seeds_per_look, plan.max_seeds, plan.delta, ALPHA / len(contrasts))) \
            if len(values) >= 2 else {"verdict": "undecided", "delta": float(np.mean(values)) if values else math.nan,
                                      "delta_ci95": [-math.inf, math.inf]}
        rows.append({"contrast": name, "seeds": seeds, "values": values, **evidence})
    return rows


def settle_contrasts(cells: dict[str, RunConfig], contrasts: dict[str, dict[str, float]], control: str, plan: Plan,
                     train_pack: TrainPack, on_look: Callable[[dict], None] = lambda record: None,
                     chosen: Collection[str] | None = None, read_kept: KeptScores | None = None) -> dict:
    """Look after look, train one pack of the look's seeds per cell whose contrasts are still open, until every
    contrast is decided or the seeds run out; returns the record (JSON-ready), which ``on_look`` gets after every
    look. The ``control`` cell trains under the role "control", so a store shares it with every other verdict.

    ``chosen`` (default: all) names the contrasts that take new seeds. The others are read first, on every seed
    kept in a row for their cells (``read_kept``, none trained), so that no record, even one kept mid-run, says
    less than the store holds; they are decided where those seeds decide them (the first seed that decides fixes
    the outcome, as at any look), and left pending otherwise, for a run that chooses them. Each contrast is tried
    at the same alpha over all of them: one that stops taking seeds keeps its promise (the interval holds at any
    stopping time), and none of the others gains alpha from it. Holm's step-down is applied only once every
    contrast is decided."""
    chosen = set(contrasts if chosen is None else chosen)
    waiting = {cell for name in contrasts if name not in chosen for cell in contrasts[name]}
    scores, diverged = _kept_in_a_row(waiting if read_kept else set(), cells, control, plan, read_kept)
    decided: dict[str, object] = {}
    for look in range(plan.looks):
        open_ = [name for name in contrasts if name not in decided]
        seeds = plan.seeds(look)
        trained = _cells_to_train([name for name in open_ if name in chosen], contrasts, control, scores)
        if not trained:
            break
        for cell in sorted(trained):
            role = cell_role(cell, control)
            scores[cell].update(scored(train_pack(role, cells[cell], seeds), seeds, diverged[cell]))
            if role == "control":
                check_control_scored(scores[cell], diverged[cell])
        decided.update(_decided_now(open_, contrasts, scores, plan, last=look == plan.looks - 1, chosen=chosen))
        on_look(record(contrasts, scores, diverged, plan, decided, final=False))
    decided.update(_decided_now([name for name in contrasts if name not in decided], contrasts, scores, plan,
                                last=True, chosen=chosen))  # the waiting ones, on their kept seeds
    if len(decided) < len(contrasts):  # some were not chosen: they wait, pending, for a run that chooses them
        return record(contrasts, scores, diverged, plan, decided, final=False)
    finals = holm([contrast_values(w, scores)[1] for w in contrasts.values()], plan.seeds_per_look, plan.max_seeds,
                  plan.delta)
    return record(contrasts, scores, diverged, plan, dict(zip(contrasts, finals)), final=True)


def _kept_in_a_row(read: set[str], cells: dict[str, RunConfig], control: str, plan: Plan,
                   read_kept: KeptScores | None) -> tuple[dict[str, dict[int, float]], dict[str, list[int]]]:
    """Each cell's scores and diverged seeds to start from: for the cells in ``read``, the plan's seeds kept in a
    row from its first (a seed order with gaps would be a second test); none for the others."""
    scores: dict[str, dict[int, float]] = {cell: {} for cell in cells}
    diverged: dict[str, list[int]] = {cell: [] for cell in cells}
    planned = [s for look in range(plan.looks) for s in plan.seeds(look)]
    for cell in sorted(read):
        have = read_kept(cell_role(cell, control), cells[cell], planned)
        in_a_row = list(itertools.takewhile(lambda s: s in have, planned))
        scores[cell].update(scored(have, in_a_row, diverged[cell]))
    return scores, diverged


def _cells_to_train(training: list[str], contrasts: dict[str, dict[str, float]], control: str,
                    scores: dict[str, dict[int, float]]) -> set[str]:
    """The cells of the contrasts taking seeds, and the control while it has too few seeds to tell whether it
    scores at all (a chosen contrast need not pair against it, e.g. a knob's effect at another balance)."""
    cells = {c for name in training for c in contrasts[name]}
    if training and len(scores[control]) < CONTROL_SEEDS_BEFORE_GIVING_UP:
        cells.add(control)
    return cells


def _decided_now(open_: list[str], contrasts: dict[str, dict[str, float]], scores: dict[str, dict[int, float]],
                 plan: Plan, last: bool, chosen: set[str]) -> dict[str, object]:
    """The open contrasts decided at this look (alpha over all the contrasts): better, worse or equivalent, or
    undecided at the last look for one that took seeds or has every seed of the plan."""
    out = {}
    for name in open_:
        values = contrast_values(contrasts[name], scores)[1]
        now = verdict(values, plan.seeds_per_look, plan.max_seeds, plan.delta, ALPHA / len(contrasts)) \
            if values else None
        if now and (now.outcome != "undecided" or (last and (name in chosen or len(values) >= plan.max_seeds))):
            out[name] = now
    return out


def record(contrasts: dict[str, dict[str, float]], scores: dict[str, dict[int, float]],
           diverged: dict[str, list[int]], plan: Plan, decided: dict, final: bool) -> dict:
    """What the study keeps: each contrast's verdict and per-seed values, and each cell's scores and spread."""
    rows = []
    for name, weights in contrasts.items():
        seeds, values = contrast_values(weights, scores)
        evidence = to_record(decided[name]) if name in decided else {
            **to_record(verdict(values, plan.seeds_per_look, plan.max_seeds, plan.delta, ALPHA / len(contrasts))),
            "verdict": "pending", "decided_at": None, "within_delta": False}
        rows.append({"contrast": name, "weights": weights, "seeds": seeds, "values": values, **evidence})
    return {"final": final, "delta_margin": plan.delta, "max_seeds": plan.max_seeds, "contrasts": rows,
            "cells": {cell: {"scores": {str(s): v for s, v in sorted(by_seed.items())},
                             "diverged": sorted(set(diverged[cell])), **spread(list(by_seed.values()))}
                      for cell, by_seed in scores.items()}}


def spread(values: list[float]) -> dict:
    """A cell's seed spread as an outcome of its own: sd over its seeds with a 95% chi-square interval."""
    if len(values) < 2:
        return {"sd": math.nan, "sd_lo": math.nan, "sd_hi": math.nan}
    sd = float(np.std(values, ddof=1))
    lo, hi = sd_interval(sd, len(values)) if sd > 0 else (0.0, 0.0)
    return {"sd": sd, "sd_lo": float(lo), "sd_hi": float(hi)}
