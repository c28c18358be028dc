"""One study's page: header, summary, confirmation, trials left out, figures and the commands to reproduce it."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import pandas as pd

from pipeline.config import PROTOCOL_EXTRAS, PROTOCOL_KNOBS, make_config
from pipeline.machine import devices_text
from pipeline.metric_names import metric_meaning, objective_label
from pipeline.report.document import Block, question_blocks, write_documents
from pipeline.report.figures import (Skipped, param_importances, plot_ap_by_size, plot_epochs, plot_heatmap,
                                     plot_history, plot_importances, plot_objective_vs_params, plot_pr_curves,
                                     size_frame)
from pipeline.report.gather import StudyData, gather
from pipeline.report.reproduce import reproduce_blocks
from pipeline.report.stats import confirmation_stats
from pipeline.report.study_summary import confirmation_blocks, summary_blocks
from pipeline.report.text import counted
from pipeline.report.trials import pr_picks, ranked, state_counts
from pipeline.report.verdict_section import verdict_blocks
from pipeline.stats.verdict import stored_record
from pipeline.tracking import MlflowReader

MIN_TRIALS_FOR_IMPORTANCES = 10  # below this, fANOVA attributes mostly which values the sampler happened to pair


def _when(trials: pd.DataFrame) -> str:
    start, end = trials["datetime_start"].dropna(), trials["datetime_complete"].dropna()
    if start.empty:
        return "never started"
    last = f" to {end.max():%Y-%m-%d %H:%M}" if not end.empty else ""
    return f"{start.min():%Y-%m-%d %H:%M}{last}"


def protocol_note(base_config: dict[str, Any]) -> list[str]:
    """Where the study's base configuration departs from the chapter's protocol (none: an empty list)."""
    chapter = dataclasses.asdict(make_config("chapter"))
    changed = [k for k in (*PROTOCOL_KNOBS, *PROTOCOL_EXTRAS) if k in base_config and base_config[k] != chapter[k]]
    if not changed:
        return []
    return ["The control is the chapter's model and loss, trained here with "
            + ", ".join(f"{k} {base_config[k]}" for k in changed) + " instead of the chapter's "
            + ", ".join(f"{chapter[k]}" for k in changed) + ": compare trials with this control, "
            "not with the chapter's own numbers."]


def _meaning(metric: str) -> str:
    """' (COCO mAP@[.5:.95])' for val/map: what an objective measures, or nothing for a metric not listed."""
    meaning = metric_meaning(metric)
    return f" ({meaning})" if meaning else ""


def header_blocks(d: StudyData) -> list[Block]:
    variant = d.attrs.get("variant", d.study.study_name)
    title, question = question_blocks(d.attrs.get("question", ""))
    cfg = d.base_config
    data_set = (f"`{cfg.get('dataset', '?')}` at {cfg.get('image_size', '?')} px; "
                f"{cfg.get('train_images') or 'all'} training and {cfg.get('val_images') or 'all'} validation images, "
                f"{counted(cfg.get('epochs', 0), 'epoch')} per trial")
    items = [d.note, f"Data set: {data_set}.", *protocol_note(cfg), f"Profile: `{d.attrs.get('profile', '?')}`; "
             f"device: `{devices_text(d.attrs) or cfg.get('device', '?')}`; objective: `{d.objective}`{_meaning(d.objective)}, maximised.",
             f"Trials: {state_counts(d.trials)}.", f"Run: {_when(d.trials)}."]
    if d.mlflow_note:
        items.append(f"MLflow: {d.mlflow_note}.")
    return [Block("h1", f"{variant}: {title}" if title else variant), *question, Block("ul", items=items)]


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
    n_searched, y_label = len(ranked(t).query("not control")), objective_label(d.objective)
    return [
        ("objective_vs_params", "The objective against each searched parameter",
         lambda p: plot_objective_vs_params(t, d.space, p, y_label)),
        ("heatmap", "The objective over two parameters", lambda p: plot_heatmap(t, d.space, p, y_label)),
        ("val_map_per_epoch", "Validation mAP per epoch", _from_mlflow(d, lambda p: plot_epochs(d.epochs, p))),
        ("pr_curve_iou50", "Precision–recall at IoU 0.5", _from_mlflow(d, lambda p: plot_pr_curves(d.pr, ap50, p))),
        ("ap_by_size", "AP by object size", lambda p: plot_ap_by_size(*size_frame(t), p)),
        ("optimisation_history", "Optimisation history", lambda p: plot_history(t, p, y_label)),
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
    blocks = header_blocks(d) + verdict_blocks(d) + summary_blocks(d, confirmation)
    if confirmation:
        blocks += confirmation_blocks(confirmation, d.trials, stored_record(d.attrs))
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
