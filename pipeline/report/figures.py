"""Figures: DataFrames in, one PNG out (or Skipped with the reason the report prints).

One function per chart; a chart that would be empty or meaningless raises Skipped instead of drawing.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from optuna.trial import TrialState

from pipeline.metric_names import objective_label
from pipeline.report.text import choice_label, counted
from pipeline.report.trials import best_row, complete, control_label, control_row, ranked

OBJECTIVE_LABEL = objective_label("val/map")  # the default objective's; a study passes its own
SIZES = {"small": "val/map_small", "medium": "val/map_medium", "large": "val/map_large"}
DPI = 110
UNITS = {"image_size": " (px)", "scale": " (×)"}
COLORS = {"trial": sns.color_palette("deep")[0], "best": sns.color_palette("deep")[2], "control": "#4d4d4d",
          "pruned": sns.color_palette("deep")[1], "failed": sns.color_palette("deep")[3]}


class Skipped(Exception):
    """A figure left out; the message is the reason the report prints."""


@contextmanager
def new_figure(path: Path, n_axes: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.2,
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
    order = [choice_label(c) for c in dist["choices"]]
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(points))
    return np.array([order.index(choice_label(v)) for v in points["x"]]) + jitter, order


def _plot_param_axis(ax, points: pd.DataFrame, name: str, dist: dict[str, Any], best: int | None,
                     y_label: str = OBJECTIVE_LABEL) -> None:
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
    ax.set_ylabel(y_label)
    ax.set_title(f"{y_label} vs {name}")


def plot_objective_vs_params(trials: pd.DataFrame, space: dict[str, dict], path: Path,
                             y_label: str = OBJECTIVE_LABEL) -> str:
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
    with new_figure(path, len(names), ncols, width=5.0 if ncols > 1 else 7.0,
                 title=f"Objective vs each searched parameter ({counted(len(done), 'complete trial')})") as (fig, axes):
        for ax, name in zip(axes, names):
            _plot_param_axis(ax, _param_points(trials, name), name, space[name], int(best["number"]), y_label)
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
        return values.map(choice_label), [choice_label(c) for c in dist["choices"]]
    numbers = values.astype(float)
    if dist["type"] == "int" and numbers.nunique() <= 6:
        order = [choice_label(v) for v in sorted(numbers.unique())]
        return numbers.map(choice_label), order
    low, high = float(dist["low"]), float(dist["high"])
    edges = np.geomspace(low, high, 5) if dist.get("log") else np.linspace(low, high, 5)
    order = [f"{a:.3g}–{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
    return pd.cut(numbers, edges, labels=order, include_lowest=True).astype(str), order


def plot_heatmap(trials: pd.DataFrame, space: dict[str, dict], path: Path, y_label: str = OBJECTIVE_LABEL) -> str:
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
    control = control_row(trials)
    versus = f" The {control_label(trials)} scored {control['value']:.4f}." if control is not None else ""
    if (count > 0).to_numpy().mean() < 0.5:  # a mostly grey heatmap hides its few trials: draw them as points
        return _grid_points(cells, x_order, y_order, (x_name, x_dist), (y_name, y_dist), y_label, path) + versus
    annot = np.where(count > 0, mean.map(lambda v: f"{v:.4f}") + "\nn=" + count.astype(str), "")
    with new_figure(path, width=7.2, height=4.8, style="white",
                 title=f"Mean {y_label} over {x_name} × {y_name}") as (fig, (ax,)):
        sns.heatmap(mean.astype(float), annot=annot, fmt="", cmap="viridis", mask=mean.isna(), linewidths=0.5,
                    linecolor="white", cbar_kws={"label": y_label}, ax=ax)
        ax.set_xlabel(_axis_label(x_name, x_dist))
        ax.set_ylabel(_axis_label(y_name, y_dist))
        ax.tick_params(axis="y", labelrotation=0)
        ax.set_facecolor("#eeeeee")
    return ("Mean over the complete trials in each cell (n = trials); a grey cell had no trial. Numeric "
            "parameters are cut into equal bins of their search range." + versus)


def _grid_points(cells: pd.DataFrame, x_order: list, y_order: list, x: tuple, y: tuple, y_label: str,
                 path: Path) -> str:
    """The trials of a sparse two-parameter grid as points at their cells, coloured and labelled by the objective."""
    xs = cells["x"].map({v: i for i, v in enumerate(x_order)}).astype(float)
    ys = cells["y"].map({v: i for i, v in enumerate(y_order)}).astype(float)
    with new_figure(path, width=7.2, height=4.8, title=f"{y_label} over {x[0]} × {y[0]}") as (fig, (ax,)):
        points = ax.scatter(xs, ys, c=cells["value"], cmap="viridis", s=160, edgecolors="black", linewidths=0.5)
        for xi, yi, value in zip(xs, ys, cells["value"]):
            ax.annotate(f"{value:.4f}", (xi, yi), textcoords="offset points", xytext=(0, 11), ha="center", fontsize=8)
        fig.colorbar(points, ax=ax, label=y_label)
        ax.set_xticks(range(len(x_order)), x_order)
        ax.set_yticks(range(len(y_order)), y_order)
        ax.set(xlim=(-0.5, len(x_order) - 0.5), ylim=(-0.5, len(y_order) - 0.5),
               xlabel=_axis_label(*x), ylabel=_axis_label(*y))
    return (f"Each complete trial at its cell ({len(cells)} trials over {len(x_order) * len(y_order)} cells: too few "
            "for a heatmap, which would be mostly empty). Numeric parameters are cut into equal bins of their search "
            "range.")


def plot_epochs(epochs: pd.DataFrame, path: Path) -> str:
    """val/map after each epoch for the control and the top trials."""
    if epochs.empty:
        raise Skipped("no per-epoch history was found in MLflow for the control or a complete trial")
    labels = list(dict.fromkeys(epochs["label"]))
    palette = {l: COLORS["control"] for l in labels if l.startswith("control")}
    palette.update({l: COLORS["best"] for l in labels if l.endswith("(best)")})
    others = [l for l in labels if not l.startswith("control") and not l.endswith("(best)")]
    palette.update({l: c for l, c in zip(others, [COLORS["trial"], *sns.color_palette("deep")[4:]])})
    who = "the control and the top trials" if len(labels) > 1 else labels[0].split(" (")[0]
    with new_figure(path, title=f"Validation mAP per epoch: {who}") as (fig, (ax,)):
        sns.lineplot(data=epochs, x="epoch", y="value", hue="label", hue_order=labels, palette=palette,
                     style="label", style_order=labels, markers=True, dashes=False, markersize=8, ax=ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(OBJECTIVE_LABEL)
        _integer_axis(ax, epochs["epoch"])
        ax.legend(title=None, loc="best")
    caption = "On the validation split: the MLflow metric history of each trial's run (val/map after every epoch)."
    return caption + still_rising_note(epochs)


def still_rising_note(epochs: pd.DataFrame) -> str:
    """' Still rising at the last epoch: ...' when a curve's last step is its largest gain of the last three
    epochs' span and positive: longer training would likely move it, so the comparison is of unfinished runs."""
    rising = []
    for label, curve in epochs.sort_values("epoch").groupby("label", sort=False):
        values = curve["value"].to_numpy()
        if len(values) >= 3 and values[-1] > values[-2] and values[-1] >= values[-3:].max():
            rising.append(label)
    if not rising:
        return ""
    return (f" Still rising at the last epoch: {', '.join(rising)}. Longer training would likely move these scores, "
            "so the comparison is between runs that have not finished learning (the profile's epochs decide where "
            "they are cut).")


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
    caption = ("On the validation split (the search's trials): COCOeval's precision array at IoU 0.5, all object sizes, "
               "100 detections per image.")
    if len(classes) > 4:
        pr = pr.groupby(["label", "recall"], as_index=False)["precision"].mean().assign(**{"class": "class mean"})
        classes, caption = ["class mean"], caption + f" Mean over {len(classes)} classes."
    labels = list(dict.fromkeys(pr["label"]))
    names = {l: f"{l}, AP50 {ap50[l]:.3f}" if not math.isnan(ap50.get(l, math.nan)) else l for l in labels}
    palette = {names[l]: COLORS["control"] if l.startswith("control") else COLORS["best"] for l in labels}
    with new_figure(path, len(classes), min(2, len(classes)), width=5.6 if len(classes) > 1 else 6.4,
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
    with new_figure(path, title=f"AP by object size: {who}") as (fig, (ax,)):
        sns.barplot(data=sizes, x="size", y="ap", hue="label", palette=palette, ax=ax,
                    order=[s for s in SIZES if s not in empty])
        for container in ax.containers:
            ax.bar_label(container, fmt="%.4f", padding=2, fontsize=8)
        ax.set(xlabel="object size (COCO areas)", ylabel="AP@[.5:.95]")
        ax.margins(y=0.15)
        ax.legend(title=None, loc="best")
    caption = "On the validation split (the search's trials). COCO areas: small < 32², medium 32²–96², large > 96² pixels."
    if empty:
        caption += f" Left out: {', '.join(empty)} (no object of that size in the validation set, so AP is NaN)."
    return caption


def _history_points(trials: pd.DataFrame) -> pd.DataFrame:
    done = complete(trials).sort_values("number")
    return done.assign(best_so_far=done["value"].cummax())


def plot_history(trials: pd.DataFrame, path: Path, y_label: str = OBJECTIVE_LABEL) -> str:
    """Objective by trial number with the best so far; pruned at their last value, failed along the bottom."""
    done = _history_points(trials)
    pruned = trials[(trials["state"] == "PRUNED") & trials["last_reported"].notna()]
    failed = trials[trials["state"] == "FAIL"]
    if trials.empty:
        raise Skipped("the study has no trial yet")
    if done.empty and pruned.empty:
        raise Skipped("no trial reported a value")
    with new_figure(path, width=7.2, title="Optimisation history") as (fig, (ax,)):
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
        ax.set(xlabel="trial number", ylabel=y_label)
        _integer_axis(ax, trials["number"])
        fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)  # inside, it hid a failed trial
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


def plot_importances(importances: pd.Series, n_trials: int, searched: list[str], path: Path) -> str:
    frame = importances.rename_axis("parameter").reset_index()
    conditional = [name for name in searched if name not in importances.index]
    with new_figure(path, height=1.2 + 0.5 * len(frame), title="Parameter importances") as (fig, (ax,)):
        sns.barplot(data=frame, x="importance", y="parameter", color=COLORS["trial"], ax=ax)
        ax.bar_label(ax.containers[0], fmt="%.2f", padding=3, fontsize=8)
        ax.set(xlabel="importance (fANOVA share of the objective's variance)", ylabel="parameter", xlim=(0, 1.1))
    caption = f"optuna.importance with the fANOVA evaluator over {counted(n_trials, 'complete trial')} besides the control."
    if n_trials < 20:
        caption += " With this few trials, read these as rough."
    if conditional:  # optuna attributes only the parameters that every trial has
        caption += f" Left out, as not set in every trial (conditional): {', '.join(conditional)}."
    return caption
