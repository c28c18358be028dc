"""Variant files: every one loads; a typo in a setting, or a missing part, is refused with the file and the name."""

import types

import pytest
from optuna.samplers import GridSampler, TPESampler

import experiments
from experiments import Variant, VariantFileError


def variant_module(source: str) -> types.ModuleType:
    module = types.ModuleType("experiments.typo_variant")
    module.__file__ = "experiments/typo_variant.py"
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


def test_a_well_formed_variant_loads_and_a_grid_never_prunes():
    variant = Variant.from_module(variant_module(GOOD))
    assert variant.name == "typo-variant" and variant.objective == "val/map" and not variant.prune


@pytest.mark.parametrize("typo", ["PRUNED = False", "OBJECTVE = 'val/map50'", "FIXD = {'dataset': 'shapes'}"])
def test_an_unknown_upper_case_name_is_refused_naming_the_file_and_the_name(typo):
    name = typo.split()[0]
    with pytest.raises(VariantFileError, match=rf"experiments/typo_variant.py: unknown setting {name}\b"):
        Variant.from_module(variant_module(GOOD + typo + "\n"))


def test_exercise_must_be_a_bool():
    assert Variant.from_module(variant_module(GOOD + "EXERCISE = False\n")).exercise is False
    with pytest.raises(VariantFileError, match="typo_variant.py: EXERCISE must be True or False, not 'False'"):
        Variant.from_module(variant_module(GOOD + "EXERCISE = 'False'\n"))


def test_a_missing_part_is_refused():
    with pytest.raises(VariantFileError, match="typo_variant.py: missing sampler"):
        Variant.from_module(variant_module(GOOD.split("def sampler")[0]))


def test_pruning_follows_the_sampler():
    for name in experiments.searches():
        variant = experiments.load(name)
        assert variant.prune == isinstance(variant.sampler(0), TPESampler) != isinstance(variant.sampler(0), GridSampler)


def test_fixed_by_profile_applies_to_its_profile_only_and_an_unknown_profile_is_refused():
    variant = Variant.from_module(variant_module(GOOD + "FIXED = {'dataset': 'shapes'}\n"
                                                 "FIXED_BY_PROFILE = {'quick': {'image_size': 128}}\n"))
    assert variant.fixed_for("quick") == {"dataset": "shapes", "image_size": 128}
    assert variant.fixed_for("chapter") == {"dataset": "shapes"}
    with pytest.raises(VariantFileError, match=r"typo_variant.py: FIXED_BY_PROFILE names unknown profile\(s\) 'Quick'"):
        Variant.from_module(variant_module(GOOD + "FIXED_BY_PROFILE = {'Quick': {'image_size': 128}}\n"))


def test_the_objective_must_be_a_metric_a_trial_logs():
    assert Variant.from_module(variant_module(GOOD.replace('"val/map"', '"val/voc_ap50"'))).objective == "val/voc_ap50"
    with pytest.raises(VariantFileError, match=r"typo_variant.py: OBJECTIVE 'val/mAP' is not a metric a trial logs; "
                                                r"one of val/map, .*val/voc07_ap50, val/voc_ap50"):
        Variant.from_module(variant_module(GOOD.replace('"val/map"', '"val/mAP"')))


def test_variants_load_without_torch():
    """`variants` and a variant's checks stay quick: loading every variant file imports no torch."""
    import subprocess
    import sys

    code = ("import sys, experiments\n[experiments.load(n) for n in experiments.names()]\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_variants_command_lists_every_variant_and_a_scaled_cell_as_relative():
    import json

    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["variants", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output.strip().splitlines()[-1])}
    assert set(rows) == set(experiments.names())
    assert rows["input-size-design"]["cells"]["side x1.5, anchors x0.667"] == {
        "image_size": "x1.5 the profile's", "anchor_scale": "x0.667 the profile's"}
    assert rows["focal-matched"]["cells"]["focal, box 4"]["box_weight"] == 4.0
    table = CliRunner().invoke(app, ["variants"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "contrast input x1.5" in table.output
