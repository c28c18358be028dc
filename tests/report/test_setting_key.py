"""A setting's key (the run configuration's changes from its control) and how the answer sheet matches a proxy's
verdict to the same setting's verdict at the chapter's protocol with it."""

import dataclasses

import optuna
import pandas as pd
import pytest

import experiments
from pipeline.config import make_config
from pipeline.report.setting_key import changes_key, search_setting_key
from pipeline.report.whose_answer import same_setting_there

WINNERS = experiments.load("quick-winners").cells


def search_study(variant: str, profile: str = "quick") -> optuna.Study:
    study = optuna.create_study(study_name=f"{variant}-{profile}")  # in memory: only its attributes are read
    study.set_user_attr("variant", variant)
    study.set_user_attr("signature", {"base_config": dataclasses.asdict(make_config(profile, {}))})
    return study


@pytest.mark.parametrize("variant, params, cell", [
    ("smooth-l1", {"smooth_l1_sigma": 1.0}, "smooth L1"),  # the space adds box_loss=smooth_l1; the cell names it
    ("negative-sampling", {"neg_sampling": "random", "neg_pos_ratio": 10}, "random negatives"),  # 10 and 10.0
    ("loss-weights", {"box_weight": 4}, "box 4"),
    ("focal-loss", {"focal_gamma": 0.1, "focal_alpha": 0.75}, "focal")])
def test_a_search_trial_and_a_design_cell_that_train_one_configuration_share_a_key(variant, params, cell):
    key = search_setting_key(search_study(variant), params)
    assert key == changes_key(WINNERS[cell], dataclasses.asdict(make_config("chapter", {}))) != ""


def test_keys_tell_apart_what_trains_differently_and_name_only_the_changes():
    base = dataclasses.asdict(make_config("quick", {}))
    assert search_setting_key(search_study("smooth-l1"), {"smooth_l1_sigma": 1.0}) == "box_loss=smooth_l1"  # σ 1:
    assert search_setting_key(search_study("smooth-l1"), {"smooth_l1_sigma": 2.0}) == \
        "box_loss=smooth_l1, smooth_l1_sigma=2"  # the base's own σ, unused by its L1 until the box loss changes
    assert search_setting_key(search_study("focal-loss"), {"focal_gamma": 0.1017, "focal_alpha": 0.75}) != \
        changes_key(WINNERS["focal"], base)  # γ 0.1017 is not the design's 0.1
    assert search_setting_key(search_study("focal-loss"), {"focal_gamma": 1.0, "focal_alpha": None}) == \
        "cls_loss=focal, focal_gamma=1"  # the chapter's alpha (None) is no change
    assert changes_key({"box_weight": 1.0, "cls_weight": 1}, base) == ""  # the control's own values
    assert search_setting_key(search_study("input-size"), {"scale": 1.5, "changed": "input"}) == "image_size=96"


def test_a_key_that_cannot_be_replayed_is_empty_not_a_guess():
    assert search_setting_key(search_study("smooth-l1"), {}) == ""  # the space asks for a parameter not given
    assert search_setting_key(search_study("no-such-variant"), {"x": 1}) == ""


def sheet_row(study: str, variant: str, chapter: bool, outcome: str, seeds: int, **more) -> dict:
    return {"study": study, "variant": variant, "chapter_protocol": chapter, "outcome": outcome, "seeds": seeds,
            "design": "design_variant" in more, "best_params": "", "setting": "", "setting_key": "", **more}


def test_the_sheet_matches_a_search_to_a_design_by_key_and_designs_by_their_contrast():
    frame = pd.DataFrame([
        sheet_row("quick-winners-chapter", "smooth-l1", True, "equivalent", 7, design_variant="quick-winners",
                  setting="smooth L1 against the chapter", setting_key="box_loss=smooth_l1, smooth_l1_sigma=1"),
        sheet_row("smooth-l1-quick", "smooth-l1", False, "undecided", 15, best_params="smooth_l1_sigma=1",
                  setting_key="box_loss=smooth_l1, smooth_l1_sigma=1"),
        sheet_row("smooth-l1-quick-old", "smooth-l1", False, "undecided", 15, best_params="smooth_l1_sigma=1"),
        sheet_row("input-size-design-chapter", "input-size", True, "worse", 9, design_variant="input-size-design",
                  setting="input x1.5", setting_key="image_size=384"),
        sheet_row("input-size-design-quick", "input-size", False, "worse", 8, design_variant="input-size-design",
                  setting="input x1.5", setting_key="image_size=192"),
        sheet_row("input-size-quick", "input-size", False, "better", 8, setting_key="image_size=192"),
        sheet_row("focal-loss-quick", "focal-loss", False, "better", 8, setting_key="cls_loss=focal, focal_gamma=0.1"),
        sheet_row("loss-weights-chapter", "loss-weights", True, "better", 6, setting_key="box_weight=4"),
        sheet_row("quick-winners-chapter", "loss-weights", True, "pending", 4, design_variant="quick-winners",
                  setting="box 4 against the chapter", setting_key="box_weight=4"),
        sheet_row("quick-winners-quick", "loss-weights", False, "better", 10, design_variant="quick-winners",
                  setting="box 4 against the chapter", setting_key="box_weight=4")])
    assert same_setting_there(frame).tolist() == [
        "", "equivalent over 7 seeds",  # the search's sigma 1 is the design's smooth L1
        "not tested there",  # a row with no key (an older sheet's) is matched on its text only
        "", "worse over 9 seeds",  # input x1.5: 192 px here, 384 there, one contrast
        "not tested there",  # 192 px from a search is not the design's x1.5 at the chapter's protocol
        "not tested there",  # no focal setting at the chapter's protocol
        "", "", "better over 6 seeds (`loss-weights-chapter`); pending over 4 seeds (`quick-winners-chapter`)"]
