"""A design's contrasts that answer an exercise (the variant file's ANSWERS) as rows of the answer sheet: each
one setting against the control on paired seeds, at the design's profile, beside the exercise's own studies.
quick-winners puts the quick profile's answers to the chapter's protocol this way, five trainings a seed on a
CPU instead of a search per exercise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import pandas as pd

import experiments
from pipeline.report.design_section import ATTR
from pipeline.report.overview import setting_columns
from pipeline.report.setting_key import design_setting_key
from pipeline.report.text import setting_text
from pipeline.study.kept_packs import seed_span


def exercise_answers(study: optuna.Study) -> dict[str, str]:
    """The design's contrast -> exercise map; empty when its variant file is gone or maps none."""
    try:
        return experiments.load(study.user_attrs.get("variant", "")).answers
    except (KeyError, experiments.VariantFileError):  # a file gone, or broken since: the design's rows are left out
        return {}


def design_answer_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One summary row (pipeline.report.overview's columns) per contrast of the design that answers an exercise."""
    record, answers = study.user_attrs.get(ATTR), exercise_answers(study)
    if not record or not answers:
        return []
    cells, control = study.user_attrs["design"]["cells"], record["control_cell"]
    rows = []
    for row in record["contrasts"]:
        cell = experiments.one_cell_against(row["weights"], control)
        if row["contrast"] in answers and cell in cells and row["seeds"]:
            rows.append(_row(study, row, answers[row["contrast"]], cell, cells[cell], record, control))
    return rows



def _row(study: optuna.Study, row: dict, exercise: str, cell: str, overrides: dict, record: dict, control: str
         ) -> dict[str, Any]:
    control_scores = [record["cells"][control]["scores"].get(str(seed)) for seed in row["seeds"]]
    lo, hi = row.get("delta_ci95", [-math.inf, math.inf])
    setting = setting_text(overrides)
    return {"study": study.study_name, "variant": exercise, "design": True,
            "design_variant": study.user_attrs.get("variant"), **setting_columns(study),
            "question": experiments.load(exercise).question.splitlines()[0], "search_hours": math.nan,
            "profile": study.user_attrs.get("profile", "?"), "trials": "design", "trials_done": 0,
            "best_params": f"{setting} (design `{study.user_attrs.get('variant')}`)", "setting": row["contrast"],
            "setting_key": design_setting_key(study, cell, overrides),
            "delta": math.nan,
            "control": math.nan, "best": math.nan, "seeds": len(row["seeds"]),
            "confirmed_delta": row.get("delta", math.nan), "ci_lo": lo, "ci_hi": hi, "p": row.get("p", math.nan),
            "verdict": f"{row['verdict']} (on {record.get('split', 'val')})", "outcome": row["verdict"],
            "split": record.get("split", "val"), "verdict_hours": math.nan,
            "verdict_seeds": seed_span(row["seeds"]) if row["seeds"] else "",
            "shared_control": record.get("shared_control", {}).get("key", ""),
            "control_mean": float(np.mean(control_scores)) if control_scores else math.nan,
            "candidate_diffs": [list(row["values"])] if row["values"] else []}


def design_rows(frame: pd.DataFrame) -> pd.Series:
    """Which rows are a design's contrasts (with_design_answers) rather than a search's study."""
    if "design" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["design"].fillna(False).astype(bool)


def which_contrast(frame: pd.DataFrame) -> list[str]:
    """' (input x1.5)': a design row's contrast, where its design answers that exercise with several; else ''."""
    if "setting" not in frame or frame.empty:
        return [""] * len(frame)
    several = frame.groupby(["study", "variant"])["variant"].transform("size") > 1
    return [f" ({setting})" if many and design else ""
            for setting, many, design in zip(frame["setting"], several, design_rows(frame))]


def by_design(frame: pd.DataFrame) -> list[str]:
    """' by the design `quick-winners-chapter`' for a design's row ('… (its contrast)' where the design answers
    the exercise with more than one), '' for a search's."""
    return [f" by the design `{study}`{which}" if design else ""
            for study, design, which in zip(frame["study"], design_rows(frame), which_contrast(frame))]
