"""'all': every study's best against its control, on one page (out_root/summary/)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from pipeline.report.document import Block, write_documents
from pipeline.report.figures import Skipped, plot_summary
from pipeline.report.select import ReportError, list_studies
from pipeline.report.text import counted, fmt, params_text
from pipeline.report.trials import best_row, control_row, is_seed_study, seed_spread, state_counts, trials_frame
from pipeline.report.verdict_section import stored_verdict


def _verdict_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    """The stored verdict of the study's best setting (pipeline.decide), as the summary's columns."""
    record = stored_verdict(attrs)
    if record is None:
        return {"seeds": 0, "confirmed_delta": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p": math.nan,
                "verdict": "not decided (one seed each; use --decide)"}
    first = record["candidates"][0]
    lo, hi = first["delta_ci95"]
    return {"seeds": len(first["seeds"]), "confirmed_delta": first["delta"], "ci_lo": lo, "ci_hi": hi,
            "p": first["p"], "verdict": first["verdict"] + f" (on {record.get('split', 'val')})"}


def study_summary_row(study: optuna.Study) -> dict[str, Any]:
    """One study's control, best, single-seed delta and (where confirmed) the paired difference with its CI."""
    trials = trials_frame(study)
    control, best = control_row(trials), best_row(trials)
    row = {"study": study.study_name, "variant": study.user_attrs.get("variant", "?"),
           "profile": study.user_attrs.get("profile", "?"), "trials": state_counts(trials).split(": ", 1)[-1],
           "control": control["value"] if control is not None else math.nan,
           "best_trial": int(best["number"]) if best is not None else None,
           "best_params": params_text(best) if best is not None else "",
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
    row.update(_verdict_columns(study.user_attrs))
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


def _confirmed_text(r: pd.Series) -> str:
    if not r["seeds"]:
        return ""
    return f"{r['confirmed_delta']:+.4f} [{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}], p={fmt(r['p'], 3)}"


def _summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"study": frame["study"], "trials": frame["trials"], "control val/map": frame["control"].map(fmt),
                         "best trial": frame["best_trial"].map(lambda v: "" if v is None or pd.isna(v) else str(int(v))),
                         "best params": frame["best_params"], "best val/map": frame["best"].map(fmt),
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
              Block("p", f"{counted(len(frame), 'study')} in `{storage}`. Each study is compared with its own "
                         "control: the chapter's configuration under the study's profile and fixed settings (the "
                         "input-size variant, for one, uses a data set with small objects). Only complete trials count."),
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
        blocks.append(Block("p", "Each variant's own report: " + ", ".join(reports) + "."))
    blocks += [Block("table", table=_summary_table(frame)),
               Block("p", "For a study's figures, trials and commands: `python cli.py report VARIANT`. The data "
                          "behind this page: `summary.csv`.")]
    write_documents(folder, blocks, "tinyssd-ablate: summary of all studies")
    return folder
