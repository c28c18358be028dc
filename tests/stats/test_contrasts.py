"""Designed contrasts: a planted interaction in a simulated 2x2 is decided, additive knobs are not called
interacting, cells are trained only while a contrast needs them, and a file whose contrast names a missing cell
is refused."""

import types

import numpy as np
import pytest

from pipeline.config import RunConfig
from pipeline.stats.contrasts import contrast_values, settle_contrasts
from pipeline.stats.decide import Plan

CELLS = {"ce, box 1": RunConfig(), "focal, box 1": RunConfig(cls_loss="focal"),
         "ce, box 4": RunConfig(box_weight=4.0), "focal, box 4": RunConfig(cls_loss="focal", box_weight=4.0)}
CONTRASTS = {"focal at box 1": {"focal, box 1": 1, "ce, box 1": -1},
             "focal at box 4": {"focal, box 4": 1, "ce, box 4": -1},
             "interaction": {"focal, box 4": 1, "ce, box 4": -1, "focal, box 1": -1, "ce, box 1": 1}}


def simulated_2x2(means: dict[str, float], sd: float = 0.005, study: int = 0):
    """A trainer of the 2x2: a seed effect every cell shares (paired seeds), the cell's mean, and its own noise."""
    calls = []
    roles = {"control": "ce, box 1", **{f"cell {c}": c for c in means}}

    def train_pack(role, cfg, seeds):
        calls.append((role, list(seeds)))
        cell = roles[role]
        return {s: np.random.default_rng([study, s]).normal(0.15, 0.04) + means[cell]
                + np.random.default_rng([study, s, sum(map(ord, cell))]).normal(0, sd) for s in seeds}
    return train_pack, calls


def test_a_planted_interaction_is_decided_and_each_simple_effect_with_it():
    means = {"ce, box 1": 0.0, "focal, box 1": 0.0, "ce, box 4": 0.06, "focal, box 4": 0.10}  # focal helps at 4 only
    train_pack, calls = simulated_2x2(means)
    record = settle_contrasts(CELLS, CONTRASTS, "ce, box 1", Plan(1, 1, 15), train_pack)
    outcome = {row["contrast"]: row for row in record["contrasts"]}
    assert outcome["interaction"]["verdict"] == "better" and outcome["focal at box 4"]["verdict"] == "better"
    assert outcome["interaction"]["delta"] == pytest.approx(0.04, abs=0.01)
    assert outcome["focal at box 1"]["verdict"] in ("equivalent", "undecided")
    assert record["final"] and ("control", [1]) in calls and all(role != "cell ce, box 1" for role, _ in calls)
    seeds, values = contrast_values(CONTRASTS["interaction"], {c: {int(s): v for s, v in cell["scores"].items()}
                                                               for c, cell in record["cells"].items()})
    assert values == outcome["interaction"]["values"] and seeds == outcome["interaction"]["seeds"]


def test_additive_knobs_are_rarely_called_interacting():
    means = {"ce, box 1": 0.0, "focal, box 1": 0.04, "ce, box 4": 0.06, "focal, box 4": 0.10}  # adds up exactly
    wrong = 0
    for study in range(40):
        train_pack, _ = simulated_2x2(means, sd=0.01, study=study)
        record = settle_contrasts(CELLS, {"interaction": CONTRASTS["interaction"]}, "ce, box 1", Plan(1, 1, 15),
                                  train_pack)
        wrong += record["contrasts"][0]["verdict"] in ("better", "worse")
    assert wrong <= 4  # 5% of 40 is 2; the bound leaves room for chance, not for a broken rule


def test_a_decided_contrast_stops_training_the_cells_only_it_needs():
    means = {"ce, box 1": 0.0, "focal, box 1": 0.2, "ce, box 4": 0.0, "focal, box 4": 0.01}  # on the margin
    train_pack, calls = simulated_2x2(means, sd=0.01)
    contrasts = {"focal at box 1": CONTRASTS["focal at box 1"], "focal at box 4": CONTRASTS["focal at box 4"]}
    record = settle_contrasts(CELLS, contrasts, "ce, box 1", Plan(1, 1, 8), train_pack)
    trained = {role: sum(len(seeds) for r, seeds in calls if r == role) for role, _ in calls}
    assert trained["cell focal, box 1"] <= 6 < trained["cell focal, box 4"] == 8  # decided early, then left alone
    assert record["cells"]["focal, box 4"]["sd"] > 0 and record["cells"]["focal, box 4"]["sd_lo"] > 0


class Kept:
    """A trainer whose packs are kept, as a store keeps them: a pack asked again is reused, not trained, and
    ``read`` gives the kept seeds of a pack without training any."""

    def __init__(self, train_pack):
        self.train_pack, self.packs = train_pack, {}

    def train(self, role, cfg, seeds):
        for s in seeds:
            if (role, s) not in self.packs:
                self.packs[role, s] = self.train_pack(role, cfg, [s])[s]
        return {s: self.packs[role, s] for s in seeds}

    def read(self, role, cfg, seeds):
        return {s: self.packs[role, s] for s in seeds if (role, s) in self.packs}

    def settle(self, contrasts, plan, chosen=None, **kw):
        return settle_contrasts(CELLS, contrasts, "ce, box 1", plan, self.train, chosen=chosen, read_kept=self.read,
                                **kw)


def test_chosen_contrasts_take_seeds_the_others_wait_pending_and_a_later_run_finishes_them():
    means = {"ce, box 1": 0.0, "focal, box 1": 0.05, "ce, box 4": 0.0, "focal, box 4": 0.05}
    train_pack, calls = simulated_2x2(means, sd=0.02)
    contrasts = {"focal at box 1": CONTRASTS["focal at box 1"], "focal at box 4": CONTRASTS["focal at box 4"]}
    plan = Plan(1, 1, 12)
    alone = Kept(train_pack).settle(contrasts, plan, chosen=["focal at box 1"])
    rows = {row["contrast"]: row for row in alone["contrasts"]}
    assert rows["focal at box 1"]["verdict"] == "better" and rows["focal at box 4"]["verdict"] == "pending"
    assert not alone["final"] and {role for role, _ in calls} == {"control", "cell focal, box 1"}
    assert alone["cells"]["ce, box 4"]["scores"] == {}  # its cells never trained: nothing to read yet

    kept = Kept(train_pack)
    kept.settle(contrasts, Plan(1, 1, 3))  # seeds 1-3 of every cell, kept by an earlier run
    calls.clear()
    kept_mid_run = []
    part = kept.settle(contrasts, plan, chosen=["focal at box 1"], on_look=kept_mid_run.append)
    rows = {row["contrast"]: row for row in part["contrasts"]}
    assert rows["focal at box 4"]["verdict"] == "pending" and rows["focal at box 4"]["seeds"] == [1, 2, 3]
    assert all(look["contrasts"][1]["seeds"] == [1, 2, 3] for look in kept_mid_run)  # never less than is kept
    assert {role for role, _ in calls} == {"control", "cell focal, box 1"}  # read on its kept seeds, none trained
    assert rows["focal at box 1"]["values"] == alone["contrasts"][0]["values"]  # the same seeds, the same rule

    whole = kept.settle(contrasts, plan)  # resumed with every contrast chosen
    assert whole["final"] and [row["verdict"] for row in whole["contrasts"]] == ["better", "better"]
    assert len(whole["contrasts"][1]["seeds"]) > 3


def test_a_chosen_contrast_is_tried_at_alpha_over_all_and_a_run_choosing_one_leaves_the_others_verdicts_alone():
    from pipeline.stats.verdict import ALPHA, to_record, verdict

    means = {"ce, box 1": 0.0, "focal, box 1": 0.05, "ce, box 4": 0.0, "focal, box 4": 0.005}
    train_pack, calls = simulated_2x2(means, sd=0.02)
    contrasts = {"focal at box 1": CONTRASTS["focal at box 1"], "focal at box 4": CONTRASTS["focal at box 4"]}
    kept, plan = Kept(train_pack), Plan(1, 1, 12)
    whole = kept.settle(contrasts, plan)
    assert whole["final"] and [row["verdict"] for row in whole["contrasts"]] == ["better", "undecided"]
    early = whole["contrasts"][0]
    assert len(early["seeds"]) < 12 == len(whole["contrasts"][1]["seeds"])

    calls.clear()
    again = kept.settle(contrasts, plan, chosen=["focal at box 1"])  # decided early: the loop reads on past it
    assert calls == [] and again["final"] and again["contrasts"] == whole["contrasts"]

    part = Kept(train_pack).settle(contrasts, plan, chosen=["focal at box 1"])
    row = part["contrasts"][0]
    assert row["delta_ci95"] == to_record(verdict(row["values"], 1, 12, plan.delta, ALPHA / 2))["delta_ci95"]
    assert row["delta_ci95"] != to_record(verdict(row["values"], 1, 12, plan.delta, ALPHA))["delta_ci95"]


def test_a_chosen_contrast_without_the_control_still_learns_that_the_control_scores_nothing():
    from pipeline.stats.decide import NoControlScore

    with pytest.raises(NoControlScore):
        settle_contrasts(CELLS, CONTRASTS, "ce, box 1", Plan(1, 1, 8), lambda role, cfg, seeds: {},
                         chosen=["focal at box 4"], read_kept=lambda role, cfg, seeds: {})


def design_module(**names):
    module = types.ModuleType("experiments.my_design")
    module.__file__ = "experiments/my_design.py"
    module.__doc__ = "Does it help at matched balance?"
    for key, value in names.items():
        setattr(module, key, value)
    return module


def test_a_contrast_whose_cells_are_missing_is_refused_by_name():
    from experiments import Variant, VariantFileError

    cells = {"ce, box 1": {}, "focal, box 1": {"cls_loss": "focal"}}
    with pytest.raises(VariantFileError, match=r"experiments/my_design.py: contrast 'focal at box 4' names cell\(s\) "
                                               r"'ce, box 4', 'focal, box 4' that CELLS does not have"):
        Variant.from_module(design_module(CELLS=cells, CONTRASTS={"focal at box 4": CONTRASTS["focal at box 4"]}))
    with pytest.raises(VariantFileError, match="its weights sum to 1, not 0"):
        Variant.from_module(design_module(CELLS=cells, CONTRASTS={"x": {"focal, box 1": 1}}))
    with pytest.raises(VariantFileError, match="no cell is the control"):
        Variant.from_module(design_module(CELLS={"a": {"cls_loss": "focal"}, "b": {"box_weight": 2.0}},
                                          CONTRASTS={"x": {"a": 1, "b": -1}}))
    with pytest.raises(VariantFileError, match="cell 'focal, box 1' sets unknown knob\\(s\\) focal_gama"):
        Variant.from_module(design_module(CELLS={"ce, box 1": {}, "focal, box 1": {"focal_gama": 2}},
                                          CONTRASTS={"x": {"focal, box 1": 1, "ce, box 1": -1}}))
    with pytest.raises(VariantFileError, match="'val/map_smal' \\(OBJECTIVE or SECONDARY\\) is not a metric a trial logs"):
        Variant.from_module(design_module(CELLS=cells, CONTRASTS={"x": {"focal, box 1": 1, "ce, box 1": -1}},
                                          SECONDARY=("val/map_smal",)))
    with pytest.raises(VariantFileError, match="repeats a metric, or the OBJECTIVE 'val/map'"):
        Variant.from_module(design_module(CELLS=cells, CONTRASTS={"x": {"focal, box 1": 1, "ce, box 1": -1}},
                                          SECONDARY=("val/map",)))
    variant = Variant.from_module(design_module(CELLS=cells, CONTRASTS={"x": {"focal, box 1": 1, "ce, box 1": -1}},
                                                SECONDARY=("val/map_small",)))
    assert variant.is_design and variant.name == "my-design" and variant.secondary == ("val/map_small",)


def test_a_designed_variant_refuses_a_misspelt_setting_and_a_search():
    from experiments import Variant, VariantFileError

    cells, contrasts = {"ce": {}, "focal": {"cls_loss": "focal"}}, {"x": {"focal": 1, "ce": -1}}
    with pytest.raises(VariantFileError, match="OBJECTVE is not a setting of a designed contrast: did you mean OBJECTIVE"):
        Variant.from_module(design_module(CELLS=cells, CONTRASTS=contrasts, OBJECTVE="val/map"))
    with pytest.raises(VariantFileError, match="no search: it sets no TRIALS, space or sampler"):
        Variant.from_module(design_module(CELLS=cells, CONTRASTS=contrasts, TRIALS={"quick": 2}))
    assert Variant.from_module(design_module(CELLS=cells, CONTRASTS=contrasts, FOCAL={"cls_loss": "focal"})).is_design


def test_every_designed_variant_builds_valid_cells_at_every_profile():
    import experiments
    from pipeline.config import PROFILES, make_config

    designs = [n for n in experiments.names() if experiments.load(n).is_design]
    assert {"focal-matched", "negative-matched", "input-size-design"} <= set(designs)
    for name in designs:
        variant = experiments.load(name)
        for profile in PROFILES:
            base = make_config(profile, variant.fixed_for(profile))
            configs = [make_config(profile, {**variant.fixed_for(profile), **cell})
                       for cell in variant.cells_for(base).values()]
            assert len(set(configs)) == len(configs)  # every cell is a different run


def test_a_scaled_cell_asks_the_same_question_at_every_profile_and_keeps_the_quick_profiles_runs():
    """input-size-design's cells are relative to the profile: 128 against 192 px at the quick profile, 256 against
    384 at the chapter's; at the quick profile they are the very runs the absolute cells of its first version
    trained, so the seeds kept for those are adopted, not trained again."""
    import experiments
    from pipeline.config import make_config
    from pipeline.study.kept_packs import kept_name

    variant = experiments.load("input-size-design")
    sides = {}
    for profile in ("quick", "chapter"):
        base = make_config(profile, variant.fixed_for(profile))
        cells = variant.cells_for(base)
        sides[profile] = (base.image_size, cells["side x1.5, chapter's anchors"]["image_size"])
        assert cells["the profile's side, anchors x0.667"] == {"anchor_scale": 0.667}
        assert cells["side x1.5, anchors x0.667"] == {"image_size": sides[profile][1], "anchor_scale": 0.667}
    assert sides == {"quick": (128, 192), "chapter": (256, 384)}
    quick = make_config("quick", variant.fixed_for("quick"))
    first_version = {"image_size": 192, "anchor_scale": 0.667}  # the absolute cell the store's quick seeds came from
    resolved = variant.cells_for(quick)["side x1.5, anchors x0.667"]
    assert kept_name("cell", "test/map", make_config("quick", {**variant.fixed_for("quick"), **resolved})) == \
        kept_name("cell", "test/map", make_config("quick", {**variant.fixed_for("quick"), **first_version}))


def test_a_scaled_knob_must_be_a_number_with_a_positive_factor():
    from experiments import Scaled, Variant, VariantFileError

    contrasts = {"x": {"big": 1, "chapter": -1}}
    with pytest.raises(VariantFileError, match=r"cell 'big': cls_loss is not a number, so it cannot be Scaled"):
        Variant.from_module(design_module(CELLS={"chapter": {}, "big": {"cls_loss": Scaled(2.0)}}, CONTRASTS=contrasts))
    for factor in (-1.0, True, float("nan")):
        with pytest.raises(VariantFileError, match=r"cell 'big': image_size = Scaled\(.*\): the factor must be"):
            Variant.from_module(design_module(CELLS={"chapter": {}, "big": {"image_size": Scaled(factor)}},
                                              CONTRASTS=contrasts))
    with pytest.raises(VariantFileError, match=r"cell 'big': hflip is not a number, so it cannot be Scaled"):
        Variant.from_module(design_module(CELLS={"chapter": {}, "big": {"hflip": Scaled(2.0)}}, CONTRASTS=contrasts))
    epochs = Variant.from_module(design_module(CELLS={"chapter": {}, "big": {"epochs": Scaled(1.5)}},
                                               CONTRASTS=contrasts))
    assert epochs.cells_for(RunConfig(epochs=10))["big"] == {"epochs": 15}  # an int knob stays an int
    assert isinstance(epochs.cells_for(RunConfig(epochs=10))["big"]["epochs"], int)
    variant = Variant.from_module(design_module(CELLS={"chapter": {}, "big": {"image_size": Scaled(1.25),
                                                                              "box_weight": Scaled(2.0)}},
                                                CONTRASTS=contrasts))
    assert variant.cells_for(RunConfig(image_size=256, box_weight=1.5))["big"] == {"image_size": 320, "box_weight": 3.0}
    at_64 = variant.cells_for(RunConfig(image_size=64))["big"]
    assert at_64["image_size"] == 64  # 80 px rounds to a multiple of 32: back to the control's side
    from pipeline.study.design import _distinct_cells
    from pipeline.study.optuna_study import SweepError

    same = {"chapter": RunConfig(image_size=64), "big": RunConfig(image_size=64)}
    with pytest.raises(SweepError, match="my-design: cells 'chapter' and 'big' are the same run at this profile"):
        _distinct_cells(variant, same)


def test_answers_must_name_a_contrast_of_one_cell_against_the_control_and_a_variant():
    from experiments import Variant, VariantFileError

    cells = {"chapter": {}, "box 4": {"box_weight": 4.0}, "box 2": {"box_weight": 2.0}}
    contrasts = {"box 4": {"box 4": 1, "chapter": -1}, "4 over 2": {"box 4": 1, "box 2": -1}}
    ok = Variant.from_module(design_module(CELLS=cells, CONTRASTS=contrasts, ANSWERS={"box 4": "loss-weights"}))
    assert ok.answers == {"box 4": "loss-weights"}
    with pytest.raises(VariantFileError, match=r"my_design.py: ANSWERS names '4 over 2', which is not a contrast of "
                                               r"one cell against the control 'chapter'"):
        Variant.from_module(design_module(CELLS=cells, CONTRASTS=contrasts, ANSWERS={"4 over 2": "loss-weights"}))
    for wrong in ("loss-weight", "precision", "focal-matched"):  # no such file, not an exercise, a design
        with pytest.raises(VariantFileError, match=rf"ANSWERS maps 'box 4' to '{wrong}', which is not an exercise "
                                                   r"with a search; those are .*loss-weights"):
            Variant.from_module(design_module(CELLS=cells, CONTRASTS=contrasts, ANSWERS={"box 4": wrong}))


def test_a_design_study_asked_with_other_cells_is_refused_naming_both_and_the_way_on(tmp_path):
    """A store's design study from before a file changed its cells (input-size-design's absolute 128/192-px cells
    became relative ones) is not reused under the new names: the refusal names the cells then and now."""
    import experiments
    import optuna
    from pipeline.config import make_config
    from pipeline.study.design import _open_study
    from pipeline.study.optuna_study import SweepError, SweepOptions

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    old = optuna.create_study(study_name="input-size-design-quick", storage=storage)
    old.set_user_attr("design", {"cells": {"128 px, chapter's anchors": {}, "192 px, chapter's anchors":
                                           {"image_size": 192}}, "contrasts": {}})
    variant = experiments.load("input-size-design")
    options = SweepOptions(variant="input-size-design", profile="quick", storage=storage)
    base = make_config("quick", variant.fixed_for("quick"))
    with pytest.raises(SweepError, match=r"cells then: 128 px, chapter's anchors \(the control\); 192 px, chapter's "
                                         r"anchors \(image_size 192\); now: the profile's side, chapter's anchors "
                                         r"\(the control\); side x1.5, chapter's anchors \(image_size 192\); .*pass "
                                         r"another --study-name; seeds kept for a cell that is the same run are "
                                         r"adopted"):
        _open_study(options, variant, base, variant.cells_for(base))
    fresh = _open_study(SweepOptions(variant="input-size-design", profile="quick", storage=storage,
                                     study_name="input-size-design-v2"), variant, base, variant.cells_for(base))
    assert fresh.user_attrs["design"]["cells"]["side x1.5, chapter's anchors"] == {"image_size": 192}


def test_a_scaled_cell_the_flags_push_out_of_range_or_onto_an_empty_value_is_refused_by_name():
    import experiments
    from experiments import Scaled, Variant
    from pipeline.config import make_config
    from pipeline.study.design import _resolved_cells
    from pipeline.study.optuna_study import SweepError, SweepOptions

    variant = experiments.load("input-size-design")
    options = SweepOptions(variant="input-size-design", profile="chapter", overrides={"image_size": 704})
    with pytest.raises(SweepError, match=r'input-size-design: cell "side x1.5, chapter\'s anchors" at the chapter '
                                         r"profile and these flags \(image_size 1056\): image_size: must be in"):
        _resolved_cells(variant, make_config("chapter", {**variant.fixed_for("chapter"), "image_size": 704}), options)
    alpha = Variant.from_module(design_module(CELLS={"chapter": {}, "a": {"focal_alpha": Scaled(2.0)}},
                                              CONTRASTS={"x": {"a": 1, "chapter": -1}}))
    with pytest.raises(SweepError, match=r"my-design at the quick profile: focal_alpha: its value here is empty"):
        _resolved_cells(alpha, make_config("quick"), SweepOptions(variant="my-design"))
