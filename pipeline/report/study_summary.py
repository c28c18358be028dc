"""The study page's verdicts: the control against the best trials, the noise to read a one-seed Δ against,
and the confirmation over seeds."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pandas as pd

from pipeline.config import PROTOCOL_EXTRAS, PROTOCOL_KNOBS
from pipeline.report.document import Block
from pipeline.report.gather import StudyData
from pipeline.report.select import list_studies
from pipeline.report.stats import verdict
from pipeline.report.text import fmt, missing, params_text, signed
from pipeline.report.trials import (SUMMARY_METRICS, best_row, control_label, control_row, is_seed_study, ranked,
                                    seed_spread, trials_frame)
from pipeline.study.optuna_study import stored_base_config

TOP_K = 5  # trials beside the control in the summary table


def _ci_text(ci: dict[str, float]) -> str:
    if ci["n"] < 2:
        return f"{ci['mean']:.4f} (1 seed)"
    return f"{ci['mean']:.4f} ± {(ci['hi'] - ci['lo']) / 2:.4f} (n={ci['n']})"


def _scored(confirmation: dict) -> str:
    """The metric a confirmation's seeds were scored with: val/map, or test/map on a test split."""
    return f"{confirmation['split']}/map"  # confirmation_stats fills in val for records older than the split


def _summary_record(row: pd.Series, role: str, base: float, confirmation: dict | None) -> dict[str, str]:
    half = row.get("val/map_ci95")
    value = fmt(row["value"]) + ("" if missing(half) else f" ± {half:.4f}")  # a pack: mean ± 95% half-width
    record = {"trial": str(int(row["number"])), "role": role, "params": params_text(row),
              "val/map": value, "Δ val/map": "" if role == "control" else signed(row["value"] - base)}
    record.update({m.removeprefix("val/"): fmt(row[m]) for m in SUMMARY_METRICS[1:]})
    if confirmation:
        key = "control" if role == "control" else ("best" if row["number"] == confirmation["best_trial"] else None)
        record[f"confirmed {_scored(confirmation)}, mean ± 95% CI"] = _ci_text(confirmation[key]) if key else ""
    return record


def summary_table(trials: pd.DataFrame, confirmation: dict | None) -> pd.DataFrame:
    """The control, then the top-k complete trials, with metrics and the delta to the control."""
    control = control_row(trials)
    base = control["value"] if control is not None else math.nan
    records = [_summary_record(control, "control", base, confirmation)] if control is not None else []
    for rank, (_, row) in enumerate(ranked(trials).head(TOP_K).iterrows(), 1):
        records.append(_summary_record(row, "best" if rank == 1 else f"top {rank}", base, confirmation))
    return pd.DataFrame(records)


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
    seeds = seeds_per_trial(trials)
    each = "one seed each" if seeds == 1 else f"each the mean of the same {seeds} seeds"
    return (f"The best trial, {best['number']} ({params_text(best)}), {verb} the {control_label(trials)}: "
            f"val/map {best['value']:.4f} against {control['value']:.4f} (Δ {delta:+.4f}), {each}.")


def seeds_per_trial(trials: pd.DataFrame) -> int:
    """How many seeds each trial's value is the mean of (1 unless the sweep trained packs)."""
    columns = [c for c in trials.columns if c.startswith("value/seed_")]
    return max(1, int(trials[columns].notna().sum(axis=1).max())) if columns else 1


def baseline_spread(storage: str, profile: str | None, base_config: dict) -> dict[str, Any] | None:
    """The seed spread of a baseline study in the storage with the same profile, data set and protocol (input side,
    epochs, batch, lr, schedule and the rest), if one has 3 or more values (a baseline on bananas at 64 px says
    nothing of shapes at 128, nor of 64 px with a cosine tail)."""
    for row in list_studies(storage):
        if row["variant"] == "baseline" and row["profile"] == profile and row["n_complete"] >= 3:
            study = optuna.load_study(study_name=row["name"], storage=storage)
            base = stored_base_config(study)
            if all(base.get(k) == base_config.get(k) for k in ("dataset", *PROTOCOL_KNOBS, *PROTOCOL_EXTRAS)):
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
    seeds = baseline_spread(d.storage, d.attrs.get("profile"), d.base_config)
    if seeds is not None:
        out.append(f"The `{seeds['study']}` study measured the seed noise of this data set and profile: "
                   f"sd {seeds['sd']:.4f} over {seeds['n']} seeds, so two one-seed runs of the same setting differ "
                   f"by up to about ±{2.8 * seeds['sd']:.4f} (95%).")
    return out


def edge_notes(d: StudyData) -> list[str]:
    """A best value at the edge of its numeric search range: the optimum may lie beyond the range."""
    best, notes = best_row(d.trials), []
    if best is None:
        return notes
    for name, dist in d.space.items():
        value = best.get(f"params_{name}")
        if dist["type"] == "categorical" or missing(value):
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
        seeds = seeds_per_trial(d.trials)
        packs = (f" Each val/map is the mean of the same {seeds} seeds ± the half-width of its 95% t-interval."
                 if seeds > 1 else "")
        blocks.append(Block("p", f"Top {TOP_K} complete trials by val/map; Δ is against the control; n/a: COCO "
                                 "gives no AP for a size with no object. Pruned and failed trials are left out." + packs))
    if confirmation is None and best_row(d.trials) is not None:
        seeds = seeds_per_trial(d.trials)
        source = ("one training seed each. " if seeds == 1 else f"the same {seeds} seeds each, and the best trial "
                  "was picked for scoring highest on them, so its lead is biased upward. ")
        blocks.append(Block("p", "**Not tested against noise.** These differences come from " + source
                                 + " ".join(noise_sentences(d)) + " Run the sweep command under Reproduce "
                                 "again with `--decide` to re-train the best trial and the control with new seeds "
                                 "until the difference is decided."))
    return blocks


def confirmation_blocks(c: dict[str, Any], trials: pd.DataFrame, record: dict | None = None) -> list[Block]:
    rows = [{"run": role, "trial": str(c["best_trial"]) if role == "best" else "control",
             "seeds": ", ".join(map(str, c["seeds"])),
             f"{_scored(c)} per seed": ", ".join(f"{v:.4f}" for v in c["values"][role]),
             "mean": fmt(c[role]["mean"]), "95% CI": f"[{fmt(c[role]['lo'])}, {fmt(c[role]['hi'])}]",
             "sd": fmt(c[role]["sd"])} for role in ("best", "control")]
    p = c["paired"]
    paired = pd.DataFrame([{"seeds": str(p["diff_n"]), "mean Δ (best − control)": signed(p["diff_mean"]),
                            "95% CI of Δ": f"[{signed(p['diff_lo'])}, {signed(p['diff_hi'])}]",
                            "paired t": fmt(p["t"], 3),
                            "p": fmt(p["p"], 4), "effect size d_z (mean Δ / sd Δ)": fmt(p["effect_size"], 2)}])
    blocks = [Block("h2", "Confirmation over seeds"),
              Block("p", "The best trial's configuration and the control, re-trained with new seeds (not the "
                         "search's own, so the best trial's lucky draw does not count twice). Intervals are "
                         "t-intervals (scipy.stats.t); the comparison is a paired t-test, seed by seed."),
              Block("table", table=pd.DataFrame(rows)), Block("table", table=paired)]
    if record and record.get("planned_looks", 1) > 1:  # --decide: the ordinary test is not the verdict's
        blocks.append(Block("p", "The paired t-test here is the ordinary one, as if these seeds had been planned in "
                                 "one go; the verdict at the top uses a confidence sequence instead, which holds "
                                 "at every number of seeds, so looking after every pack keeps its error rate at 5%."))
    else:
        blocks.append(Block("p", verdict(p)))
    best = best_row(trials)
    if best is not None and int(best["number"]) != c["best_trial"]:
        blocks.append(Block("p", f"The confirmation re-trained trial {c['best_trial']}, the best when it ran; the "
                                 f"best is now trial {best['number']}. Run the sweep with `--seeds` again to confirm it."))
    return blocks
