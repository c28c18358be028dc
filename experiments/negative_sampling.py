"""Should negative anchors be down-sampled, by loss (SSD's hard mining) or at random?

Compared against: trial 0, the chapter, which keeps every negative. SSD mines hard
negatives at 3:1. Grid sampling: six configurations are the whole question, and each
should be measured once. (Optuna's BruteForceSampler would fit too, but it takes the
control's empty parameter set for an exhausted space and stops the study.)
"""

from optuna.samplers import GridSampler

GRID = {"neg_sampling": ["hard", "random"], "neg_pos_ratio": [1.0, 3.0, 10.0]}
TRIALS = {"chapter": 7, "quick": 7}
OBJECTIVE = "val/map"


def space(trial, base):
    return {name: trial.suggest_categorical(name, choices) for name, choices in GRID.items()}


def sampler(seed):
    return GridSampler(GRID, seed=seed)
