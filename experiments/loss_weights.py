"""Should the box loss weigh more, or less, than the class loss?

Compared against: trial 0, the chapter's equal weights. Only the ratio is searched (box_weight,
with the class weight left at 1): scaling both weights by c is plain SGD at c times the learning
rate (no momentum), which is another question. SSD's normalisation by the number of positives
is not part of this variant: with every negative anchor in the class sum it multiplies the loss a few
hundred times, which at the profile's learning rate diverges (docs/knob-results.md); it is the
knob loss_normalization, for runs of its own. Grid sampling: four ratios, a factor 2 and 4 either
side of 1, each measured once.
"""

from optuna.samplers import GridSampler

BOX_WEIGHTS = [0.25, 0.5, 2.0, 4.0]
TRIALS = {"chapter": 5, "quick": 5}
OBJECTIVE = "val/map"


def space(trial, base):
    return {"box_weight": trial.suggest_categorical("box_weight", BOX_WEIGHTS)}


def sampler(seed):
    return GridSampler({"box_weight": BOX_WEIGHTS}, seed=seed)
