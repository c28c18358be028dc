"""Study files: every one loads; a typo in a setting, or a missing part, is refused with the file and the name."""

import types

import pytest
from optuna.samplers import GridSampler, TPESampler

import experiments
from experiments import StudyFileError, Study


def study_module(source: str) -> types.ModuleType:
    module = types.ModuleType("experiments.typo_study")
    module.__file__ = "experiments/typo_study.py"
    exec(source, module.__dict__)
    return module


GOOD = """
from optuna.samplers import GridSampler
SIGMAS = [1.0, 2.0]
TRIALS = {"quick": 3, "chapter": 3}
OBJECTIVE = "val/map"
def space(trial, base):
    return {"smooth_l1_sigma": trial.suggest_categorical("smooth_l1_sigma", SIGMAS)}
def sampler(seed):
    return GridSampler({"smooth_l1_sigma": SIGMAS}, seed=seed)
"""


def test_a_well_formed_study_loads_and_a_grid_never_prunes():
    study = Study.from_module(study_module(GOOD))
    assert study.name == "typo-study" and study.objective == "val/map" and not study.prune


@pytest.mark.parametrize("typo", ["PRUNED = False", "OBJECTVE = 'val/map50'", "FIXD = {'dataset': 'shapes'}"])
def test_an_unknown_upper_case_name_is_refused_naming_the_file_and_the_name(typo):
    name = typo.split()[0]
    with pytest.raises(StudyFileError, match=rf"experiments/typo_study.py: unknown setting {name}\b"):
        Study.from_module(study_module(GOOD + typo + "\n"))


def test_a_missing_part_is_refused():
    with pytest.raises(StudyFileError, match="typo_study.py: missing sampler"):
        Study.from_module(study_module(GOOD.split("def sampler")[0]))


def test_pruning_follows_the_sampler():
    for name in experiments.names():
        study = experiments.load(name)
        assert study.prune == isinstance(study.sampler(0), TPESampler) != isinstance(study.sampler(0), GridSampler)
