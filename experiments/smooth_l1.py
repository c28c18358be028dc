"""Does smooth L1 beat the chapter's L1 box loss, and at which sigma?

Compared against: trial 0, the chapter's L1. Large sigma tends to L1; small sigma is
quadratic over a wide range. Grid sampling: a handful of sigmas is the whole question,
and a comparison wants every one of them measured once, not a search.
"""

from optuna.samplers import GridSampler

SIGMAS = [0.5, 1.0, 2.0, 3.0, 10.0]
TRIALS = {"chapter": 6, "quick": 6}
OBJECTIVE = "val/map"


def space(trial, base):
    return {"box_loss": "smooth_l1", "smooth_l1_sigma": trial.suggest_categorical("smooth_l1_sigma", SIGMAS)}


def sampler(seed):
    return GridSampler({"smooth_l1_sigma": SIGMAS}, seed=seed)
