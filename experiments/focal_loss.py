"""Does focal loss help the class loss, and at which gamma and alpha?

Compared against: trial 0, the chapter's cross-entropy. alpha None is the chapter's
form (one global factor); a number is RetinaNet's balance (alpha for objects,
1 - alpha for background). The class term stays the chapter's mean over all anchors:
with gamma > 0 the easy background adds little to it, so it also shrinks against the
box term (RetinaNet divides by the number of positives instead). TPE: gamma is
continuous and interacts with alpha, so a model-based search finds the good region in
fewer trials than a grid.
"""

from optuna.samplers import TPESampler

ALPHAS = [None, 0.25, 0.5, 0.75]
TRIALS = {"chapter": 40, "quick": 6}
OBJECTIVE = "val/map"


def space(trial, base):
    return {"cls_loss": "focal",
            "focal_gamma": trial.suggest_float("focal_gamma", 0.0, 5.0),
            "focal_alpha": trial.suggest_categorical("focal_alpha", ALPHAS)}


def sampler(seed):
    return TPESampler(seed=seed, n_startup_trials=4)
