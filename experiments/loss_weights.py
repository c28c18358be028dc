"""Should the class and box losses be weighted, and normalised as in SSD?

Compared against: trial 0, the chapter's equal weights and mean over all anchors.
'positives' is SSD's sum divided by the number of positive anchors. TPE over
log-scaled weights: two continuous knobs with one categorical.
"""

from optuna.samplers import TPESampler

TRIALS = {"chapter": 40, "quick": 8}
OBJECTIVE = "val/map"


def space(trial, base):
    return {"cls_weight": trial.suggest_float("cls_weight", 0.25, 4.0, log=True),
            "box_weight": trial.suggest_float("box_weight", 0.25, 4.0, log=True),
            "loss_normalization": trial.suggest_categorical("loss_normalization", ["anchors", "positives"])}


def sampler(seed):
    return TPESampler(seed=seed, n_startup_trials=4)
