"""What each effect is made of: a designed variant's contrasts (a knob's effect at matched balance, the
interaction) and each cell's mean and seed spread, for the answer sheet and for the study's own page."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from pipeline.config import knobs_off_profile
from pipeline.machine import devices_text
from pipeline.report.document import Block, question_blocks, write_documents
from pipeline.report.text import counted, decided_at, fmt
from pipeline.stats.decide import DEFAULT_MAX_SEEDS
from pipeline.stats.noise import sd_ratio_interval
from pipeline.stats.verdict import interval_text
from pipeline.study.optuna_study import storage_url

ATTR = "contrasts"  # pipeline.study.design keeps its record under this study attribute


def is_design(study: optuna.Study) -> bool:
    return "design" in study.user_attrs


def contrast_table(rows: list[dict], metric: str = "mAP") -> pd.DataFrame:
    return pd.DataFrame([{"contrast": row["contrast"], "verdict": row["verdict"],
                          f"Δ {metric} [95% interval, valid at any number of seeds]":
                              f"{row['delta']:+.4f} {interval_text(*row['delta_ci95'])}" if row["seeds"] else "n/a",
                          "paired seeds": len(row["seeds"])} for row in rows])


def secondary_blocks(record: dict) -> list[Block]:
    """Each secondary outcome's contrasts, on the seeds of the primary's, as a table of its own."""
    blocks = []
    for metric, rows in record.get("secondary", {}).items():
        blocks += [Block("p", f"Secondary outcome `{metric}`: the same contrasts on the same seeds, each with its own "
                              "interval; it never decided when to stop. A seed with no value kept for it (trained by a "
                              "version that kept no other metrics, or a metric undefined on the split) is left out, "
                              "so its seeds can be fewer."),
                   Block("table", table=contrast_table(rows, metric))]
    return blocks


def cell_table(record: dict) -> pd.DataFrame:
    rows = []
    control = record.get("control_cell")
    for cell, row in record["cells"].items():
        scores = list(row["scores"].values())
        spread = "n/a" if math.isnan(row["sd"]) else f"{row['sd']:.4f} [{row['sd_lo']:.4f}, {row['sd_hi']:.4f}]"
        rows.append({"cell": cell + (" (the control)" if cell == control else ""),
                     "mean": fmt(float(np.mean(scores))) if scores else "n/a", "seed sd [95% interval]": spread,
                     "sd ÷ the control's [95%, paired seeds]": _sd_ratio(row, record["cells"].get(control))
                     if cell != control else "",
                     "seeds": len(scores), "diverged": ", ".join(map(str, row["diverged"])) or "none"})
    return pd.DataFrame(rows)


def _sd_ratio(cell: dict, control: dict | None) -> str:
    """The cell's seed sd over the control's on the seeds both have, with Pitman-Morgan's paired interval."""
    if control is None:
        return "n/a"
    out = {str(s) for s in [*cell["diverged"], *control["diverged"]]}  # a diverged seed's 0 is no spread
    seeds = [s for s in cell["scores"] if s in control["scores"] and s not in out]
    ratio, lo, hi = sd_ratio_interval([cell["scores"][s] for s in seeds], [control["scores"][s] for s in seeds])
    return "n/a" if math.isnan(lo) else f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"


def plain_answer(record: dict) -> str:
    """One sentence per contrast, in words: which way it went, or that it is not decided yet (with the paired
    seeds likely to decide it, where the seeds so far give an estimate)."""
    words = {"better": "helps", "worse": "hurts", "equivalent": "makes no difference (within the margin)",
             "undecided": "is not decided yet", "pending": "is still being decided"}

    def part(row: dict) -> str:
        needed = row.get("seeds_needed") if row["verdict"] in ("pending", "undecided") else None
        likely = f"; about {needed} paired seeds would likely decide it" if needed else ""
        effect = f"{row['delta']:+.4f}{likely}" if row["seeds"] else "no paired seeds yet"
        return f"{row['contrast']} {words.get(row['verdict'], row['verdict'])} ({effect})"
    return "; ".join(part(row) for row in record["contrasts"]) + "."


def resume_command(study: optuna.Study) -> str:
    """The command that goes on with a designed study: its variant, profile, name, knobs and store as it was run."""
    from pipeline.report.reproduce import same_study_flags

    variant, profile = study.user_attrs.get("variant", study.study_name), study.user_attrs.get("profile", "quick")
    base = study.user_attrs.get("signature", {}).get("base_config", {})
    max_seeds = (study.user_attrs.get(ATTR) or {}).get("max_seeds", DEFAULT_MAX_SEEDS)
    more = ["--max-seeds", str(max_seeds)] if max_seeds != DEFAULT_MAX_SEEDS else []
    return " ".join(["python", "cli.py", "sweep", variant,
                     *same_study_flags(variant, profile, base, study.study_name, storage_url(study)), "--decide",
                     *more])


def nearest_first(record: dict, command: str) -> str:
    """Where the contrasts still taking seeds would likely need different numbers of them, the command that
    spends seeds on the nearest to deciding first (``--contrast``; the others wait at the same level)."""
    open_ = [row for row in record["contrasts"] if row["verdict"] == "pending" and row.get("seeds_needed")]
    least = min((row["seeds_needed"] for row in open_), default=None)
    nearest = [row["contrast"] for row in open_ if row["seeds_needed"] == least]
    if len(nearest) == len(open_):
        return ""
    flags = " ".join(f'--contrast "{name}"' for name in nearest)
    return (f" Nearest to deciding, at about {least} paired seeds: {', '.join(nearest)}; `{command} {flags}` spends "
            "the seeds there first, the others waiting at the same level.")


def design_blocks(study: optuna.Study) -> list[Block]:
    """The contrasts and cells of one designed study, with where and on what they were decided."""
    record, variant = study.user_attrs.get(ATTR), study.user_attrs.get("variant", study.study_name)
    base = study.user_attrs.get("signature", {}).get("base_config", {})
    profile = study.user_attrs.get("profile")
    place = {**base, "profile": profile, "device": devices_text(study.user_attrs),
             "off_profile": knobs_off_profile(base, profile)}
    name = f"`{variant}` ({decided_at(place)})"
    if not record:
        kept = sum(len(entry.get("scores", {})) for entry in study.user_attrs.get("verdict_packs", {}).values())
        return [Block("p", f"{name}: nothing decided yet, {counted(kept, 'seed')} of its cells kept so far "
                           f"(`{resume_command(study)}` trains the rest).")]
    where = f"on the {record['split']} split, shared control `{record['shared_control']['key']}`"
    going_on = "" if record.get("final") else (f" Still taking seeds: `{resume_command(study)}` goes on."
                                               + nearest_first(record, resume_command(study)))
    return [Block("p", f"{name}, {where}: {plain_answer(record)}{going_on}"),
            Block("table", table=contrast_table(record["contrasts"])), *secondary_blocks(record),
            Block("table", table=cell_table(record)),
            Block("p", "A cell's seed spread is an outcome of its own: a setting that is as good on average but "
                       "steadier is the safer choice. The sd's interval is the chi-square interval over its seeds; "
                       "the ratio to the control's is Pitman-Morgan's interval for paired seeds (below 1: steadier "
                       "than the control; an interval that holds 1 has not shown a difference). Both are fixed-seed "
                       "intervals at the seeds the design stopped at, not valid at any number of seeds as the "
                       "contrasts' are.")]


def effects_section(studies: list[optuna.Study]) -> list[Block]:
    """The answer sheet's section: every designed study's contrasts."""
    if not studies:
        return []
    blocks = [Block("h2", "What each effect is made of"),
              Block("p", "A designed variant asks its question as contrasts over cells trained on the same paired "
                         "seeds, Holm-corrected over each study's contrasts. Three of the single knobs that helped "
                         "(box weight 4, focal loss with α 0.75, random negatives) all shrink the class loss against "
                         "the box loss, so `focal-matched` and `negative-matched` ask each knob's question at matched "
                         "balance: the knob on or off, crossed with box weight 1 or 4. Its effect at box weight 4 is "
                         "what it adds beyond re-weighting; the interaction says whether the two add (0 when they "
                         "do). `quick-winners` puts each exercise's quick-profile answer against the control at "
                         "another profile; its contrasts also appear among the answers above.")]
    for study in studies:
        blocks += design_blocks(study)
    return blocks


def write_design_report(study: optuna.Study, folder: Path) -> Path:
    """out_root/<variant>/ for a designed study: its question, contrasts and cells."""
    title, question = question_blocks(study.user_attrs.get("question", study.study_name))
    folder.mkdir(parents=True, exist_ok=True)
    write_documents(folder, [Block("h1", title), *question, Block("h2", "Contrasts and cells"), *design_blocks(study)],
                    f"tinyssd-ablate: {study.study_name}")
    return folder
