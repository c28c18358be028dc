"""How noisy is the chapter's own result? The chapter's configuration, re-run with other seeds.

Compared against: trial 0, the chapter with seed 0. The spread of these trials is the
seed noise that every other variant's differences must beat. Grid sampling: the only
knob is the seed, and each seed should run exactly once.
"""

from optuna.samplers import GridSampler

SEEDS = [1, 2, 3, 4]
TRIALS = {"chapter": 5, "quick": 5}
OBJECTIVE = "val/map"


def space(trial, base):
    return {"seed": trial.suggest_categorical("seed", SEEDS)}


def sampler(seed):
    return GridSampler({"seed": SEEDS}, seed=seed)
