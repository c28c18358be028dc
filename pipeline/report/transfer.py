"""Transfer of effects across profiles: does a grid point's effect at a cheap profile predict its effect at the
chapter's? (`python cli.py transfer QUICK_STUDY CHAPTER_STUDY` -> out_root/transfer-QUICK_STUDY-CHAPTER_STUDY/).

Each study's verdict record (``sweep VARIANT --seeds N --candidates M``, or ``--decide``) holds, per setting
tested, its paired differences against the control on new seeds. A setting is matched across the two studies by
its parameters. Reported: each setting's mean paired Δ at both profiles, how many agree in sign (with a
Clopper-Pearson interval over the settings), Kendall's τ between the two profiles' effects (with a percentile
interval from resampling each study's paired seeds, the same seeds for all its settings, as they share the
control), and a scatter of one against the other. Multi-fidelity searches (Hyperband, ASHA) assume such a
ranking carries across fidelities; this measures whether it does.
"""

from __future__ import annotations

import os
from pathlib import Path
from textwrap import fill

import numpy as np
import optuna
import pandas as pd
from adjustText import adjust_text
from matplotlib.transforms import Bbox
from scipy import stats

import experiments

from pipeline.config import protocol
from pipeline.machine import devices_text
from pipeline.report.design_section import ATTR as DESIGN_ATTR
from pipeline.report.document import Block, write_documents
from pipeline.report.figures import COLORS, Skipped, new_figure
from pipeline.report.select import ReportError, pick_study
from pipeline.report.text import fmt, setting_text
from pipeline.stats.verdict import ALPHA, look, stored_record
from pipeline.study.optuna_study import stored_base_config

RESAMPLES = 2000


def paired_settings(study: optuna.Study) -> list[dict]:
    """One row per setting the study tested against its control on new seeds: its parameters as text (a design's
    contrast of one cell against the control: its name), its paired seeds and differences. Empty when nothing has
    paired seeds yet."""
    design = study.user_attrs.get(DESIGN_ATTR)
    if design is not None:  # a contrast of one cell against the control is a setting; an interaction is not
        return [{"setting": row["contrast"], "trial": None, "seeds": list(row["seeds"]), "diffs": list(row["values"])}
                for row in design.get("contrasts", [])
                if row["values"] and experiments.one_cell_against(row.get("weights", {}), design.get("control_cell"))]
    record = stored_record(study.user_attrs) or {}
    params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    rows = [{"setting": setting_text(params[c["trial"]]), "trial": c["trial"], "seeds": list(c["seeds"]),
             "diffs": list(c["diffs"])}
            for c in record.get("candidates", []) if c["trial"] in params and c["diffs"]]
    named = {}
    for row in rows:  # a sampler may try one setting twice: the first (best-ranked) candidate speaks for it
        named.setdefault(row["setting"], row)
    return list(named.values())


def verdict_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The search's trial whose setting the study's verdict is about (its first candidate, the best); None when
    there is no verdict."""
    candidates = (stored_record(study.user_attrs) or {}).get("candidates", [])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    return trials.get(candidates[0]["trial"]) if candidates else None


def settings_tested(study: optuna.Study) -> pd.DataFrame:
    """paired_settings as a table; ReportError when the study has none."""
    rows = paired_settings(study)
    if not rows:
        raise ReportError(f"study {study.study_name!r} has no verdict with paired seeds: run its sweep with "
                          "--seeds N --candidates M (M: every grid point), or a design's with --decide, first")
    return pd.DataFrame(rows)


def paired_effects(quick: pd.DataFrame, chapter: pd.DataFrame) -> pd.DataFrame:
    """The settings both studies tested, with each one's mean paired Δ and its standard error at both profiles."""
    both = quick.merge(chapter, on="setting", suffixes=("_quick", "_chapter"))
    for side in ("quick", "chapter"):
        diffs = both[f"diffs_{side}"]
        both[f"delta_{side}"] = [float(np.mean(d)) for d in diffs]
        both[f"se_{side}"] = [float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else np.nan for d in diffs]
    return both


def _seed_resampled_means(diffs: list[list[float]], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """[resamples, settings]: mean Δ of each setting over one resample of the paired seeds, the same resampled
    seed positions for every setting (they share the control's seeds)."""
    n = min(len(d) for d in diffs)
    table = np.array([d[:n] for d in diffs])  # settings x seeds
    picks = rng.integers(0, n, (resamples, n))
    return table[:, picks].mean(axis=2).T


def kendall_tau_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of each row of x with the same row of y ([rows, items] each), as scipy.stats.kendalltau gives
    it (NaN where a row is constant), vectorised over the rows: a bootstrap of a handful of settings calls it
    thousands of times, and scipy's per-call overhead made the sheet's bootstrap (and its simulation in
    benchmarks/transfer_rule.py) 30 times slower."""
    i, j = np.triu_indices(x.shape[1], k=1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
    untied = np.sqrt((sx != 0).sum(axis=1) * (sy != 0).sum(axis=1).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(untied > 0, (sx * sy).sum(axis=1) / untied, np.nan)


def agreement(effects: pd.DataFrame, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Sign agreement (count, share, 95% Clopper-Pearson interval) and Kendall's τ (95% seed-bootstrap interval)."""
    n = len(effects)
    agree = int((np.sign(effects["delta_quick"]) == np.sign(effects["delta_chapter"])).sum())
    out = {"settings": n, "sign_agree": agree, "sign_share": agree / n if n else np.nan}
    out["sign_lo"], out["sign_hi"] = stats.binomtest(agree, n).proportion_ci(0.95) if n else (np.nan, np.nan)
    cheap_signs = decided_signs(effects["diffs_quick"]) if n else pd.Series([], dtype=str)
    decided = cheap_signs != ""
    out["decided_cheap"] = int(decided.sum())  # the settings whose sign the cheap profile decides, and how many of
    out["decided_kept"] = int(((cheap_signs == "better") == (effects["delta_chapter"] > 0))[decided].sum())  # those
    if n < 3:
        return {**out, "tau": np.nan, "tau_lo": np.nan, "tau_hi": np.nan}
    out["tau"] = float(stats.kendalltau(effects["delta_quick"], effects["delta_chapter"]).statistic)
    rng = np.random.default_rng(seed)
    quick = _seed_resampled_means(list(effects["diffs_quick"]), rng, resamples)
    chapter = _seed_resampled_means(list(effects["diffs_chapter"]), rng, resamples)
    taus = kendall_tau_rows(quick, chapter)
    out["tau_lo"], out["tau_hi"] = (float(v) for v in np.nanpercentile(taus, [2.5, 97.5]))
    return out


def signs_there(effects: pd.DataFrame, alpha: float = ALPHA) -> pd.Series:
    """Per setting, the sign its own paired seeds at the nearer profile decide (decided_signs). A ranking that
    carries over says nothing about one setting whose effect vanishes there, so the sheet carries a cheap verdict
    only where this sign is the verdict's."""
    return decided_signs(effects["diffs_chapter"], alpha) if len(effects) else pd.Series([], dtype=str)


def decided_signs(diffs: pd.Series, alpha: float = ALPHA) -> pd.Series:
    """Per setting, the sign its paired differences decide: "better" or "worse" where their (1 - alpha) confidence
    sequence excludes 0 (pipeline.stats.verdict: valid at any number of seeds, however often the sheet is made
    again), else ""."""
    def sign(setting_diffs) -> str:
        seen = look(list(setting_diffs), alpha)
        return "better" if seen.lo > 0 else "worse" if seen.hi < 0 else ""
    return diffs.map(sign)


def _sign_column(effects: pd.DataFrame) -> list[str]:
    """The transfer table's last column: the sign decided at the nearer profile, and whether the cheap one's mean
    has it."""
    def text(sign: str, delta_quick: float) -> str:
        if not sign:
            return "not yet"
        same = (delta_quick > 0) == (sign == "better")
        return f"{sign} ({'as' if same else 'unlike'} the cheap profile's mean)"
    return [text(s, d) for s, d in zip(signs_there(effects), effects["delta_quick"])]


def plot_transfer(effects: pd.DataFrame, labels: tuple[str, str], path: Path) -> str:
    """Each setting's Δ at the cheap profile (x) against its Δ at the other (y), ±1 standard error, with the
    diagonal; the shaded quadrants are where the two disagree in sign."""
    if effects.empty:
        raise Skipped("no setting was tested at both profiles")
    with new_figure(path, width=6.5, height=5.5, title="Each setting's effect at both profiles") as (fig, (ax,)):
        x, y = effects["delta_quick"], effects["delta_chapter"]
        ends = [*(np.abs(x) + effects["se_quick"].fillna(0)), *(np.abs(y) + effects["se_chapter"].fillna(0)), 1e-3]
        reach = 1.1 * float(np.nanmax(ends))  # each point's bar inside the frame
        ax.fill_between([-reach, 0], 0, reach, color="#f6e8e8", zorder=0)
        ax.fill_between([0, reach], -reach, 0, color="#f6e8e8", zorder=0)
        ax.plot([-reach, reach], [-reach, reach], color=COLORS["control"], lw=0.8, ls="--")
        ax.axhline(0, color=COLORS["control"], lw=0.6)
        ax.axvline(0, color=COLORS["control"], lw=0.6)
        ax.errorbar(x, y, xerr=effects["se_quick"], yerr=effects["se_chapter"], fmt="o", color=COLORS["best"],
                    capsize=3)
        ax.set(xlim=(-reach, reach), ylim=(-reach, reach), xlabel=fill(f"Δ mAP at {labels[0]}", 60),
               ylabel=fill(f"Δ mAP at {labels[1]}", 50))
        names, shared = point_labels(effects["setting"])
        label_points(ax, names, effects)
    return (f"Each setting's mean paired Δ against its control at {labels[0]} (x) and {labels[1]} (y), ±1 standard "
            "error over its seeds. On the dashed diagonal the effect carries over unchanged; in the shaded quadrants "
            "the two profiles disagree on its sign."
            + (f" Each label leaves out “{shared}”, which every setting's name ends with." if shared else ""))


def point_labels(settings: pd.Series) -> tuple[list[str], str]:
    """The settings' names without the " against CONTROL" that all of a design's contrasts end with, and those
    words ("" where the names do not share one)."""
    names = list(settings)
    common = os.path.commonprefix([name[::-1] for name in names])[::-1] if len(names) > 1 else ""
    shared = common[common.find(" against "):] if " against " in common else ""
    return [name.removesuffix(shared) for name in names], shared.strip()


def label_points(ax, labels: list[str], effects: pd.DataFrame) -> None:
    """Labels placed by adjustText's repulsion so that none overlaps another label, a point or its error bars, and
    none leaves the frame; a label pushed away from its point gets a thin line back to it."""
    x, y = effects["delta_quick"].to_numpy(), effects["delta_chapter"].to_numpy()
    texts = [ax.text(xi, yi, fill(label, 30), fontsize=8) for label, xi, yi in zip(labels, x, y)]
    ax.figure.draw_without_rendering()  # constrained layout fixes the axes' size before the labels move
    adjust_text(texts, x=x, y=y, objects=error_boxes(effects), ax=ax, force_static=(0.4, 0.8), expand=(1.3, 1.6),
                max_move=(30, 30),  # the default 10 px a step left two labels of near-coincident points stacked
                arrowprops={"arrowstyle": "-", "color": COLORS["control"], "lw": 0.5})


def error_boxes(effects: pd.DataFrame) -> list[Bbox]:
    """Each point's ±1 standard error cross, as a box in data coordinates (what adjustText's objects take)."""
    x, y = effects["delta_quick"].to_numpy(), effects["delta_chapter"].to_numpy()
    dx, dy = effects["se_quick"].fillna(0).to_numpy(), effects["se_chapter"].fillna(0).to_numpy()
    return [Bbox([[a - u, b - v], [a + u, b + v]]) for a, b, u, v in zip(x, y, dx, dy)]


def write_transfer(storage: str, quick_name: str, chapter_name: str, folder: Path) -> Path:
    """out_root/transfer-QUICK-CHAPTER/: report.md and report.html, transfer.csv and figures/transfer.png."""
    studies = tuple(pick_study(name, storage, name)[0] for name in (quick_name, chapter_name))
    folder.mkdir(parents=True, exist_ok=True)
    blocks, _, effects = transfer_blocks(studies, folder, Path("figures/transfer.png"))
    effects.to_csv(folder / "transfer.csv", index=False)
    write_documents(folder, [Block("h1", f"Transfer: `{quick_name}` to `{chapter_name}`"), *blocks],
                    f"tinyssd-ablate: transfer {quick_name} to {chapter_name}")
    return folder


def transfer_blocks(studies: tuple[optuna.Study, optuna.Study], folder: Path, figure: Path
                    ) -> tuple[list[Block], dict, pd.DataFrame]:
    """The agreement in words, the table of effects at both profiles and the scatter (written to folder/figure),
    with the agreement's numbers and the effects; raises ReportError when a study has no paired seeds."""
    effects = paired_effects(*(settings_tested(s) for s in studies))
    summary = agreement(effects)
    labels = tuple(_profile_label(s) for s in studies)
    if labels[0] == labels[1]:  # the same profile and protocol (on other machines, say): the studies tell them apart
        labels = tuple(f"{label}, {s.study_name}" for label, s in zip(labels, studies))
    table = pd.DataFrame({"setting": effects["setting"],
                          f"Δ at {labels[0]} (seeds)": [f"{d:+.4f} ({len(s)})" for d, s in
                                                         zip(effects["delta_quick"], effects["seeds_quick"])],
                          f"sign decided at {labels[0]}": decided_signs(effects["diffs_quick"]).replace("", "not yet"),
                          f"Δ at {labels[1]} (seeds)": [f"{d:+.4f} ({len(s)})" for d, s in
                                                         zip(effects["delta_chapter"], effects["seeds_chapter"])],
                          f"sign decided at {labels[1]} (95%, any number of seeds)": _sign_column(effects)})
    blocks = [Block("p", " ".join(filter(None, [agreement_text(summary, labels), machines_text(studies)]))),
              Block("table", table=table)]
    (folder / figure).parent.mkdir(parents=True, exist_ok=True)
    try:
        blocks.append(Block("figure", plot_transfer(effects, labels, folder / figure), path=figure))
    except Skipped as exc:
        blocks.append(Block("p", f"The scatter is left out: {exc}."))
    return blocks, summary, effects


def agreement_text(summary: dict, labels: tuple[str, str]) -> str:
    n = summary["settings"]
    text = (f"Of {n} settings tested at both {labels[0]} and {labels[1]}, {summary['sign_agree']} agree on the sign of "
            f"their effect (95% interval of the share: {fmt(summary['sign_lo'], 2)} to {fmt(summary['sign_hi'], 2)}).")
    decided, kept = summary["decided_cheap"], summary["decided_kept"]
    text += (f" {decided} of the {n} have their sign decided at {labels[0]} (95%, any number of seeds), and {kept} of "
             f"those {'keeps' if kept == 1 else 'keep'} it at {labels[1]}" if decided else
             f" None has its sign decided at {labels[0]} (95%, any number of seeds) on these seeds")
    text += ("." if decided == n else ": a setting whose sign is undecided there may agree or differ by chance, so "
             "read the agreement with τ's interval, which resamples the seeds.")
    if np.isnan(summary["tau"]):
        return text + " Kendall's τ needs at least 3 settings."
    return text + (f" Kendall's τ between the two profiles' effects is {summary['tau']:+.2f} (95% interval from "
                   f"resampling the paired seeds: {summary['tau_lo']:+.2f} to {summary['tau_hi']:+.2f}). Read both "
                   "as rough on a handful of settings and seeds: a bootstrap over so few seeds understates the spread.")


def _profile_label(study: optuna.Study) -> str:
    """'quick (64 px, 10 epochs, batch 16, lr 0.4 constant)': the profile and its protocol, for the table's columns
    and the figure's axes (the machines are said once, machines_text)."""
    return f"{study.user_attrs.get('profile', '?')} ({protocol(stored_base_config(study))})"


def machines_text(studies: tuple[optuna.Study, optuna.Study]) -> str:
    """Which machines trained each study, in one sentence ('' where neither recorded any)."""
    devices = [devices_text(s.user_attrs) for s in studies]
    if not any(devices):
        return ""
    if devices[0] == devices[1]:
        return f"Both studies were trained on {devices[0]}."
    return "; ".join(f"`{s.study_name}` was trained on {d or 'a machine it did not record'}"
                     for s, d in zip(studies, devices)) + "."
