"""Which combination of the chapter's exercises is best when searched jointly?

Compared against: trial 0, the chapter. Every knob of the other variants, searched
together by TPE, which handles the conditional and mixed space (multivariate,
grouped) far better than a grid of this size could. The box weight is searched as a
continuous ratio here (the class weight stays 1).
"""

from optuna.samplers import TPESampler

TRIALS = {"chapter": 60, "quick": 10}
OBJECTIVE = "val/map"


def space(trial, base):
    out = {"cls_loss": trial.suggest_categorical("cls_loss", ["ce", "focal"]),
           "box_loss": trial.suggest_categorical("box_loss", ["l1", "smooth_l1"]),
           "neg_sampling": trial.suggest_categorical("neg_sampling", ["all", "hard", "random"]),
           "box_weight": trial.suggest_float("box_weight", 0.25, 4.0, log=True)}
    if out["cls_loss"] == "focal":
        out["focal_gamma"] = trial.suggest_float("focal_gamma", 0.0, 5.0)
        out["focal_alpha"] = trial.suggest_categorical("focal_alpha", [None, 0.25, 0.5, 0.75])
    if out["box_loss"] == "smooth_l1":
        out["smooth_l1_sigma"] = trial.suggest_float("smooth_l1_sigma", 0.5, 10.0, log=True)
    if out["neg_sampling"] != "all":
        out["neg_pos_ratio"] = trial.suggest_float("neg_pos_ratio", 1.0, 10.0, log=True)
    return out


def sampler(seed):
    return TPESampler(seed=seed, n_startup_trials=5, multivariate=True, group=True)
