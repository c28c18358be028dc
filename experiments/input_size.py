"""Does a bigger input help, above all for small objects?

Compared against: trial 0, the profile's input side (256 in the chapter). The side is
scaled by 1.25, 1.5 and 2 (256 -> 320, 384, 512). Anchors are relative, so only the
feature maps grow. Runs on the 'shapes' data set, because the chapter's bananas have no
small objects. Grid sampling: four sizes are the whole question. Watch val/map_small.
"""

from optuna.samplers import GridSampler

SCALES = [1.25, 1.5, 2.0]
FIXED = {"dataset": "shapes"}
TRIALS = {"chapter": 4, "quick": 4}
OBJECTIVE = "val/map"


def space(trial, base):
    scale = trial.suggest_categorical("input_scale", SCALES)
    return {"image_size": int(round(base.image_size * scale / 32)) * 32}


def sampler(seed):
    return GridSampler({"input_scale": SCALES}, seed=seed)
