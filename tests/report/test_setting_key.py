"""A setting's key (what its runs train, apart from the protocol) and how the answer sheet matches a proxy's verdict
to the same setting's verdict at the chapter's protocol with it."""

import dataclasses

import optuna
import pandas as pd
import pytest

import experiments
from pipeline.report.setting_key import design_setting_key, knobs_apart, nearness, search_setting_key, setting_key
from pipeline.report.whose_answer import same_setting_there
from pipeline.study.optuna_study import SweepOptions, base_config

WINNERS = experiments.load("quick-winners").cells


def control(variant: str, profile: str = "quick", **flags):
    """The control's RunConfig as `sweep VARIANT --profile PROFILE [--set K=V]` makes it."""
    return base_config(experiments.load(variant), SweepOptions(variant, profile=profile, overrides=flags))


def stored_study(variant: str, profile: str = "quick", **flags) -> optuna.Study:
    """A study as that sweep stores it, in memory: only its attributes are read."""
    study = optuna.create_study(study_name=f"{variant}-{profile}")
    study.set_user_attr("variant", variant)
    study.set_user_attr("signature", {"base_config": dataclasses.asdict(control(variant, profile, **flags))})
    return study


def design_key(profile: str, cell: str, design: str = "quick-winners", **flags) -> str:
    cells = experiments.load(design).cells_for(control(design, profile, **flags))
    return design_setting_key(stored_study(design, profile, **flags), cell, cells[cell])


@pytest.mark.parametrize("variant, params, cell", [
    ("smooth-l1", {"smooth_l1_sigma": 1.0}, "smooth L1"),  # the space adds box_loss=smooth_l1; the cell names it
    ("negative-sampling", {"neg_sampling": "random", "neg_pos_ratio": 10}, "random negatives"),  # 10 and 10.0
    ("loss-weights", {"box_weight": 4}, "box 4"),
    ("focal-loss", {"focal_gamma": 0.1, "focal_alpha": 0.75}, "focal")])
def test_a_search_trial_and_a_design_cell_that_train_one_configuration_share_a_key_across_profiles(variant, params,
                                                                                                      cell):
    assert search_setting_key(stored_study(variant, "quick"), params) == design_key("chapter", cell) == \
        design_key("quick", cell) != ""


def test_keys_tell_apart_what_trains_differently():
    sigma = {"smooth_l1_sigma": 1.0}
    assert search_setting_key(stored_study("smooth-l1"), sigma) == "box_loss=smooth_l1 | on the chapter's"  # σ 1
    assert search_setting_key(stored_study("smooth-l1"), {"smooth_l1_sigma": 2.0}) == \
        "box_loss=smooth_l1, smooth_l1_sigma=2 | on the chapter's"  # the base's own σ 1 is no change
    assert search_setting_key(stored_study("focal-loss"), {"focal_gamma": 0.1017, "focal_alpha": 0.75}) != \
        design_key("chapter", "focal")  # γ 0.1017 is not the design's 0.1
    assert search_setting_key(stored_study("focal-loss"), {"focal_gamma": 1.0, "focal_alpha": None}) == \
        "cls_loss=focal, focal_gamma=1 | on the chapter's"  # the chapter's alpha (None) is no change
    assert search_setting_key(stored_study("smooth-l1", box_weight=4.0), sigma) == \
        "box_loss=smooth_l1 | on box_weight=4"  # the control's own knobs off the chapter's: another question
    assert search_setting_key(stored_study("smooth-l1", dataset="shapes"), sigma) != \
        search_setting_key(stored_study("smooth-l1"), sigma)
    assert search_setting_key(stored_study("smooth-l1", seed=7, val_every=2, channels_last=False), sigma) == \
        search_setting_key(stored_study("smooth-l1"), sigma)  # how the runs are carried out is not the setting
    assert setting_key({"train_images": 1_000_000}, control("smooth-l1")) != \
        setting_key({"train_images": 1_000_001}, control("smooth-l1"))  # no rounding of large counts


def test_a_designs_relative_cell_keys_alike_at_every_profile_and_an_absolute_size_does_not():
    assert design_key("quick", "side x1.5, chapter's anchors", "input-size-design") == \
        design_key("chapter", "side x1.5, chapter's anchors", "input-size-design") == \
        "image_size=x1.5 | on dataset=shapes"  # 192 px at the quick profile, 384 at the chapter's
    assert search_setting_key(stored_study("input-size"), {"scale": 1.5, "changed": "input"}) == \
        "image_size=192 | on dataset=shapes"  # a search's side is absolute: the quick profile's 128 px times 1.5
    edited = stored_study("input-size-design", "quick")
    assert design_setting_key(edited, "side x1.5, chapter's anchors", {"image_size": 224}) == \
        "image_size=224 | on dataset=shapes"  # a stored cell the file no longer resolves to keeps its own value


def test_a_key_that_cannot_be_replayed_is_empty_not_a_guess():
    assert search_setting_key(stored_study("smooth-l1"), {}) == ""  # the space asks for a parameter not given
    assert search_setting_key(stored_study("smooth-l1"), {"x": 1}) == ""  # none of the parameters the space asks
    unknown = stored_study("smooth-l1")
    unknown.set_user_attr("variant", "no-such-variant")
    assert search_setting_key(unknown, {"smooth_l1_sigma": 1.0}) == ""
    unsigned = optuna.create_study()
    unsigned.set_user_attr("variant", "smooth-l1")  # a study from before the signature: no base to replay on
    assert search_setting_key(unsigned, {"smooth_l1_sigma": 1.0}) == ""
    assert design_setting_key(unsigned, "smooth L1", WINNERS["smooth L1"]) == ""


def sheet_row(study: str, variant: str, chapter: bool, outcome: str, seeds: int, **more) -> dict:
    return {"study": study, "variant": variant, "chapter_protocol": chapter, "outcome": outcome, "seeds": seeds,
            "design": "design_variant" in more, "best_params": "", "setting": "", "setting_key": "", **more}


def test_the_sheet_matches_a_proxys_row_to_the_chapters_rows_with_its_key():
    smooth = search_setting_key(stored_study("smooth-l1"), {"smooth_l1_sigma": 1.0})
    bigger = design_key("chapter", "side x1.5, chapter's anchors", "input-size-design")
    box = design_key("chapter", "box 4")
    frame = pd.DataFrame([
        sheet_row("quick-winners-chapter", "smooth-l1", True, "equivalent", 7, design_variant="quick-winners",
                  setting="smooth L1 against the chapter", setting_key=design_key("chapter", "smooth L1")),
        sheet_row("smooth-l1-quick", "smooth-l1", False, "undecided", 15, best_params="smooth_l1_sigma=1",
                  setting_key=smooth),
        sheet_row("smooth-l1-quick-old", "smooth-l1", False, "undecided", 15, best_params="smooth_l1_sigma=1"),
        sheet_row("input-size-design-chapter", "input-size", True, "worse", 9, design_variant="input-size-design",
                  setting="input x1.5", setting_key=bigger),
        sheet_row("input-size-design-quick", "input-size", False, "worse", 8, design_variant="input-size-design",
                  setting="input x1.5", setting_key=design_key("quick", "side x1.5, chapter's anchors",
                                                               "input-size-design")),
        sheet_row("input-size-quick", "input-size", False, "better", 8,
                  setting_key=search_setting_key(stored_study("input-size"), {"scale": 1.5, "changed": "input"})),
        sheet_row("loss-weights-chapter", "loss-weights", True, "better", 6,
                  setting_key=search_setting_key(stored_study("loss-weights", "chapter"), {"box_weight": 4.0})),
        sheet_row("quick-winners-chapter", "loss-weights", True, "pending", 4, design_variant="quick-winners",
                  setting="box 4 against the chapter", setting_key=box),
        sheet_row("quick-winners-quick", "loss-weights", False, "better", 10, design_variant="quick-winners",
                  setting="box 4 against the chapter", setting_key=design_key("quick", "box 4")),
        sheet_row("smooth-l1-quick-box4", "smooth-l1", False, "worse", 5,
                  setting_key=search_setting_key(stored_study("smooth-l1", box_weight=4.0), {"smooth_l1_sigma": 1}))])
    assert same_setting_there(frame).tolist() == [
        "", "equivalent over 7 seeds",  # the search's sigma 1 is the design's smooth L1
        "not tested there",  # a row with no key (an older sheet's) is matched on its text only
        "", "worse over 9 seeds",  # input x1.5: 192 px here, 384 there, one cell
        "not tested there",  # 192 px from a search is not the design's x1.5 at the chapter's protocol
        "", "", "better over 6 seeds (`loss-weights-chapter`); pending over 4 seeds (`quick-winners-chapter`)",
        "not tested there"]  # smooth L1 over a box weight of 4 is another question than smooth L1 alone


def test_nearness_measures_settings_that_differ_in_numbers_only_and_refuses_the_rest():
    focal = search_setting_key(stored_study("focal-loss"), {"focal_gamma": 0.1017, "focal_alpha": 0.75})
    sigma = setting_key({"box_loss": "smooth_l1", "smooth_l1_sigma": 1.02}, control("smooth-l1"))  # a σ off the grid
    assert nearness(focal, design_key("chapter", "focal")) == pytest.approx(0.0017 / 0.1017)
    assert knobs_apart(design_key("chapter", "focal"), focal) == "focal_gamma=0.1"
    assert nearness(sigma, design_key("chapter", "smooth L1")) == pytest.approx(0.02 / 1.02)  # σ 1 is the control's
    assert knobs_apart(design_key("chapter", "smooth L1"), sigma) == "smooth_l1_sigma=1"
    assert nearness(focal, focal) == 0.0
    assert nearness(focal, design_key("chapter", "box 4")) is None  # another loss: not a matter of numbers
    assert nearness(search_setting_key(stored_study("smooth-l1", box_weight=4.0), {"smooth_l1_sigma": 1.02}),
                    design_key("chapter", "smooth L1")) is None  # another control
    assert nearness(search_setting_key(stored_study("input-size"), {"scale": 1.5, "changed": "input"}),
                    design_key("chapter", "side x1.5, chapter's anchors", "input-size-design")) is None  # 192 vs x1.5
    assert nearness("box_weight=4", "box_weight=4.1") is None  # not keys setting_key wrote: no guess
    assert nearness("box_weight=inf | on the chapter's", "box_weight=4 | on the chapter's") is None


def test_the_sheet_names_a_nearby_setting_tested_at_the_chapters_protocol_as_another_setting():
    def search_row(study, variant, params, **flags):
        return sheet_row(study, variant, False, "better", 8,
                         setting_key=search_setting_key(stored_study(variant, **flags), params))

    def smooth_row(sigma, **flags):  # a σ off smooth-l1's grid, as a continuous search would try it
        return sheet_row("combined-quick", "smooth-l1", False, "better", 8, setting_key=setting_key(
            {"box_loss": "smooth_l1", "smooth_l1_sigma": sigma}, control("smooth-l1", **flags)))

    frame = pd.DataFrame([
        sheet_row("quick-winners-chapter", "focal-loss", True, "worse", 10, design_variant="quick-winners",
                  setting="focal against the chapter", setting_key=design_key("chapter", "focal")),
        sheet_row("quick-winners-chapter", "smooth-l1", True, "equivalent", 7, design_variant="quick-winners",
                  setting="smooth L1 against the chapter", setting_key=design_key("chapter", "smooth L1")),
        search_row("focal-loss-quick", "focal-loss", {"focal_gamma": 0.1017, "focal_alpha": 0.75}),
        search_row("focal-loss-quick", "focal-loss", {"focal_gamma": 0.11, "focal_alpha": 0.75}),  # 9% away
        search_row("focal-loss-quick", "focal-loss", {"focal_gamma": 0.1017, "focal_alpha": None}),
        smooth_row(0.98),
        smooth_row(0.98, box_weight=4.0)])
    assert same_setting_there(frame).tolist() == [
        "", "",
        "not tested there; nearby, focal_gamma=0.1: worse over 10 seeds",
        "not tested there",
        "not tested there",  # α None (the chapter's) is not the design's α 0.75, however close γ is
        "not tested there; nearby, smooth_l1_sigma=1: equivalent over 7 seeds",
        "not tested there"]


def test_the_nearest_of_several_nearby_settings_is_named_and_five_percent_is_the_edge():
    def row(study, chapter, gamma):
        key = setting_key({"cls_loss": "focal", "focal_gamma": gamma, "focal_alpha": 0.75}, control("focal-loss"))
        return sheet_row(study, "focal-loss", chapter, "worse" if chapter else "better", 10, setting_key=key)

    frame = pd.DataFrame([row("far", True, 0.105), row("near", True, 0.099), row("quick-a", False, 0.1),
                          row("quick-b", False, 0.11), row("quick-c", False, 0.1106)])
    assert same_setting_there(frame).tolist()[2:] == [
        "not tested there; nearby, focal_gamma=0.099: worse over 10 seeds",  # 1% away, not the 4.8% one
        "not tested there; nearby, focal_gamma=0.105: worse over 10 seeds",  # 4.5% away
        "not tested there"]  # 5.06% from 0.105: beyond the edge
