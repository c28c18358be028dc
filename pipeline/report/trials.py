"""The trials DataFrame (one row per trial, what trials.csv holds) and what is read off it.

Only COMPLETE trials are compared: ``ranked`` applies pipeline.study.best's rule (never the control, ties to the
lower number), so the report names the same best trial as the sweep and its confirmation.
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from pipeline.study import best as best_rule
from pipeline.tracking import RunRecord

SUMMARY_METRICS = ["val/map", "val/map50", "val/map75", "val/map_small", "val/map_medium", "val/map_large"]
TOP_CURVES = 3  # trials beside the control in the per-epoch figure


def complete(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["state"] == "COMPLETE"]


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """The candidates for 'best' by pipeline.study.best's rule (COMPLETE, not the control), best first."""
    index = {int(r["number"]): i for i, r in trials.iterrows()}
    entries = [best_rule.Entry(int(r["number"]), r["state"], bool(r["control"]), None if pd.isna(r["value"])
                               else float(r["value"])) for _, r in trials.iterrows()]
    return trials.loc[[index[e.number] for e in best_rule.candidates(entries)]]


def control_row(trials: pd.DataFrame) -> pd.Series | None:
    rows = complete(trials)[complete(trials)["control"]]
    return None if rows.empty else rows.iloc[0]


def control_label(trials: pd.DataFrame) -> str:
    """'control (trial N)': the control is trial 0 unless it failed and was queued again."""
    control = control_row(trials)
    return "control" if control is None else f"control (trial {int(control['number'])})"


def best_row(trials: pd.DataFrame) -> pd.Series | None:
    rows = ranked(trials)
    return None if rows.empty else rows.iloc[0]


def _param_value(value: Any) -> Any:
    return "None" if value is None else value  # a chosen None (the chapter's alpha) is not a missing param


def _end_reason(trial: optuna.trial.FrozenTrial, run: RunRecord | None) -> str:
    if trial.state == TrialState.PRUNED:
        steps = sorted(trial.intermediate_values)
        return f"pruned after epoch {steps[-1] + 1}" if steps else "pruned before its first epoch"
    if trial.state == TrialState.FAIL:
        reason = (trial.user_attrs.get("fail_reason") or (run.tags.get("end_reason") if run else None)
                  or trial.system_attrs.get("fail_reason"))
        return reason or "failed (no reason recorded)"
    return ""


def _trial_row(trial: optuna.trial.FrozenTrial, run: RunRecord | None) -> dict[str, Any]:
    steps = sorted(trial.intermediate_values)
    row: dict[str, Any] = {
        "number": trial.number, "state": trial.state.name, "control": bool(trial.user_attrs.get("control")),
        "value": trial.value if trial.state == TrialState.COMPLETE else None}
    row.update({f"params_{k}": _param_value(v) for k, v in trial.params.items()})
    row.update(trial.user_attrs.get("metrics") or {})
    # a pack's seeds, each with its own value (pipeline.study.trial keeps them on the trial)
    row.update({f"value/seed_{seed}": v for seed, v in (trial.user_attrs.get("seed_values") or {}).items()})
    row.update({"epochs_reported": len(steps),
                "last_reported": trial.intermediate_values[steps[-1]] if steps else None,
                "datetime_start": trial.datetime_start, "datetime_complete": trial.datetime_complete,
                "duration_s": trial.duration.total_seconds() if trial.duration else None,
                "mlflow_run_id": trial.user_attrs.get("mlflow_run_id") or (run.run_id if run else None),
                "end_reason": _end_reason(trial, run)})
    return row


TRIAL_COLUMNS = ["number", "state", "control", "value", "epochs_reported", "last_reported", "datetime_start",
                 "datetime_complete", "duration_s", "mlflow_run_id", "end_reason"]


def _column_order(columns: list[str]) -> list[str]:
    first = ["number", "state", "control", "value"]
    params = sorted(c for c in columns if c.startswith("params_"))
    metrics = [m for m in SUMMARY_METRICS if m in columns]
    metrics += sorted(c for c in columns if "/" in c and c not in metrics)
    return first + params + metrics + [c for c in columns if c not in first + params + metrics]


def trials_frame(study: optuna.Study, runs: dict[int, RunRecord] | None = None) -> pd.DataFrame:
    """One row per trial: state, value (COMPLETE only), params, final metrics, timings, run id, end reason."""
    rows = [_trial_row(t, (runs or {}).get(t.number)) for t in study.get_trials(deepcopy=False)]
    frame = pd.DataFrame(rows)
    for column in TRIAL_COLUMNS + SUMMARY_METRICS:
        if column not in frame:
            frame[column] = pd.Series(dtype=bool if column == "control" else object)
    frame = frame[_column_order(list(frame.columns))]
    numeric = ["value", *(c for c in frame.columns if "/" in c)]
    frame[numeric] = frame[numeric].astype(float)  # None (COCO's 'no object of this size') becomes NaN
    frame["control"] = frame["control"].astype(bool)
    return frame


def curve_picks(trials: pd.DataFrame) -> dict[str, int]:
    """label → trial number: the control, then the best trials, for the per-epoch figure."""
    picks: dict[str, int] = {}
    control = control_row(trials)
    if control is not None:
        picks[f"control (trial {control['number']})"] = int(control["number"])
    for rank, (_, row) in enumerate(ranked(trials).head(TOP_CURVES).iterrows()):
        picks[f"trial {row['number']}" + (" (best)" if rank == 0 else "")] = int(row["number"])
    return picks


def pr_picks(trials: pd.DataFrame) -> dict[str, int]:
    picks = {}
    for label, row in (("control", control_row(trials)), ("best", best_row(trials))):
        if row is not None:
            picks[f"{label} (trial {row['number']})"] = int(row["number"])
    return picks


def state_counts(trials: pd.DataFrame) -> str:
    counts = trials["state"].value_counts()
    parts = [f"{counts.get(s, 0)} {w}" for s, w in
             (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"), ("RUNNING", "running"),
              ("WAITING", "waiting")) if counts.get(s, 0) or s in ("COMPLETE", "PRUNED", "FAIL")]
    return f"{len(trials)} trials: " + ", ".join(parts)


def is_seed_study(space: dict[str, Any]) -> bool:
    """A study whose only searched knob is the seed (the baseline variant's) measures noise; it searches nothing."""
    return set(space) == {"seed"}


def seed_spread(trials: pd.DataFrame) -> dict[str, float] | None:
    """n, mean, sd, min, max of the complete trials' values (every seed, the control's included)."""
    values = complete(trials)["value"].astype(float)
    if len(values) < 2:
        return None
    return {"n": len(values), "mean": values.mean(), "sd": values.std(ddof=1), "min": values.min(),
            "max": values.max()}
