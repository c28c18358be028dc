"""A design's contrasts that answer an exercise (ANSWERS) become rows of the answer sheet: read from the design's
record, and named as the chapter's answers only at the chapter's protocol (ANSWERS' own check is in
tests/stats/test_contrasts.py)."""

import dataclasses

import numpy as np
import optuna
import pandas as pd
import pytest

from pipeline.config import make_config
from pipeline.report.answers import VERDICT_WORDS, glance_table, with_design_answers
from pipeline.report.whose_answer import STANDINGS, standing_table, whose_answer_blocks
from pipeline.report.design_answers import design_answer_rows
from pipeline.stats.contrasts import spread

CELLS = {"chapter": {}, "box 4": {"box_weight": 4.0}, "focal": {"cls_loss": "focal", "focal_gamma": 0.1,
                                                                "focal_alpha": 0.75},
         "random negatives": {"neg_sampling": "random", "neg_pos_ratio": 10.0},
         "smooth L1": {"box_loss": "smooth_l1", "smooth_l1_sigma": 1.0}}


def winners_study(storage: str, profile: str) -> optuna.Study:
    """A quick-winners study at ``profile`` whose record holds box 4 (decided better on 5 seeds) and focal
    (pending on 2): what pipeline.study.design keeps, trimmed to what the sheet reads."""
    study = optuna.create_study(study_name=f"quick-winners-{profile}", storage=storage)
    study.set_user_attr("variant", "quick-winners")
    study.set_user_attr("profile", profile)
    study.set_user_attr("device_used", "cpu: AMD EPYC (2 cores)")
    study.set_user_attr("design", {"cells": CELLS, "contrasts": {}})
    study.set_user_attr("signature", {"base_config": dataclasses.asdict(make_config(profile, {}))})
    control = {"1": 0.10, "2": 0.12, "3": 0.08, "4": 0.11, "5": 0.09}
    box = {seed: score + 0.05 for seed, score in control.items()}
    study.set_user_attr("contrasts", {
        "split": "test", "control_cell": "chapter", "shared_control": {"key": "control test/map abc"},
        "cells": {cell: {"scores": scores, "diverged": [], **spread(list(scores.values()))} for cell, scores in
                  (("chapter", control), ("box 4", box), ("focal", {"1": 0.2, "2": 0.1}))},
        "contrasts": [
            {"contrast": "box 4 against the chapter", "weights": {"box 4": 1, "chapter": -1}, "seeds": [1, 2, 3, 4, 5],
             "values": [0.05] * 5, "verdict": "better", "delta": 0.05, "delta_ci95": [0.02, 0.08], "p": 0.001},
            {"contrast": "focal against the chapter", "weights": {"focal": 1, "chapter": -1}, "seeds": [1, 2],
             "values": [0.1, -0.02], "verdict": "pending", "delta": 0.04, "delta_ci95": [-np.inf, np.inf],
             "p": 1.0}]})
    return study


def test_each_answering_contrast_is_a_row_of_its_exercise(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    rows = design_answer_rows(winners_study(storage, "chapter"))
    by_exercise = {row["variant"]: row for row in rows}
    assert set(by_exercise) == {"loss-weights", "focal-loss"}  # smooth L1 and random negatives: not trained yet
    box = by_exercise["loss-weights"]
    assert (box["outcome"], box["confirmed_delta"], box["ci_lo"], box["ci_hi"]) == ("better", 0.05, 0.02, 0.08)
    assert box["seeds"] == 5 and box["verdict_seeds"] == "1-5" and box["chapter_protocol"] is True
    assert box["control_mean"] == pytest.approx(0.10) and box["candidate_diffs"] == [[0.05] * 5]
    assert box["best_params"] == "box_weight=4 (design `quick-winners`)" and box["image_size"] == 256
    assert box["setting_key"] == "box_weight=4 | on the chapter's"  # what the sheet matches it on
    assert box["question"] == "Should the box loss weigh more, or less, than the class loss?"
    assert by_exercise["focal-loss"]["control_mean"] == pytest.approx(0.11)  # the control on the contrast's seeds


def test_the_sheet_names_a_design_answer_at_the_chapters_protocol_as_the_chapters(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searched = pd.DataFrame([{"study": "loss-weights-quick", "variant": "loss-weights", "design": False,
                              "profile": "quick", "image_size": 64, "dataset": "bananas", "device": None,
                              "chapter_protocol": False, "seeds": 8, "outcome": "better", "confirmed_delta": 0.06,
                              "ci_lo": 0.01, "ci_hi": 0.11, "delta": 0.1, "best_params": "box_weight=4",
                              "verdict_seeds": "1-8", "split": "test", "question": "q", "search_hours": 1.0,
                              "verdict_hours": 0.5, "candidate_diffs": [[0.06] * 8], "shared_control": "",
                              "control_mean": 0.1, "setting_key": "box_weight=4 | on the chapter's"}])
    frame = with_design_answers(searched, [winners_study(storage, "chapter")])
    assert list(zip(frame["variant"], frame["study"])) == [  # an exercise's rows together
        ("focal-loss", "quick-winners-chapter"), ("loss-weights", "loss-weights-quick"),
        ("loss-weights", "quick-winners-chapter")]
    where = "chapter profile, bananas, 256 px, on cpu: AMD EPYC (2 cores)"
    assert standing_table(frame).values.tolist() == [  # the chapter's answers first, then the proxies', then none
        [STANDINGS["chapter"], "`loss-weights` by the design `quick-winners-chapter`", "better",
         "+0.0500 [+0.0200, +0.0800]", where, ""],
        [STANDINGS["proxy"], "`loss-weights`", "better", "+0.0600 [+0.0100, +0.1100]", "quick profile, bananas, 64 px",
         "better over 5 seeds"],  # box_weight=4 from a search trains what the design's box 4 trains
        [STANDINGS["pending"], "`focal-loss` by the design `quick-winners-chapter`", "pending",
         "+0.0400 [no bound yet]", where, ""]]  # pending on 2 seeds: not an answer yet
    chapter = optuna.load_study(study_name="quick-winners-chapter", storage=storage)
    both = with_design_answers(searched, [chapter, winners_study(storage, "quick")])
    quick = standing_table(both).set_index("exercise").loc["`loss-weights` by the design `quick-winners-quick`"]
    assert quick["the same setting at the chapter's protocol"] == "better over 5 seeds"  # the design's own contrast
    blocks = whose_answer_blocks(frame)  # focal is pending, on 2 seeds: not an answer yet
    assert blocks[2].text == ("The chapter's answers so far: `loss-weights` by the design `quick-winners-chapter` is "
                              "better.")
    searched_there = {**searched.iloc[0].to_dict(), "study": "loss-weights-chapter", "profile": "chapter",
                      "image_size": 256, "chapter_protocol": True, "seeds": 0, "outcome": "", "confirmed_delta": None}
    with_search = standing_table(pd.concat([frame, pd.DataFrame([searched_there])], ignore_index=True))
    searched_rows = with_search[with_search["whose answer"] == STANDINGS["searched"]]
    assert list(searched_rows["exercise"]) == ["`loss-weights`"]  # the pending design is not listed again
    assert list(searched_rows["verdict"]) == ["not decided"]
    assert list(searched_rows["decided at"]) == ["chapter profile, bananas, 256 px"]
    table = glance_table(frame, tmp_path).set_index("best setting")
    assert table.loc["box_weight=4 (design `quick-winners`)", "verdict"] == "better"
    focal = table.loc["cls_loss=focal, focal_gamma=0.1, focal_alpha=0.75 (design `quick-winners`)"]
    assert (focal["verdict"], focal["verdict, as one family of the sheet"]) == ("pending", "pending")
    assert table.loc["box_weight=4 (design `quick-winners`)", "new seeds"] == "5 (seeds 1-5)"
    assert table.loc["box_weight=4 (design `quick-winners`)", "hours (search + verdict)"] == "n/a"
    assert all(f"**{word}**" in VERDICT_WORDS for word in table["verdict"])  # the sheet says what each means


def test_a_store_of_designs_only_still_gets_its_sheet(tmp_path):
    """A GPU call cut short after quick-winners leaves a store with that design and no search: its sheet lists the
    design's answers, and the sections that read searches say there is nothing to show."""
    from pipeline.report.answers import write_answers

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    winners_study(storage, "chapter")
    page = (write_answers(storage, tmp_path / "answers") / "report.md").read_text()
    assert "Made by `python cli.py report all` from the 1 study in" in page
    assert "The chapter's answers so far: `loss-weights` by the design `quick-winners-chapter` is better." in page
    assert f"| {STANDINGS['pending']} | `focal-loss` by the design `quick-winners-chapter` | pending |" in page
    assert "| `loss-weights` | Should the box loss weigh more, or less, than the class loss? | better |" in page
    assert "## Evaluating as the SSD paper does: VOC AP at IoU 0.5" in page and "No study to show yet." in page
    assert (tmp_path / "answers" / "figures" / "forest.png").stat().st_size > 10_000


def test_a_design_answering_one_exercise_with_two_contrasts_names_each():
    """input-size-design answers input-size with the input's contrast and the anchors': each row, in the sheet's
    text and in the forest's labels, names its contrast; a design with one contrast per exercise does not."""
    import experiments
    from pipeline.report.answer_figures import _points
    from pipeline.report.design_answers import by_design

    assert experiments.load("input-size-design").answers == {"input x1.5": "input-size",
                                                             "anchors x0.667": "input-size"}
    row = {"study": "input-size-design-quick", "variant": "input-size", "design": True,
           "design_variant": "input-size-design", "profile": "quick", "image_size": 128, "device": None,
           "outcome": "worse", "seeds": 8, "split": "test", "delta": np.nan, "confirmed_delta": -0.02,
           "ci_lo": -0.03, "ci_hi": -0.004, "chapter_protocol": False}
    frame = pd.DataFrame([{**row, "setting": "input x1.5"},
                          {**row, "setting": "anchors x0.667", "outcome": "better", "confirmed_delta": 0.011},
                          {**row, "study": "quick-winners-quick", "variant": "loss-weights",
                           "design_variant": "quick-winners", "setting": "box 4 against the chapter"},
                          {**row, "study": "loss-weights-quick", "variant": "loss-weights", "design": False,
                           "design_variant": None, "setting": "box_weight=4"}])
    assert by_design(frame) == [" by the design `input-size-design-quick` (input x1.5)",
                                 " by the design `input-size-design-quick` (anchors x0.667)",
                                 " by the design `quick-winners-quick`", ""]
    points = _points(frame)
    assert list(zip(points["variant"], points["label"])) == [  # under each exercise's heading, in the plot's order
        ("input-size", "input-size-design (anchors x0.667) at quick, 128 px  (better, 8 new seeds on test)"),
        ("input-size", "input-size-design (input x1.5) at quick, 128 px  (worse, 8 new seeds on test)"),
        ("loss-weights", "its search at quick, 128 px  (worse, 8 new seeds on test)"),
        ("loss-weights", "quick-winners at quick, 128 px  (worse, 8 new seeds on test)")]
