"""Should negative anchors be down-sampled, by loss (SSD's hard mining) or at random?

Compared against: trial 0, the chapter, which keeps every negative. SSD mines hard
negatives at 3:1. Brute force: six configurations are the whole question, and each
should be measured once.
"""

from optuna.samplers import BruteForceSampler

TRIALS = {"chapter": 7, "quick": 7}
OBJECTIVE = "val/map"


def space(trial, base):
    return {"neg_sampling": trial.suggest_categorical("neg_sampling", ["hard", "random"]),
            "neg_pos_ratio": trial.suggest_categorical("neg_pos_ratio", [1.0, 3.0, 10.0])}


def sampler(seed):
    return BruteForceSampler(seed=seed)
