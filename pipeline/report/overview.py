"""Every study in a storage as one row: its control, best setting, verdict, and what the answer sheet's three
extra sections need (VOC AP beside COCO's, the chosen display thresholds, the data and anchors it used)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import pandas as pd

from pipeline.config import at_chapter_protocol, knobs_off_profile, protocol
from pipeline.machine import devices_text
from pipeline.report.select import ReportError, list_studies
from pipeline.report.text import params_text, setting_text
from pipeline.report.setting_key import search_setting_key
from pipeline.report.transfer import verdict_trial
from pipeline.report.trials import best_row, control_row, is_seed_study, seed_spread, state_counts, trials_frame
from pipeline.report.verdict_section import stored_verdict
from pipeline.study.kept_packs import seed_span
from pipeline.study.optuna_study import stored_base_config


def _verdict_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    """The stored verdict of the study's best setting (pipeline.stats.decide), as the summary's columns."""
    record = stored_verdict(attrs)
    if record is None:
        return {"seeds": 0, "confirmed_delta": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p": math.nan,
                "verdict": "not decided (one seed each; use --decide)", "outcome": "not decided", "split": "",
                "verdict_hours": 0.0, "verdict_seeds": "", "shared_control": "", "candidate_diffs": []}
    first = record["candidates"][0]
    lo, hi = first["delta_ci95"]
    return {"seeds": len(first["seeds"]), "confirmed_delta": first["delta"], "ci_lo": lo, "ci_hi": hi,
            "p": first["p"], "verdict": first["verdict"] + f" (on {record.get('split', 'val')})",
            "outcome": first["verdict"], "split": record.get("split", "val"),
            "verdict_hours": record.get("seconds", math.nan) / 3600,
            "verdict_seeds": seed_span(first["seeds"]) if first["seeds"] else "",
            "shared_control": record.get("shared_control", {}).get("key", ""),
            "control_mean": float(np.mean(first["control"])) if first["control"] else math.nan,
            "candidate_diffs": [c["diffs"] for c in record["candidates"]]}  # the sheet's family: every setting tested


EXTRA_METRICS = ("val/map50", "val/voc07_ap50", "val/voc_ap50", "val/f1_threshold", "val/best_f1")


def _extras(trials: pd.DataFrame, control, best) -> dict[str, Any]:
    """The control's and the best trial's VOC AP and chosen display threshold (NaN where not logged)."""
    out = {}
    for role, row in (("control", control), ("best", best)):
        for metric in EXTRA_METRICS:
            value = row.get(metric) if row is not None and metric in trials.columns else None
            out[f"{role}:{metric}"] = math.nan if value is None or pd.isna(value) else float(value)
    return out


def busy_hours(spans: list[tuple[datetime, datetime]]) -> float:
    """Hours during which at least one of the spans (start, end) ran: the gaps between sessions of a resumed study
    do not count, and trials of parallel workers count once."""
    total, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is not None and start < reach:
            start = reach
        if end > start:
            total += (end - start).total_seconds()
            reach = end
    return total / 3600


def setting_columns(study: optuna.Study) -> dict[str, Any]:
    """The question (first line), data set, input side, anchor scale and hours spent on the study's trials."""
    base = stored_base_config(study)
    spans = [(t.datetime_start, t.datetime_complete) for t in study.trials if t.datetime_start and t.datetime_complete]
    return {"question": (study.user_attrs.get("question") or "").splitlines()[0] if study.user_attrs.get("question")
            else "", "dataset": base.get("dataset"), "image_size": base.get("image_size"),
            "anchor_scale": base.get("anchor_scale", 1.0), "device": devices_text(study.user_attrs),
            "protocol": protocol(base), "chapter_protocol": at_chapter_protocol(base),
            "off_profile": knobs_off_profile(base, study.user_attrs.get("profile")),
            "search_hours": busy_hours(spans) if spans else math.nan}


def study_summary_row(study: optuna.Study) -> dict[str, Any]:
    """One study's control, best, single-seed delta and (where confirmed) the paired difference with its CI."""
    trials = trials_frame(study)
    control, best = control_row(trials), best_row(trials)
    row = {"study": study.study_name, "variant": study.user_attrs.get("variant", "?"), "design": False,
           **setting_columns(study),
           **_extras(trials, control, best),
           "profile": study.user_attrs.get("profile", "?"), "trials": state_counts(trials).split(": ", 1)[-1],
           "trials_done": int(trials["state"].isin(["COMPLETE", "PRUNED"]).sum()) if len(trials) else 0,
           "control": control["value"] if control is not None else math.nan,
           "best_trial": int(best["number"]) if best is not None else None,
           "best_params": params_text(best) if best is not None else "",
           "best": best["value"] if best is not None else math.nan}
    row["delta"] = row["best"] - row["control"]
    if is_seed_study(study.user_attrs.get("signature", {}).get("space", {})):
        spread = seed_spread(trials)
        row.update({"best_trial": None, "best_params": "", "best": math.nan, "delta": math.nan, "seeds": 0,
                    "confirmed_delta": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p": math.nan,
                    "seed_sd": spread["sd"] if spread else math.nan, "outcome": "seed noise", "split": "",
                    "verdict_hours": 0.0, "verdict_seeds": "", "shared_control": "", "candidate_diffs": [],
                    "verdict": f"seed noise: sd {spread['sd']:.4f} over {spread['n']} seeds" if spread
                    else "seed noise: fewer than 2 seeds complete"})
        return row
    verdict_on = verdict_trial(study)
    row.update(_verdict_columns(study.user_attrs),
               setting=setting_text(verdict_on.params) if verdict_on is not None else "",
               setting_key=search_setting_key(study, verdict_on.params) if verdict_on is not None else "")
    if control is None or best is None:
        row["verdict"] = "no comparison: " + ("no complete control" if control is None
                                              else "no complete trial besides the control")
    return row


def summary_frame(storage: str) -> pd.DataFrame:
    studies = list_studies(storage)
    if not studies:
        raise ReportError(f"no study in {storage}: run `python cli.py sweep VARIANT` first")
    loaded = [optuna.load_study(study_name=s["name"], storage=storage) for s in studies]
    rows = [study_summary_row(study) for study in loaded if "design" not in study.user_attrs]  # designs: no search
    if not rows:
        raise ReportError(f"no study with a search in {storage}: run `python cli.py sweep VARIANT` first")
    return pd.DataFrame(rows).sort_values(["variant", "study"]).reset_index(drop=True)
