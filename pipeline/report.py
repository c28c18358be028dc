"""Studies and their MLflow runs → pandas → seaborn figures → report.md and a self-contained report.html.

Three layers, kept apart:

- gathering: the Optuna study and its MLflow runs become one ``StudyData`` of DataFrames;
- figures: one function per chart, DataFrames in, a PNG out, or ``Skipped(reason)`` when the
  chart would be empty or meaningless (the report then says why it is left out);
- writing: the report is a list of blocks, rendered once as Markdown and once as HTML with the
  figures embedded as data URIs, so the HTML opens from disk with everything showing.

Pruned and failed trials never count as best: only COMPLETE trials are compared. A single-seed
difference is reported as untested; with confirmation runs (``sweep --seeds N``) the report gives
mean ± 95% CI over seeds and a paired t-test of best against control, seed by seed.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import inspect
import json
import math
import re
import shlex
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter
from optuna.trial import TrialState
from scipy import stats

from pipeline import best as best_rule
from pipeline.config import RunConfig, make_config, parse_value
from pipeline.sqlite_files import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, sqlite_path
from pipeline.tracking import MlflowReader, RunRecord, tracking_uri

OBJECTIVE_LABEL = "val mAP@[.5:.95]"
SUMMARY_METRICS = ["val/map", "val/map50", "val/map75", "val/map_small", "val/map_medium", "val/map_large"]
SIZES = {"small": "val/map_small", "medium": "val/map_medium", "large": "val/map_large"}
TOP_K = 5  # trials beside the control in the summary table
TOP_CURVES = 3  # trials beside the control in the per-epoch figure
LEVEL = 0.95  # confidence level of every interval
DPI = 110
UNITS = {"image_size": " (px)", "scale": " (×)"}
COLORS = {"trial": sns.color_palette("deep")[0], "best": sns.color_palette("deep")[2], "control": "#4d4d4d",
          "pruned": sns.color_palette("deep")[1], "failed": sns.color_palette("deep")[3]}


class ReportError(ValueError):
    """A report that cannot be made: the message says why and what exists."""


class Skipped(Exception):
    """A figure left out; the message is the reason the report prints."""


# ---------------------------------------------------------------------------
# Choosing the study
# ---------------------------------------------------------------------------

def _check_storage(storage: str) -> None:
    path = sqlite_path(storage)
    if path is not None:
        if not path.exists():
            raise ReportError(f"no Optuna storage at {path.resolve()}: run `python cli.py sweep VARIANT` first, "
                              "or pass the --storage the sweep used")


def list_studies(storage: str) -> list[dict[str, Any]]:
    """name, variant, profile and trial counts of every study in the storage."""
    _check_storage(storage)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        rows.append({"name": summary.study_name, "variant": summary.user_attrs.get("variant"),
                     "profile": summary.user_attrs.get("profile"), "n_trials": len(states),
                     "n_complete": sum(s == TrialState.COMPLETE for s in states)})
    return rows


def _describe(studies: list[dict[str, Any]]) -> str:
    if not studies:
        return "the storage holds no study"
    return "studies there: " + "; ".join(f"{s['name']} (variant {s['variant']}, {s['n_complete']} complete)"
                                         for s in studies)


def pick_study(target: str, storage: str, study_name: str | None = None) -> tuple[optuna.Study, str]:
    """The study to report on, and a sentence saying how it was chosen."""
    studies = list_studies(storage)
    if study_name is None and target in {s["name"] for s in studies}:
        study_name = target
    if study_name is not None:
        if study_name not in {s["name"] for s in studies}:
            raise ReportError(f"no study named {study_name!r} in {storage}; {_describe(studies)}")
        return optuna.load_study(study_name=study_name, storage=storage), f"Study `{study_name}`, as asked."
    matches = sorted((s for s in studies if s["variant"] == target), key=lambda s: -s["n_complete"])
    if not matches:
        raise ReportError(f"no study of variant {target!r} in {storage}; {_describe(studies)}")
    chosen = matches[0]
    note = f"Study `{chosen['name']}`."
    if len(matches) > 1:
        others = ", ".join(f"`{s['name']}` ({s['n_complete']} complete)" for s in matches[1:])
        note = (f"Study `{chosen['name']}`: of the studies of `{target}`, it has the most complete trials "
                f"({chosen['n_complete']}); also there: {others}. Pass --study-name to pick another.")
    return optuna.load_study(study_name=chosen["name"], storage=storage), note


# ---------------------------------------------------------------------------
# Gathering: Optuna + MLflow → pandas
# ---------------------------------------------------------------------------

@dataclass
class StudyData:
    """Everything the figures and the text need, read once."""
    study: optuna.Study
    note: str  # how the study was chosen
    storage: str
    trials: pd.DataFrame  # one row per trial: what trials.csv holds
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)  # label, trial, epoch, value
    pr: pd.DataFrame = field(default_factory=pd.DataFrame)  # label, class, recall, precision
    runs: dict[int, RunRecord] = field(default_factory=dict)  # trial number → its MLflow run
    experiment_id: str | None = None
    tracking_uri: str = ""
    mlflow_note: str = ""  # why MLflow data is missing, if it is

    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    @property
    def space(self) -> dict[str, dict[str, Any]]:
        """The searched parameters: the study's recorded space, plus any the trials show that it lacks
        (a study recorded before describe_space walked conditional branches)."""
        space = dict(self.attrs.get("signature", {}).get("space", {}))
        for trial in self.study.get_trials(deepcopy=False):
            for name, dist in trial.distributions.items():
                space.setdefault(name, describe_distribution(dist))
        return space

    @property
    def base_config(self) -> dict[str, Any]:
        return self.attrs.get("signature", {}).get("base_config", {})

    @property
    def objective(self) -> str:
        return self.attrs.get("signature", {}).get("objective", "val/map")


def describe_distribution(dist: optuna.distributions.BaseDistribution) -> dict[str, Any]:
    """An Optuna distribution in the form the sweep records a space (pipeline.sweep.SpaceRecorder)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log, "step": dist.step}


def complete(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["state"] == "COMPLETE"]


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """The candidates for 'best' by pipeline.best's rule (COMPLETE, not the control), best first."""
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


def _open_reader() -> tuple[MlflowReader | None, str]:
    uri = tracking_uri()
    if (path := sqlite_path(uri)) is not None and not path.exists():
        return None, (f"no MLflow store at {uri} (set MLFLOW_TRACKING_URI to the sweep's store): "
                      "the figures that need run histories and artifacts are left out")
    return MlflowReader(uri), ""


def trial_runs(reader: MlflowReader, study: optuna.Study) -> dict[int, RunRecord]:
    """The MLflow run of each trial: the one its user_attrs name, else the latest tagged with its number."""
    runs = reader.find_runs(study.study_name, {"study": study.study_name})
    by_id = {r.run_id: r for r in runs}
    found: dict[int, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time_ms or 0):
        if run.tags.get("trial_number", "").isdigit():
            found[int(run.tags["trial_number"])] = run
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id in by_id:
            found[trial.number] = by_id[run_id]
    return found


def curve_picks(trials: pd.DataFrame) -> dict[str, int]:
    """label → trial number: the control, then the best trials, for the per-epoch figure."""
    picks: dict[str, int] = {}
    control = control_row(trials)
    if control is not None:
        picks[f"control (trial {control['number']})"] = int(control["number"])
    for rank, (_, row) in enumerate(ranked(trials).head(TOP_CURVES).iterrows()):
        picks[f"trial {row['number']}" + (" (best)" if rank == 0 else "")] = int(row["number"])
    return picks


def epochs_frame(reader: MlflowReader, runs: dict[int, RunRecord], picks: dict[str, int],
                 metric: str = "val/map") -> pd.DataFrame:
    """label, trial, epoch (1-based), value: the metric's history of each picked trial's run."""
    rows = [{"label": label, "trial": number, "epoch": step + 1, "value": value}
            for label, number in picks.items() if number in runs
            for step, value in reader.metric_history(runs[number].run_id, metric)]
    return pd.DataFrame(rows, columns=["label", "trial", "epoch", "value"])


def pr_frame(reader: MlflowReader, run_ids: dict[str, str]) -> pd.DataFrame:
    """label, class, recall, precision from each run's pr_curve_iou50.json (COCOeval, IoU 0.5, all areas)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, run_id in run_ids.items():
            path = reader.download_artifact(run_id, "pr_curve_iou50.json", Path(tmp) / run_id)
            if path is None:
                continue
            curves = json.loads(path.read_text())
            for name, precision in curves["precision"].items():
                rows += [{"label": label, "class": name, "recall": r, "precision": p}
                         for r, p in zip(curves["recall"], precision) if p is not None]
    return pd.DataFrame(rows, columns=["label", "class", "recall", "precision"])


def pr_picks(trials: pd.DataFrame) -> dict[str, int]:
    picks = {}
    for label, row in (("control", control_row(trials)), ("best", best_row(trials))):
        if row is not None:
            picks[f"{label} (trial {row['number']})"] = int(row["number"])
    return picks


def gather(study: optuna.Study, note: str, storage: str) -> StudyData:
    """Read the study and its MLflow runs into one StudyData."""
    reader, mlflow_note = _open_reader()
    runs = trial_runs(reader, study) if reader else {}
    trials = trials_frame(study, runs)
    data = StudyData(study, note, storage, trials, runs=runs, mlflow_note=mlflow_note)
    if reader is None:
        return data
    data.tracking_uri = reader.uri
    data.experiment_id = reader.experiment_id(study.study_name)
    if data.experiment_id is None:
        data.mlflow_note = (f"the MLflow store {reader.uri} has no experiment {study.study_name!r}: the figures "
                            "that need run histories and artifacts are left out")
        return data
    data.epochs = epochs_frame(reader, runs, curve_picks(trials))
    data.pr = pr_frame(reader, {label: runs[n].run_id for label, n in pr_picks(trials).items() if n in runs})
    return data


# ---------------------------------------------------------------------------
# Statistics: confirmation runs over seeds
# ---------------------------------------------------------------------------

def mean_ci(values: list[float], level: float = LEVEL) -> dict[str, float]:
    """n, mean, sd and the t-interval of the mean (lo, hi are NaN with one value)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=sd / math.sqrt(n))
    else:
        lo, hi = (mean, mean) if n > 1 else (math.nan, math.nan)
    return {"n": n, "mean": mean, "sd": sd, "lo": float(lo), "hi": float(hi)}


def paired_comparison(best: list[float], control: list[float], level: float = LEVEL) -> dict[str, Any]:
    """Best minus control, seed by seed: mean difference with its CI, paired t-test p, effect size d_z.

    d_z = mean(diff) / sd(diff). 'within_noise' is True when the CI includes 0 or p >= 1 - level,
    and None when no test is possible (fewer than 2 seeds, or identical differences).
    """
    diff = np.asarray(best, dtype=float) - np.asarray(control, dtype=float)
    ci = mean_ci(list(diff), level)
    out = {**{f"diff_{k}": v for k, v in ci.items()}, "p": math.nan, "t": math.nan, "effect_size": math.nan,
           "within_noise": None}
    if len(diff) < 2 or not ci["sd"] > 0:
        return out
    test = stats.ttest_rel(best, control)
    out.update(t=float(test.statistic), p=float(test.pvalue), effect_size=ci["mean"] / ci["sd"])
    out["within_noise"] = bool(ci["lo"] <= 0 <= ci["hi"] or out["p"] >= 1 - level)
    return out


def verdict(comparison: dict[str, Any]) -> str:
    """One plain sentence about the paired comparison."""
    n = comparison["diff_n"]
    if n < 2:
        return f"Only {n} confirmation seed: no test is possible. Run the sweep again with `--seeds 3` or more."
    if comparison["within_noise"] is None:
        return "The differences are identical on every seed, so the t-test is undefined: treat it as untested."
    ci = f"the 95% CI of the difference, [{comparison['diff_lo']:+.4f}, {comparison['diff_hi']:+.4f}],"
    includes = comparison["diff_lo"] <= 0 <= comparison["diff_hi"]
    p = f"p = {comparison['p']:.3g}"
    if comparison["within_noise"]:
        why = f"{ci} includes 0 ({p})" if includes else f"{p} ≥ 0.05"
        return (f"**Within noise**: {why}. On these seeds the best setting is not reliably different "
                "from the control.")
    winner = "best trial beats the control" if comparison["diff_mean"] > 0 else "control beats the best trial"
    return f"**The {winner}** beyond seed noise: {ci[:-1]} excludes 0 and {p}."


def confirmation_stats(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Per-role mean ± CI and the paired comparison, from the study's 'confirmation' user attr."""
    record = attrs.get("confirmation")
    if not record or not record.get("best") or not record.get("control"):
        return None
    return {"best_trial": record.get("best_trial"), "seeds": record.get("seeds", []),
            "best": mean_ci(record["best"]), "control": mean_ci(record["control"]),
            "paired": paired_comparison(record["best"], record["control"]),
            "values": {"best": record["best"], "control": record["control"]}}


# ---------------------------------------------------------------------------
# Figures: DataFrames in, one PNG out (or Skipped with the reason)
# ---------------------------------------------------------------------------

@contextmanager
def _figure(path: Path, n_axes: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.2,
            title: str | None = None, style: str = "whitegrid") -> Iterator[tuple[Figure, list]]:
    """A seaborn-themed figure with n_axes axes (the unused cells of the grid removed), saved on exit."""
    nrows = -(-n_axes // ncols)
    with sns.axes_style(style), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in grid[n_axes:]:
            ax.remove()
        if title:
            fig.suptitle(title, fontweight="bold")
        yield fig, list(grid[:n_axes])
        fig.savefig(path, dpi=DPI)


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _choice_label(value: Any) -> str:
    if value is None or value == "None":
        return "None"
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _axis_label(name: str, dist: dict[str, Any]) -> str:
    return name + UNITS.get(name, "") + (" (log scale)" if dist.get("log") else "")


def _param_points(trials: pd.DataFrame, name: str) -> pd.DataFrame:
    column = f"params_{name}"
    if column not in trials:
        return pd.DataFrame(columns=["number", "x", "value"])
    rows = ranked(trials)
    rows = rows[rows[column].notna()]
    return pd.DataFrame({"number": rows["number"], "x": rows[column], "value": rows["value"]})


def _positions(points: pd.DataFrame, dist: dict[str, Any]) -> tuple[np.ndarray, list[str] | None]:
    """x of each point: the value, or for a categorical parameter its choice's index with a fixed small jitter."""
    if dist["type"] != "categorical":
        return points["x"].astype(float).to_numpy(), None
    order = [_choice_label(c) for c in dist["choices"]]
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(points))
    return np.array([order.index(_choice_label(v)) for v in points["x"]]) + jitter, order


def _plot_param_axis(ax, points: pd.DataFrame, name: str, dist: dict[str, Any], best: int | None) -> None:
    x, order = _positions(points, dist)
    is_best = (points["number"] == best).to_numpy()
    ax.scatter(x[~is_best], points["value"][~is_best], color=COLORS["trial"], s=40, label="trial", zorder=3)
    ax.scatter(x[is_best], points["value"][is_best], marker="*", s=260, color=COLORS["best"], edgecolor="black",
               zorder=5, label="best trial")
    if order is not None:
        ax.set_xticks(range(len(order)), order, rotation=30 if sum(map(len, order)) > 24 else 0)
        ax.set_xlim(-0.5, len(order) - 0.5)
    elif dist.get("log"):  # ticks across the search range: matplotlib's minor log labels collide
        ticks = np.geomspace(float(dist["low"]), float(dist["high"]), 5)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(_axis_label(name, dist))
    ax.set_ylabel(OBJECTIVE_LABEL)
    ax.set_title(f"{OBJECTIVE_LABEL} vs {name}")


def plot_objective_vs_params(trials: pd.DataFrame, space: dict[str, dict], path: Path) -> str:
    """One panel per searched parameter; the control as a dashed horizontal line."""
    if not space:
        raise Skipped("the study searches no parameter")
    done = ranked(trials)
    if done.empty:
        raise Skipped("no trial besides the control completed")
    names = [n for n in space if not _param_points(trials, n).empty]
    if not names:
        raise Skipped("no complete trial has any of the searched parameters")
    control, best, label = control_row(trials), best_row(trials), control_label(trials)
    ncols = min(3, len(names))
    with _figure(path, len(names), ncols, width=5.0 if ncols > 1 else 7.0,
                 title=f"Objective vs each searched parameter ({_count(len(done), 'complete trial')})") as (fig, axes):
        for ax, name in zip(axes, names):
            _plot_param_axis(ax, _param_points(trials, name), name, space[name], int(best["number"]))
            if len(names) == 1:
                ax.set_title("")  # the figure's title says it already
            if control is not None:
                ax.axhline(control["value"], ls="--", color=COLORS["control"], label=label)
        handles, labels = axes[0].get_legend_handles_labels()
        keep = {l: h for h, l in zip(handles, labels) if l in ("trial", "best trial", label)}
        fig.legend(keep.values(), keep.keys(), loc="outside lower center", ncols=len(keep), frameon=False)
    return ("Each point is one complete trial; the star is the best (it can hide a trial of nearly the same "
            "value), the dashed line the control.")


def _bin_labels(values: pd.Series, dist: dict[str, Any]) -> tuple[pd.Series, list[str]]:
    """Categories as they are; a numeric parameter with many values in 4 bins spanning its search range."""
    if dist["type"] == "categorical":
        return values.map(_choice_label), [_choice_label(c) for c in dist["choices"]]
    numbers = values.astype(float)
    if dist["type"] == "int" and numbers.nunique() <= 6:
        order = [_choice_label(v) for v in sorted(numbers.unique())]
        return numbers.map(_choice_label), order
    low, high = float(dist["low"]), float(dist["high"])
    edges = np.geomspace(low, high, 5) if dist.get("log") else np.linspace(low, high, 5)
    order = [f"{a:.3g}–{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
    return pd.cut(numbers, edges, labels=order, include_lowest=True).astype(str), order


def plot_heatmap(trials: pd.DataFrame, space: dict[str, dict], path: Path) -> str:
    """Mean objective over the grid of the two searched parameters."""
    if len(space) != 2:
        raise Skipped(f"a heatmap needs exactly two searched parameters; this study searches {len(space)}")
    (x_name, x_dist), (y_name, y_dist) = space.items()
    columns = [f"params_{x_name}", f"params_{y_name}"]
    done = ranked(trials).dropna(subset=columns) if set(columns) <= set(trials.columns) else trials.iloc[:0]
    if len(done) < 2:
        raise Skipped("a heatmap needs at least two complete trials besides the control")
    x, x_order = _bin_labels(done[f"params_{x_name}"], x_dist)
    y, y_order = _bin_labels(done[f"params_{y_name}"], y_dist)
    cells = pd.DataFrame({"x": x.values, "y": y.values, "value": done["value"].values})
    grid = cells.pivot_table(index="y", columns="x", values="value", aggfunc=["mean", "count"], observed=False)
    mean = grid["mean"].reindex(index=y_order, columns=x_order)
    count = grid["count"].reindex(index=y_order, columns=x_order).fillna(0).astype(int)
    annot = np.where(count > 0, mean.map(lambda v: f"{v:.4f}") + "\nn=" + count.astype(str), "")
    with _figure(path, width=7.2, height=4.8, style="white",
                 title=f"Mean {OBJECTIVE_LABEL} over {x_name} × {y_name}") as (fig, (ax,)):
        sns.heatmap(mean.astype(float), annot=annot, fmt="", cmap="viridis", mask=mean.isna(), linewidths=0.5,
                    linecolor="white", cbar_kws={"label": OBJECTIVE_LABEL}, ax=ax)
        ax.set_xlabel(_axis_label(x_name, x_dist))
        ax.set_ylabel(_axis_label(y_name, y_dist))
        ax.tick_params(axis="y", labelrotation=0)
        ax.set_facecolor("#eeeeee")
    control = control_row(trials)
    versus = f" The {control_label(trials)} scored {control['value']:.4f}." if control is not None else ""
    return ("Mean over the complete trials in each cell (n = trials); a grey cell had no trial. Numeric "
            "parameters are cut into equal bins of their search range." + versus)


def plot_epochs(epochs: pd.DataFrame, path: Path) -> str:
    """val/map after each epoch for the control and the top trials."""
    if epochs.empty:
        raise Skipped("no per-epoch history was found in MLflow for the control or a complete trial")
    labels = list(dict.fromkeys(epochs["label"]))
    palette = {l: COLORS["control"] if l.startswith("control") else c
               for l, c in zip(labels, [COLORS["best"], *sns.color_palette("deep")[4:]] * 3)}
    palette.update({l: COLORS["best"] for l in labels if l.endswith("(best)")})
    others = [l for l in labels if not l.startswith("control") and not l.endswith("(best)")]
    palette.update({l: c for l, c in zip(others, [COLORS["trial"], *sns.color_palette("deep")[4:]])})
    who = "the control and the top trials" if len(labels) > 1 else labels[0].split(" (")[0]
    with _figure(path, title=f"Validation mAP per epoch: {who}") as (fig, (ax,)):
        sns.lineplot(data=epochs, x="epoch", y="value", hue="label", hue_order=labels, palette=palette,
                     style="label", style_order=labels, markers=True, dashes=False, markersize=8, ax=ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(OBJECTIVE_LABEL)
        _integer_axis(ax, epochs["epoch"])
        ax.legend(title=None, loc="best")
    return "From the MLflow metric history of each trial's run (val/map, logged after every epoch)."


def _integer_axis(ax, values: pd.Series) -> None:
    """Whole-number ticks (epochs, trial numbers), with room around a single value."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if values.nunique() == 1:
        ax.set_xlim(values.iloc[0] - 1, values.iloc[0] + 1)


def plot_pr_curves(pr: pd.DataFrame, ap50: dict[str, float], path: Path) -> str:
    """Precision against recall at IoU 0.5, one panel per class (the class mean when there are many)."""
    if pr.empty:
        raise Skipped("no pr_curve_iou50.json artifact was found for the control or the best trial")
    classes = list(dict.fromkeys(pr["class"]))
    caption = "From COCOeval's precision array at IoU 0.5, all object sizes, 100 detections per image."
    if len(classes) > 4:
        pr = pr.groupby(["label", "recall"], as_index=False)["precision"].mean().assign(**{"class": "class mean"})
        classes, caption = ["class mean"], caption + f" Mean over {len(classes)} classes."
    labels = list(dict.fromkeys(pr["label"]))
    names = {l: f"{l}, AP50 {ap50[l]:.3f}" if not math.isnan(ap50.get(l, math.nan)) else l for l in labels}
    palette = {names[l]: COLORS["control"] if l.startswith("control") else COLORS["best"] for l in labels}
    with _figure(path, len(classes), min(2, len(classes)), width=5.6 if len(classes) > 1 else 6.4,
                 title="Precision–recall at IoU 0.5: control and best") as (fig, axes):
        for ax, name in zip(axes, classes):
            part = pr[pr["class"] == name].assign(run=lambda f: f["label"].map(names))
            sns.lineplot(data=part, x="recall", y="precision", hue="run", palette=palette, ax=ax,
                         drawstyle="steps-post", linewidth=2)
            ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"class: {name}")
            ax.legend(title=None, loc="upper right")
    return caption


def size_frame(trials: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """label, size, ap for the control and the best; and the sizes left out because COCO gives NaN."""
    rows, empty = [], []
    picks = [(f"{k} (trial {r['number']})", r) for k, r in (("control", control_row(trials)),
                                                           ("best", best_row(trials))) if r is not None]
    for size, metric in SIZES.items():
        values = [(label, row[metric]) for label, row in picks]
        if all(pd.isna(v) for _, v in values):
            empty.append(size)
        rows += [{"label": label, "size": size, "ap": v} for label, v in values if not pd.isna(v)]
    return pd.DataFrame(rows, columns=["label", "size", "ap"]), empty


def plot_ap_by_size(sizes: pd.DataFrame, empty: list[str], path: Path) -> str:
    if sizes.empty:
        raise Skipped("neither the control nor a searched trial completed with a defined AP at any object size")
    labels = list(dict.fromkeys(sizes["label"]))
    palette = {l: COLORS["control"] if l.startswith("control") else COLORS["best"] for l in labels}
    who = " and ".join(l.split(" (")[0] for l in labels)
    with _figure(path, title=f"AP by object size: {who}") as (fig, (ax,)):
        sns.barplot(data=sizes, x="size", y="ap", hue="label", palette=palette, ax=ax,
                    order=[s for s in SIZES if s not in empty])
        for container in ax.containers:
            ax.bar_label(container, fmt="%.4f", padding=2, fontsize=8)
        ax.set(xlabel="object size (COCO areas)", ylabel="AP@[.5:.95]")
        ax.margins(y=0.15)
        ax.legend(title=None, loc="best")
    caption = "COCO areas: small < 32², medium 32²–96², large > 96² pixels."
    if empty:
        caption += f" Left out: {', '.join(empty)} (no object of that size in the validation set, so AP is NaN)."
    return caption


def _history_points(trials: pd.DataFrame) -> pd.DataFrame:
    done = complete(trials).sort_values("number")
    return done.assign(best_so_far=done["value"].cummax())


def plot_history(trials: pd.DataFrame, path: Path) -> str:
    """Objective by trial number with the best so far; pruned at their last value, failed along the bottom."""
    done = _history_points(trials)
    pruned = trials[(trials["state"] == "PRUNED") & trials["last_reported"].notna()]
    failed = trials[trials["state"] == "FAIL"]
    if trials.empty:
        raise Skipped("the study has no trial yet")
    if done.empty and pruned.empty:
        raise Skipped("no trial reported a value")
    with _figure(path, width=7.2, title="Optimisation history") as (fig, (ax,)):
        for rows, style in ((done[~done["control"]], dict(color=COLORS["trial"], s=40, label="complete trial")),
                            (done[done["control"]], dict(color=COLORS["control"], marker="D", s=50,
                                                         label=control_label(trials)))):
            if not rows.empty:
                ax.scatter(rows["number"], rows["value"], zorder=4, **style)
        if not done.empty:  # carried on to the last trial, so a flat tail reads as 'nothing better since'
            steps = pd.concat([done, done.tail(1).assign(number=trials["number"].max())])
            ax.step(steps["number"], steps["best_so_far"], where="post", color=COLORS["best"], label="best so far")
        if not pruned.empty:
            ax.scatter(pruned["number"], pruned["last_reported"], color=COLORS["pruned"], marker="X", s=60,
                       label="pruned (last epoch's value)")
        if not failed.empty:
            ax.scatter(failed["number"], [0.0] * len(failed), color=COLORS["failed"], marker="v", s=60,
                       label="failed (no value; drawn at 0)", clip_on=False, zorder=5)
        ax.set(xlabel="trial number", ylabel=OBJECTIVE_LABEL)
        _integer_axis(ax, trials["number"])
        ax.legend(loc="best", fontsize=8)
    return "Best so far counts complete trials only (the control included); pruned and failed trials never count."


def param_importances(study: optuna.Study) -> pd.Series:
    """fANOVA importances over the complete non-control trials (the control has no params to attribute)."""
    searched = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.params and not t.user_attrs.get("control")]
    names = set().union(*(t.params for t in searched)) if searched else set()
    if len(searched) < 2:
        raise Skipped(f"importances need at least two complete trials besides the control; there are {len(searched)}")
    if len(names) < 2:
        raise Skipped("only one parameter is searched, so its importance is 1 by definition")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        copy = optuna.create_study(direction=study.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(searched)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception as exc:  # e.g. every value equal, or conditional params with no common trials
        raise Skipped(f"optuna could not compute importances: {exc}") from None
    if not found:
        raise Skipped("no parameter was set in every complete trial, so optuna has nothing to attribute")
    return pd.Series(found, name="importance").sort_values(ascending=False)


MIN_TRIALS_FOR_IMPORTANCES = 10  # below this, fANOVA attributes mostly which values the sampler happened to pair


def plot_importances(importances: pd.Series, n_trials: int, searched: list[str], path: Path) -> str:
    frame = importances.rename_axis("parameter").reset_index()
    conditional = [name for name in searched if name not in importances.index]
    with _figure(path, height=1.2 + 0.5 * len(frame), title="Parameter importances") as (fig, (ax,)):
        sns.barplot(data=frame, x="importance", y="parameter", color=COLORS["trial"], ax=ax)
        ax.bar_label(ax.containers[0], fmt="%.2f", padding=3, fontsize=8)
        ax.set(xlabel="importance (fANOVA share of the objective's variance)", ylabel="parameter", xlim=(0, 1.1))
    caption = f"optuna.importance with the fANOVA evaluator over {_count(n_trials, 'complete trial')} besides the control."
    if n_trials < 20:
        caption += " With this few trials, read these as rough."
    if conditional:  # optuna attributes only the parameters that every trial has
        caption += f" Left out, as not set in every trial (conditional): {', '.join(conditional)}."
    return caption


# ---------------------------------------------------------------------------
# Text: blocks rendered as Markdown and as HTML
# ---------------------------------------------------------------------------

@dataclass
class Block:
    kind: str  # h1, h2, p, ul, table, code, figure
    text: str = ""
    items: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    path: Path | None = None  # a figure, relative to the report folder


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _params_text(row: pd.Series) -> str:
    if row["control"]:
        return "control (the chapter's settings)"
    items = [(c.removeprefix("params_"), v) for c, v in row.items() if c.startswith("params_") and not _missing(v)]
    return ", ".join(f"{k}={_choice_label(v) if not isinstance(v, float) else f'{v:.4g}'}" for k, v in items)


def _signed(value: float) -> str:
    return "n/a" if _missing(value) else f"{value:+.4f}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _ci_text(ci: dict[str, float]) -> str:
    if ci["n"] < 2:
        return f"{ci['mean']:.4f} (1 seed)"
    return f"{ci['mean']:.4f} ± {(ci['hi'] - ci['lo']) / 2:.4f} (n={ci['n']})"


def _summary_record(row: pd.Series, role: str, base: float, confirmation: dict | None) -> dict[str, str]:
    record = {"trial": str(int(row["number"])), "role": role, "params": _params_text(row),
              "val/map": _fmt(row["value"]), "Δ val/map": "" if role == "control" else _signed(row["value"] - base)}
    record.update({m.removeprefix("val/"): _fmt(row[m]) for m in SUMMARY_METRICS[1:]})
    if confirmation:
        key = "control" if role == "control" else ("best" if row["number"] == confirmation["best_trial"] else None)
        record["confirmed val/map, mean ± 95% CI"] = _ci_text(confirmation[key]) if key else ""
    return record


def summary_table(trials: pd.DataFrame, confirmation: dict | None) -> pd.DataFrame:
    """The control, then the top-k complete trials, with metrics and the delta to the control."""
    control = control_row(trials)
    base = control["value"] if control is not None else math.nan
    records = [_summary_record(control, "control", base, confirmation)] if control is not None else []
    for rank, (_, row) in enumerate(ranked(trials).head(TOP_K).iterrows(), 1):
        records.append(_summary_record(row, "best" if rank == 1 else f"top {rank}", base, confirmation))
    return pd.DataFrame(records)


def _question_blocks(question: str) -> tuple[str, list[Block]]:
    """A study's docstring: its first line (the title), then the rest as paragraphs and bullet lists.

    A line that starts with "* " or "- " opens a list item; the indented lines after it continue it."""
    lines = inspect.cleandoc(question).splitlines() or [""]
    blocks: list[Block] = []
    for line in lines[1:]:
        text = line.strip()
        if not text:
            blocks.append(Block("p"))  # a paragraph break; empty blocks are dropped below
        elif text[:2] in ("* ", "- "):
            if not blocks or blocks[-1].kind != "ul":
                blocks.append(Block("ul"))
            blocks[-1].items.append(text[2:])
        elif blocks and blocks[-1].kind == "ul" and line[:1].isspace():
            blocks[-1].items[-1] += " " + text
        elif blocks and blocks[-1].kind == "p":
            blocks[-1].text = f"{blocks[-1].text} {text}".strip()
        else:
            blocks.append(Block("p", text))
    return lines[0].strip(), [b for b in blocks if b.text or b.items]


def _state_counts(trials: pd.DataFrame) -> str:
    counts = trials["state"].value_counts()
    parts = [f"{counts.get(s, 0)} {w}" for s, w in
             (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"), ("RUNNING", "running"),
              ("WAITING", "waiting")) if counts.get(s, 0) or s in ("COMPLETE", "PRUNED", "FAIL")]
    return f"{len(trials)} trials: " + ", ".join(parts)


def _when(trials: pd.DataFrame) -> str:
    start, end = trials["datetime_start"].dropna(), trials["datetime_complete"].dropna()
    if start.empty:
        return "never started"
    last = f" to {end.max():%Y-%m-%d %H:%M}" if not end.empty else ""
    return f"{start.min():%Y-%m-%d %H:%M}{last}"


PROTOCOL_KNOBS = ("image_size", "epochs", "batch_size", "lr", "train_images", "val_images")


def protocol_note(base_config: dict[str, Any]) -> list[str]:
    """Where the study's base configuration departs from the chapter's protocol (none: an empty list)."""
    chapter = dataclasses.asdict(make_config("chapter"))
    changed = [k for k in PROTOCOL_KNOBS if k in base_config and base_config[k] != chapter[k]]
    if not changed:
        return []
    return ["The control is the chapter's model and loss, trained here with "
            + ", ".join(f"{k} {base_config[k]}" for k in changed) + " instead of the chapter's "
            + ", ".join(f"{chapter[k]}" for k in changed) + ": compare trials with this control, "
            "not with the chapter's own numbers."]


def header_blocks(d: StudyData) -> list[Block]:
    variant = d.attrs.get("variant", d.study.study_name)
    title, question = _question_blocks(d.attrs.get("question", ""))
    cfg = d.base_config
    data_set = (f"`{cfg.get('dataset', '?')}` at {cfg.get('image_size', '?')} px; "
                f"{cfg.get('train_images') or 'all'} training and {cfg.get('val_images') or 'all'} validation images, "
                f"{_count(cfg.get('epochs', 0), 'epoch')} per trial")
    items = [d.note, f"Data set: {data_set}.", *protocol_note(cfg), f"Profile: `{d.attrs.get('profile', '?')}`; "
             f"device: `{d.attrs.get('device_used') or cfg.get('device', '?')}`; objective: `{d.objective}` (COCO mAP@[.5:.95]), maximised.",
             f"Trials: {_state_counts(d.trials)}.", f"Run: {_when(d.trials)}."]
    if d.mlflow_note:
        items.append(f"MLflow: {d.mlflow_note}.")
    return [Block("h1", f"{variant}: {title}" if title else variant), *question, Block("ul", items=items)]


def headline(trials: pd.DataFrame) -> str:
    """One sentence: the best complete trial against the control, on the search's single seed."""
    control, best = control_row(trials), best_row(trials)
    if best is None and control is None:
        return "No trial completed, so there is nothing to compare. See the trials left out below."
    if best is None:
        return (f"Only the control completed (val/map {control['value']:.4f}): no searched setting "
                "can be compared with it yet.")
    if control is None:
        return (f"The best trial is {best['number']} (val/map {best['value']:.4f}), but the control did not "
                "complete, so no delta to the chapter can be given.")
    delta = best["value"] - control["value"]
    verb = "scored higher than" if delta > 0 else "did not score higher than"
    return (f"The best trial, {best['number']} ({_params_text(best)}), {verb} the {control_label(trials)}: "
            f"val/map {best['value']:.4f} against {control['value']:.4f} (Δ {delta:+.4f}), one seed each.")


def is_seed_study(space: dict[str, Any]) -> bool:
    """A study whose only searched knob is the seed (the baseline study) measures noise; it searches nothing."""
    return set(space) == {"seed"}


def seed_spread(trials: pd.DataFrame) -> dict[str, float] | None:
    """n, mean, sd, min, max of the complete trials' values (every seed, the control's included)."""
    values = complete(trials)["value"].astype(float)
    if len(values) < 2:
        return None
    return {"n": len(values), "mean": values.mean(), "sd": values.std(ddof=1), "min": values.min(),
            "max": values.max()}


def baseline_spread(storage: str, profile: str | None) -> dict[str, Any] | None:
    """The seed spread of a baseline study of the same profile in the storage, if one has 3 or more values."""
    for row in list_studies(storage):
        if row["variant"] == "baseline" and row["profile"] == profile and row["n_complete"] >= 3:
            study = optuna.load_study(study_name=row["name"], storage=storage)
            return {"study": row["name"], **seed_spread(trials_frame(study))}
    return None


def _control_swing(study: optuna.Study, trials: pd.DataFrame, last: int = 3) -> tuple[float, list[float]] | None:
    """How much the control's val/map moved over its last ``last`` validated epochs (max - min), and the values."""
    control = control_row(trials)
    if control is None:
        return None
    values = study.get_trials(deepcopy=False)[int(control["number"])].intermediate_values
    tail = [values[k] for k in sorted(values)[-last:]]
    return (max(tail) - min(tail), tail) if len(tail) >= 2 else None


def noise_sentences(d: StudyData) -> list[str]:
    """The sizes of noise this study shows or the storage holds, to read a one-seed Δ against."""
    out = []
    swing = _control_swing(d.study, d.trials)
    if swing is not None:
        out.append(f"Over its last {len(swing[1])} validated epochs the control's val/map moved by {swing[0]:.4f} "
                   f"({' → '.join(f'{v:.4f}' for v in swing[1])}): the final value is one point of a curve "
                   "that still moves.")
    seeds = baseline_spread(d.storage, d.attrs.get("profile"))
    if seeds is not None:
        out.append(f"The `{seeds['study']}` study measured the seed noise of this profile: sd {seeds['sd']:.4f} over "
                   f"{seeds['n']} seeds, so two one-seed runs of the same setting differ by up to about "
                   f"±{2.8 * seeds['sd']:.4f} (95%).")
    return out


def edge_notes(d: StudyData) -> list[str]:
    """A best value at the edge of its numeric search range: the optimum may lie beyond the range."""
    best, notes = best_row(d.trials), []
    if best is None:
        return notes
    for name, dist in d.space.items():
        value = best.get(f"params_{name}")
        if dist["type"] == "categorical" or _missing(value):
            continue
        low, high, x = float(dist["low"]), float(dist["high"]), float(value)
        if dist.get("log"):
            low, high, x = math.log(low), math.log(high), math.log(x)
        where = (x - low) / (high - low) if high > low else 0.5
        if where <= 0.05 or where >= 0.95:
            side = "low" if where <= 0.05 else "high"
            notes.append(f"The best {name}, {float(value):.4g}, lies at the {side} edge of its search range "
                         f"[{dist['low']:g}, {dist['high']:g}]: the best setting may be beyond it.")
    return notes


def seed_study_blocks(d: StudyData) -> list[Block]:
    spread = seed_spread(d.trials)
    if spread is None:
        return [Block("h2", "Summary: seed noise"),
                Block("p", "Fewer than two seeds completed: no spread to report yet.")]
    return [Block("h2", "Summary: seed noise"),
            Block("p", f"The same configuration, trained with {spread['n']} seeds: val/map {spread['mean']:.4f} ± "
                       f"{spread['sd']:.4f} (mean ± sd), from {spread['min']:.4f} to {spread['max']:.4f}. Two one-seed "
                       f"runs of one setting differ by up to about ±{2.8 * spread['sd']:.4f} (95%): a one-seed Δ in "
                       "another study of this profile means little unless it is larger. Which seed scored "
                       "highest is chance, not a finding."),
            Block("table", table=summary_table(d.trials, None))]


def summary_blocks(d: StudyData, confirmation: dict | None) -> list[Block]:
    if is_seed_study(d.space):
        return seed_study_blocks(d)
    blocks = [Block("h2", "Summary: the control against the best trials"), Block("p", headline(d.trials)),
              *(Block("p", note) for note in edge_notes(d))]
    table = summary_table(d.trials, confirmation)
    if not table.empty:
        blocks.append(Block("table", table=table))
        blocks.append(Block("p", f"Top {TOP_K} complete trials by val/map; Δ is against the control; n/a: COCO "
                                 "gives no AP for a size with no object. Pruned and failed trials are left out."))
    if confirmation is None and best_row(d.trials) is not None:
        blocks.append(Block("p", "**Not tested against noise.** These differences come from one training seed "
                                 "each. " + " ".join(noise_sentences(d)) + " Run the sweep command under Reproduce "
                                 "again with `--seeds 3` (or more) to re-train the best trial and the control with "
                                 "new seeds and test the difference."))
    return blocks


def confirmation_blocks(c: dict[str, Any], trials: pd.DataFrame) -> list[Block]:
    rows = [{"run": role, "trial": str(c["best_trial"]) if role == "best" else "control",
             "seeds": ", ".join(map(str, c["seeds"])),
             "val/map per seed": ", ".join(f"{v:.4f}" for v in c["values"][role]),
             "mean": _fmt(c[role]["mean"]), "95% CI": f"[{_fmt(c[role]['lo'])}, {_fmt(c[role]['hi'])}]",
             "sd": _fmt(c[role]["sd"])} for role in ("best", "control")]
    p = c["paired"]
    paired = pd.DataFrame([{"seeds": str(p["diff_n"]), "mean Δ (best − control)": _signed(p["diff_mean"]),
                            "95% CI of Δ": f"[{_signed(p['diff_lo'])}, {_signed(p['diff_hi'])}]",
                            "paired t": _fmt(p["t"], 3),
                            "p": _fmt(p["p"], 4), "effect size d_z (mean Δ / sd Δ)": _fmt(p["effect_size"], 2)}])
    blocks = [Block("h2", "Confirmation over seeds"),
              Block("p", "The best trial's configuration and the control, re-trained with new seeds (not the "
                         "search's own, so the best trial's lucky draw does not count twice). Intervals are "
                         "t-intervals (scipy.stats.t); the comparison is a paired t-test, seed by seed."),
              Block("table", table=pd.DataFrame(rows)), Block("table", table=paired), Block("p", verdict(p))]
    best = best_row(trials)
    if best is not None and int(best["number"]) != c["best_trial"]:
        blocks.append(Block("p", f"The confirmation re-trained trial {c['best_trial']}, the best when it ran; the "
                                 f"best is now trial {best['number']}. Run the sweep with `--seeds` again to confirm it."))
    return blocks


def left_out_blocks(trials: pd.DataFrame) -> list[Block]:
    others = trials[trials["state"] != "COMPLETE"]
    blocks = [Block("h2", "Trials left out of the comparisons")]
    if trials.empty:
        return blocks + [Block("p", "None: the study has no trial yet.")]
    if others.empty:
        return blocks + [Block("p", "None: every trial completed.")]
    words = {"FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting"}
    items = [f"trial {r['number']} ({'control, ' if r['control'] else ''}{words.get(r['state'], r['state'].lower())}): "
             f"{r['end_reason'] or 'no value yet'}" for _, r in others.iterrows()]
    return blocks + [Block("p", "Only complete trials are compared; these are shown in the optimisation history "
                                "only, and listed in trials.csv."), Block("ul", items=items)]


@dataclass
class FigureOut:
    name: str
    title: str
    path: Path | None = None  # relative to the report folder; None when left out
    caption: str = ""
    reason: str = ""  # why it is left out


def _from_mlflow(d: StudyData, plot: Callable[[Path], str]) -> Callable[[Path], str]:
    def run(path: Path) -> str:
        if d.mlflow_note:
            raise Skipped("it needs the study's MLflow runs, which were not found (see MLflow in the header)")
        return plot(path)
    return run


def figure_plan(d: StudyData) -> list[tuple[str, str, Callable[[Path], str]]]:
    """(file stem, title, plot) for every figure a study report may hold, in reading order."""
    t = d.trials
    ap50 = {label: t.loc[t["number"] == n, "val/map50"].iloc[0] for label, n in pr_picks(t).items()}
    n_searched = len(ranked(t).query("not control"))
    return [
        ("objective_vs_params", "The objective against each searched parameter",
         lambda p: plot_objective_vs_params(t, d.space, p)),
        ("heatmap", "The objective over two parameters", lambda p: plot_heatmap(t, d.space, p)),
        ("val_map_per_epoch", "Validation mAP per epoch", _from_mlflow(d, lambda p: plot_epochs(d.epochs, p))),
        ("pr_curve_iou50", "Precision–recall at IoU 0.5", _from_mlflow(d, lambda p: plot_pr_curves(d.pr, ap50, p))),
        ("ap_by_size", "AP by object size", lambda p: plot_ap_by_size(*size_frame(t), p)),
        ("optimisation_history", "Optimisation history", lambda p: plot_history(t, p)),
        ("param_importances", "Parameter importances", lambda p: importances_figure(d, n_searched, p)),
    ]


def importances_figure(d: StudyData, n_searched: int, path: Path) -> str:
    if n_searched < MIN_TRIALS_FOR_IMPORTANCES:
        raise Skipped(f"importances need at least {MIN_TRIALS_FOR_IMPORTANCES} complete trials besides the "
                      f"control; with {n_searched}, fANOVA would mostly attribute which values the sampler "
                      "happened to pair")
    return plot_importances(param_importances(d.study), n_searched, list(d.space), path)


def make_figures(d: StudyData, folder: Path) -> list[FigureOut]:
    """Draw every figure into folder/figures/ (stale PNGs removed first); a skipped one keeps its reason."""
    figures_dir = folder / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for old in figures_dir.glob("*.png"):
        old.unlink()
    out = []
    for name, title, plot in figure_plan(d):
        path = figures_dir / f"{name}.png"
        try:
            out.append(FigureOut(name, title, path.relative_to(folder), caption=plot(path)))
        except Skipped as exc:
            path.unlink(missing_ok=True)
            out.append(FigureOut(name, title, reason=str(exc)))
    return out


def figure_blocks(figures: list[FigureOut]) -> list[Block]:
    blocks = [Block("h2", "Figures")]
    for f in figures:
        if f.path is not None:
            blocks.append(Block("figure", f.caption, path=f.path))  # the PNG carries its own title
    left_out = [f"{f.title}: {f.reason}." for f in figures if f.path is None]
    if left_out:
        blocks += [Block("h3", "Figures left out"), Block("ul", items=left_out)]
    return blocks


# ---------------------------------------------------------------------------
# Reproduce: the commands that re-create the study and the best run
# ---------------------------------------------------------------------------

def _flag_value(value: Any) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_flags(config: dict[str, Any], profile: str, skip: dict[str, Any] | None = None) -> list[str]:
    """``--set key=value`` for every knob that differs from the profile (and from ``skip``, the study's FIXED)."""
    reference = dataclasses.asdict(make_config(profile))
    flags = []
    for key, value in sorted(config.items(), key=lambda kv: list(reference).index(kv[0]) if kv[0] in reference else 0):
        if key in reference and reference[key] != value and (skip or {}).get(key, object()) != value:
            flags += ["--set", shlex.quote(f"{key}={_flag_value(value)}")]
    return flags


def _study_fixed(variant: str | None) -> dict[str, Any]:
    import experiments
    try:
        return experiments.load(variant).fixed if variant else {}
    except KeyError:
        return {}


def best_config(d: StudyData) -> dict[str, Any] | None:
    """The best trial's full RunConfig: its MLflow params when there, else the base config plus its params."""
    best = best_row(d.trials)
    if best is None:
        return None
    run = d.runs.get(int(best["number"]))
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    if run is not None and fields <= set(run.params):
        return {k: parse_value(k, run.params[k]) for k in fields}
    import experiments
    trial = d.study.trials[int(best["number"])]
    try:
        spec = experiments.load(d.attrs.get("variant"))
        base = RunConfig(**d.base_config)
        return dataclasses.asdict(dataclasses.replace(base, **spec.space(optuna.trial.FixedTrial(trial.params), base)))
    except Exception:  # the study's file changed or is gone: say so rather than guess
        return None


def shell_lines(words: list[str], width: int = 96) -> str:
    """One command, wrapped before a flag with backslash continuations, so it reads and still pastes."""
    lines, line = [], ""
    for word in words:
        if line and word.startswith("--") and len(line) + len(word) > width:
            lines.append(line + " \\")
            line = "  "
        line = f"{line} {word}" if line.strip() else line + word
    return "\n".join(lines + [line])


def sweep_command(d: StudyData, seeds: int | None = None) -> str:
    variant, profile = d.attrs.get("variant", "?"), d.attrs.get("profile", "quick")
    words = ["python", "cli.py", "sweep", variant, "--profile", profile]
    words += config_flags(d.base_config, profile, skip=_study_fixed(variant))
    done = int(d.trials["state"].isin(["COMPLETE", "PRUNED"]).sum())
    words += ["--trials", str(done)] if done else []
    words += ["--seeds", str(seeds)] if seeds else []
    words += ["--storage", shlex.quote(d.storage)] if d.storage != DEFAULT_STORAGE else []
    words += ["--study-name", shlex.quote(d.study.study_name)] if d.study.study_name != f"{variant}-{profile}" else []
    return shell_lines(words)


def _ui_command(uri: str) -> str:
    default = "sqlite:///" + str(sqlite_path(DEFAULT_TRACKING_URI).resolve())
    return "python cli.py ui" if uri in ("", default) else f"MLFLOW_TRACKING_URI={shlex.quote(uri)} python cli.py ui"


def reproduce_blocks(d: StudyData, confirmation: dict | None) -> list[Block]:
    profile = d.attrs.get("profile", "quick")
    blocks = [Block("h2", "Reproduce"), Block("p", "The sweep (running it again resumes the stored study; a new "
                                                   "storage re-runs it from scratch):"),
              Block("code", sweep_command(d, len(confirmation["seeds"]) if confirmation else None))]
    config = None if is_seed_study(d.space) else best_config(d)  # the best seed is chance, not a finding
    if config is not None:
        train = ["python", "cli.py", "train", "--profile", profile, *config_flags(config, profile)]
        blocks += [Block("p", f"The best trial ({best_row(d.trials)['number']}) as one tracked training run:"),
                   Block("code", shell_lines(train))]
    parent = d.attrs.get("last_parent_run_id")
    if d.experiment_id:
        blocks += [Block("p", f"MLflow: experiment `{d.study.study_name}` (id `{d.experiment_id}`), last sweep's "
                              f"parent run `{parent}`; each trial is a nested run tagged with its `trial_number`. "
                              f"This report's files are also logged to the parent run under `report/`. Browse them "
                              f"with the command below, then open "
                              f"`http://127.0.0.1:5000/#/experiments/{d.experiment_id}/runs/{parent}`:"),
                   Block("code", _ui_command(d.tracking_uri))]
    return blocks


# ---------------------------------------------------------------------------
# Rendering: Markdown and self-contained HTML
# ---------------------------------------------------------------------------

def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "ul":
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            parts.append(_md_table(b.table))
        elif b.kind == "code":
            parts.append(f"```bash\n{b.text}\n```")
        elif b.kind == "figure":
            parts.append(f"![{b.text}]({b.path.as_posix()})\n\n*{b.text}*")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then the three Markdown marks the report uses: `code`, **bold** and [text](relative link)."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    out = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _html_figure(b: Block, folder: Path) -> str:
    data = base64.b64encode((folder / b.path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.text)}">'
            f"<figcaption>{_inline_html(b.text)}</figcaption></figure>")


# a number or signed delta (with an optional ± half-width), a [lo, hi] interval, or n/a
NUMERIC = re.compile(r"^([-+]?\d+(\.\d+)?( ± \d+(\.\d+)? \(n=\d+\))?|\[[-+\d., ]+\]|n/a)$")


def _html_table(table: pd.DataFrame) -> str:
    """Numbers right-aligned, text left-aligned."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f'<td class="{"num" if NUMERIC.match(str(v)) else "text"}">'
                                    f"{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _html_block(b: Block, folder: Path) -> str:
    if b.kind in ("h1", "h2", "h3"):
        return f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p>{_inline_html(b.text)}</p>"
    if b.kind == "ul":
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>"
    if b.kind == "table":
        return _html_table(b.table)
    if b.kind == "code":
        return f"<pre><code>{html.escape(b.text)}</code></pre>"
    return _html_figure(b, folder)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; font-size: .85em; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
.scroll { overflow-x: auto; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
code { font-size: .9em; } figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9em; }
"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    body = "\n".join(_html_block(b, folder) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{CSS}</style></head>\n'
            f"<body>\n{body}\n</body></html>\n")


def write_documents(folder: Path, blocks: list[Block], title: str) -> None:
    (folder / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (folder / "report.html").write_text(to_html(blocks, folder, title), encoding="utf-8")


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def _log_to_parent_run(d: StudyData, folder: Path) -> None:
    """Add the report to the sweep's parent run, so the MLflow UI shows it too."""
    parent = d.attrs.get("last_parent_run_id")
    if not parent or not d.experiment_id:
        return
    try:
        MlflowReader(d.tracking_uri).log_artifacts_to_run(parent, folder, "report")
    except Exception as exc:  # the report on disk is what matters; say why MLflow did not get a copy
        warnings.warn(f"report not logged to MLflow run {parent}: {exc}", stacklevel=2)


def study_blocks(d: StudyData, figures: list[FigureOut]) -> list[Block]:
    confirmation = confirmation_stats(d.attrs)
    blocks = header_blocks(d) + summary_blocks(d, confirmation)
    if confirmation:
        blocks += confirmation_blocks(confirmation, d.trials)
    return (blocks + left_out_blocks(d.trials) + figure_blocks(figures) + reproduce_blocks(d, confirmation)
            + [Block("p", "The data behind every figure and table: `trials.csv`, one row per trial.")])


def write_study_report(study: optuna.Study, note: str, storage: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = gather(study, note, storage)
    figures = make_figures(data, folder)
    data.trials.to_csv(folder / "trials.csv", index=False)
    write_documents(folder, study_blocks(data, figures), f"{study.study_name}: report")
    _log_to_parent_run(data, folder)
    return folder


def write_report(target: str, *, storage: str = DEFAULT_STORAGE, out_root: Path = Path("reports"),
                 study_name: str | None = None) -> Path:
    """Write out_root/<target>/ (report.md, report.html, trials.csv, figures/) or, for 'all', out_root/summary/.

    Returns the folder written. ReportError when there is no such study (the message lists those that exist).
    """
    if target == "all":
        return write_summary(storage, Path(out_root) / "summary")
    study, note = pick_study(target, storage, study_name)
    return write_study_report(study, note, storage, Path(out_root) / (study_name or target))


# ---------------------------------------------------------------------------
# 'all': every study's best against its control, on one page
# ---------------------------------------------------------------------------

def _short_verdict(c: dict | None) -> str:
    if c is None:
        return "not tested (one seed; use --seeds)"
    p = c["paired"]
    if p["within_noise"] is None:
        return "not testable (fewer than 2 seeds or identical differences)"
    if p["within_noise"]:
        return "within noise"
    return "better beyond noise" if p["diff_mean"] > 0 else "worse beyond noise"


def study_summary_row(study: optuna.Study) -> dict[str, Any]:
    """One study's control, best, single-seed delta and (where confirmed) the paired difference with its CI."""
    trials = trials_frame(study)
    control, best = control_row(trials), best_row(trials)
    c = confirmation_stats(study.user_attrs)
    row = {"study": study.study_name, "variant": study.user_attrs.get("variant", "?"),
           "profile": study.user_attrs.get("profile", "?"), "trials": _state_counts(trials).split(": ", 1)[-1],
           "control": control["value"] if control is not None else math.nan,
           "best_trial": int(best["number"]) if best is not None else None,
           "best_params": _params_text(best) if best is not None else "",
           "best": best["value"] if best is not None else math.nan}
    row["delta"] = row["best"] - row["control"]
    if is_seed_study(study.user_attrs.get("signature", {}).get("space", {})):
        spread = seed_spread(trials)
        row.update({"best_trial": None, "best_params": "", "best": math.nan, "delta": math.nan, "seeds": 0,
                    "confirmed_delta": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p": math.nan,
                    "seed_sd": spread["sd"] if spread else math.nan,
                    "verdict": f"seed noise: sd {spread['sd']:.4f} over {spread['n']} seeds" if spread
                    else "seed noise: fewer than 2 seeds complete"})
        return row
    paired = c["paired"] if c else {}
    row.update({"seeds": paired.get("diff_n", 0), "confirmed_delta": paired.get("diff_mean", math.nan),
                "ci_lo": paired.get("diff_lo", math.nan), "ci_hi": paired.get("diff_hi", math.nan),
                "p": paired.get("p", math.nan), "verdict": _short_verdict(c)})
    if control is None or best is None:
        row["verdict"] = "no comparison: " + ("no complete control" if control is None
                                              else "no complete trial besides the control")
    return row


def summary_frame(storage: str) -> pd.DataFrame:
    studies = list_studies(storage)
    if not studies:
        raise ReportError(f"no study in {storage}: run `python cli.py sweep VARIANT` first")
    rows = [study_summary_row(optuna.load_study(study_name=s["name"], storage=storage)) for s in studies]
    return pd.DataFrame(rows).sort_values(["variant", "study"]).reset_index(drop=True)


def plot_summary(frame: pd.DataFrame, path: Path) -> str:
    """Δ val/map (best − control) per study; the confirmed mean with its 95% CI where there is one."""
    shown = frame[frame["delta"].notna()].iloc[::-1]
    if shown.empty:
        raise Skipped("no study has both a complete control and a complete trial besides it")
    confirmed = shown["confirmed_delta"].notna()
    value = shown["confirmed_delta"].where(confirmed, shown["delta"])
    err = np.array([(value - shown["ci_lo"]).where(confirmed, 0), (shown["ci_hi"] - value).where(confirmed, 0)])
    names = [f"{study}\n{v:+.4f} ({f'{n} seeds' if c else '1 seed'})"  # the number, even for a hair-thin bar
             for study, v, n, c in zip(shown["study"], value, shown["seeds"], confirmed)]
    with _figure(path, width=7.6, height=2.0 + 0.6 * len(shown),
                 title="Best setting minus control, per study") as (fig, (ax,)):
        colors = [COLORS["best"] if c else "#bbbbbb" for c in confirmed]
        ax.barh(names, value, color=colors, edgecolor="#333")
        if confirmed.any():  # error bars on confirmed rows only: a zero-width bar would read as a tight interval
            ax.errorbar(value[confirmed], np.flatnonzero(confirmed.to_numpy()), xerr=err[:, confirmed.to_numpy()],
                        fmt="none", ecolor="#333", capsize=4)
        ax.axvline(0, color=COLORS["control"], lw=1)
        ax.set(xlabel="Δ val mAP@[.5:.95] (best − control)", ylabel="")
        kinds = [(confirmed.any(), Patch(color=COLORS["best"], label="mean over seeds ± 95% CI")),
                 ((~confirmed).any(), Patch(color="#bbbbbb", label="single seed (not tested)"))]
        handles = [patch for shown_kind, patch in kinds if shown_kind]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=8)
    return ("Bars right of 0: the study's best setting scored higher than its control. An error bar crossing 0 "
            "means the difference is within seed noise; grey bars come from one seed and are not tested.")


def _confirmed_text(r: pd.Series) -> str:
    if not r["seeds"]:
        return ""
    return f"{r['confirmed_delta']:+.4f} [{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}], p={_fmt(r['p'], 3)}"


def _summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"study": frame["study"], "trials": frame["trials"], "control val/map": frame["control"].map(_fmt),
                         "best trial": frame["best_trial"].map(lambda v: "" if v is None or pd.isna(v) else str(int(v))),
                         "best params": frame["best_params"], "best val/map": frame["best"].map(_fmt),
                         "Δ (one seed)": frame["delta"].map(lambda v: "n/a" if pd.isna(v) else f"{v:+.4f}"),
                         "confirmation seeds": frame["seeds"].astype(str),
                         "Δ over seeds [95% CI]": frame.apply(_confirmed_text, axis=1),
                         "verdict": frame["verdict"]})


def write_summary(storage: str, folder: Path) -> Path:
    """out_root/summary/: one table and one chart of every study against its control."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = summary_frame(storage)
    frame.to_csv(folder / "summary.csv", index=False)
    figures = folder / "figures"
    figures.mkdir(exist_ok=True)
    blocks = [Block("h1", "Which exercise helped? Every study against its control"),
              Block("p", f"{_count(len(frame), 'study')} in `{storage}`. Each study is compared with its own "
                         "control: the chapter's configuration under the study's profile and fixed settings (the "
                         "input-size study, for one, uses a data set with small objects). Only complete trials count."),
              *(Block("p", f"Seed noise, from `{r['study']}`: sd {r['seed_sd']:.4f}. Two one-seed runs of one setting "
                           f"differ by up to about ±{2.8 * r['seed_sd']:.4f} (95%); a one-seed Δ smaller than that "
                           "is within noise.")
                for _, r in frame.iterrows() if not pd.isna(r.get("seed_sd", math.nan)))]
    try:
        caption = plot_summary(frame, figures / "delta_vs_control.png")
        blocks.append(Block("figure", caption, path=Path("figures/delta_vs_control.png")))
    except Skipped as exc:
        (figures / "delta_vs_control.png").unlink(missing_ok=True)
        blocks.append(Block("p", f"The chart is left out: {exc}."))
    reports = [f"[{name}](../{name}/report.html)" for name in frame["variant"].dropna().unique()
               if (folder.parent / name / "report.html").is_file()]
    if reports:
        blocks.append(Block("p", "Each study's own report: " + ", ".join(reports) + "."))
    blocks += [Block("table", table=_summary_table(frame)),
               Block("p", "For a study's figures, trials and commands: `python cli.py report VARIANT`. The data "
                          "behind this page: `summary.csv`.")]
    write_documents(folder, blocks, "tinyssd-ablate: summary of all studies")
    return folder
