"""Does training in bf16 reach the same mAP as fp32? Not an exercise of the chapter: the project's own question.

Compared against: trial 0, fp32 (the default). bf16 autocasts the forward and backward passes; it is
faster where the hardware computes bf16 natively (a GPU, a CPU with AVX512-BF16 or AMX) and much slower
where it does not (emulated). One trial answers nothing here: decide it with
`python cli.py sweep precision --decide --delta 0.01`, whose "equivalent" means bf16 may become the
default on such hardware. Grid sampling: the one alternative is the whole question. Left off the answer
sheet (EXERCISE = False).
"""

from optuna.samplers import GridSampler

PRECISIONS = ["bf16"]
TRIALS = {"chapter": 2, "quick": 2}
OBJECTIVE = "val/map"
EXERCISE = False


def space(trial, base):
    return {"precision": trial.suggest_categorical("precision", PRECISIONS)}


def sampler(seed):
    return GridSampler({"precision": PRECISIONS}, seed=seed)
