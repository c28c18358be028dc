"""The answer sheet (`python cli.py report all` -> out_root/answers/): every exercise of the chapter on one page.

For each variant: its question, the verdict on its best setting against the chapter's, the interval of the
difference, and a link to its study's page; one forest plot of all of them; and the three exercises that need
no study of their own: evaluating as the SSD paper does (VOC AP), how the anchors fit the data at each scale,
and how to choose the threshold detections are displayed at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

import experiments
from pipeline.machine import split_devices
from pipeline.report.anchor_section import anchor_blocks
from pipeline.report.answer_figures import plot_forest
from pipeline.report.document import Block, write_documents
from pipeline.report.figures import Skipped
from pipeline.report.overview import summary_frame
from pipeline.report.design_answers import by_design, design_answer_rows, design_rows
from pipeline.report.design_section import effects_section, is_design
from pipeline.report.select import ReportError, list_studies
from pipeline.report.text import counted, decided_at, delta_text, fmt
from pipeline.report.transfer_section import transfer_section
from pipeline.report.whose_answer import whose_answer_blocks
from pipeline.stats.verdict import holm

DELTA = 0.01  # the equivalence margin the verdicts use by default (sweep --delta)


def _hours(r: pd.Series) -> str:
    parts = [r.get(k) for k in ("search_hours", "verdict_hours")]
    known = [p for p in parts if p is not None and not pd.isna(p)]
    return f"{sum(known):.2f}" if known else "n/a"


def _link(variant: str, folder: Path, page_of: str | None = None) -> str:
    """The exercise's name, linked to its page (or to page_of's: the design that answered it) where it exists."""
    page = page_of or variant
    return f"[{variant}](../{page}/report.html)" if (folder.parent / page / "report.html").is_file() else f"`{variant}`"


def family_outcomes(frame: pd.DataFrame) -> pd.Series:
    """Each study's verdict as one of the sheet's family: Holm over every setting any verdict on the sheet tested
    (each study's candidates, each against its control), at 5% for the whole sheet. A study without a verdict
    stays as it is."""
    members = [(i, k) for i, diffs in frame["candidate_diffs"].items() for k in range(len(diffs))]
    diffs = [frame.at[i, "candidate_diffs"][k] for i, k in members]
    verdicts = holm(diffs, 1, max([len(d) for d in diffs], default=1), DELTA) if diffs else []
    family = frame["outcome"].copy()
    for (i, k), v in zip(members, verdicts):
        if k == 0 and family.at[i] != "pending":  # the sheet shows each study's best setting; one still taking
            family.at[i] = v.outcome              # seeds stays pending (it is still in the family's count)
    return family


VERDICT_WORDS = ("A verdict is **better** or **worse** when the interval of the paired difference over new seeds "
                 "excludes 0, **equivalent** when it lies within ±0.01 mAP, **undecided** when the seeds ran out "
                 "first, **pending** when neither has happened yet (the run stopped, or spent its seeds on other "
                 "contrasts, first: `--decide` again goes on); **not decided** means only the search's one-seed "
                 "trials exist (run the variant's sweep with `--decide`).")


def glance_table(frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
    seeds = [f"{n} (seeds {span})" if n else "0" for n, span in zip(frame["seeds"], frame["verdict_seeds"])]
    pages = frame["design_variant"] if "design_variant" in frame else pd.Series(None, index=frame.index)
    return pd.DataFrame({"exercise": [_link(v, folder, p if isinstance(p, str) else None)
                                      for v, p in zip(frame["variant"], pages)], "question": frame["question"],
                         "verdict": frame["outcome"], "verdict, as one family of the sheet": family_outcomes(frame),
                         "Δ mAP [interval, 95% for the decision]": frame.apply(delta_text, axis=1),
                         "best setting": frame["best_params"], "new seeds": seeds,
                         "decided at": frame.apply(decided_at, axis=1), "scored on": frame["split"],
                         "hours (search + verdict)": frame.apply(_hours, axis=1)})


def _glance_blocks(frame: pd.DataFrame, folder: Path) -> list[Block]:
    blocks = [Block("h2", "The answers at a glance")]
    try:
        caption = plot_forest(frame[frame["outcome"] != "seed noise"], DELTA, folder / "figures" / "forest.png")
        blocks.append(Block("figure", caption, path=Path("figures/forest.png")))
    except Skipped as exc:
        blocks.append(Block("p", f"The forest plot is left out: {exc}."))
    answered = frame[frame["outcome"] != "seed noise"]
    blocks += [Block("table", table=glance_table(answered, folder)),
               Block("p", VERDICT_WORDS)]
    for _, r in frame[frame["outcome"] == "seed noise"].iterrows():
        blocks.append(Block("p", f"Seed noise of the chapter itself (`{r['study']}`): {r['verdict']}."))
    return blocks


def _voc_blocks(frame: pd.DataFrame) -> list[Block]:
    rows = []
    for _, r in frame[frame["outcome"] != "seed noise"].iterrows():
        for role, value in (("control", r["control"]), ("best", r["best"])):
            rows.append({"exercise": r["variant"], "measured at": decided_at(r), "trial": role,
                         "COCO mAP@[.5:.95]": fmt(value),
                         "COCO AP50": fmt(r[f"{role}:val/map50"]), "VOC07 AP50 (11-point)": fmt(r[f"{role}:val/voc07_ap50"]),
                         "VOC AP50 (all points)": fmt(r[f"{role}:val/voc_ap50"])})
    return _section("Evaluating as the SSD paper does: VOC AP at IoU 0.5",
                    "The SSD paper reports PASCAL VOC mAP at IoU 0.5. Beside COCO's mAP@[.5:.95] (the studies' "
                    "objective), every run logs VOC2007's 11-point AP50 and VOC2010's all-point AP50 "
                    "(`pipeline/evaluation/voc.py`); a variant can name `val/voc_ap50` as its OBJECTIVE. VOC's AP50 counts an "
                    "object found once its box overlaps by half; COCO's mAP averages over stricter overlaps up to "
                    "0.95, so it also asks how well the box is placed. The search's own values (one seed, or the mean "
                    "of a pack), on the validation split.", rows)


def _section(title: str, text: str, rows: list[dict]) -> list[Block]:
    return [Block("h2", title), Block("p", text),
            Block("table", table=pd.DataFrame(rows)) if rows else Block("p", "No study to show yet.")]


def _threshold_blocks(frame: pd.DataFrame) -> list[Block]:
    rows = [{"exercise": r["variant"], "measured at": decided_at(r),
             "control: threshold (F1)": f"{fmt(r['control:val/f1_threshold'], 3)} ({fmt(r['control:val/best_f1'], 3)})",
             "best setting: threshold (F1)": f"{fmt(r['best:val/f1_threshold'], 3)} ({fmt(r['best:val/best_f1'], 3)})"}
            for _, r in frame[frame["outcome"] != "seed noise"].iterrows()]
    return _section("Choosing the threshold detections are displayed at",
                    "The chapter draws detections scoring above 0.9, chosen by hand. Here every run records the score "
                    "threshold at which F1 at IoU 0.5 peaks on its validation split (a property of the trained model, "
                    "so it is chosen again whenever the training changes), and `predict` draws at it "
                    "(`--threshold auto`). The table shows how it moves between each exercise's control and its best "
                    "setting: the answer to 'how should the threshold be chosen when the training changes'.", rows)


def unfinished_searches(frame: pd.DataFrame) -> list[str]:
    """'combined (3 of 10 trials)' for each study whose search has fewer finished trials than its variant's default."""
    out = []
    for _, r in frame[~design_rows(frame)].iterrows():
        try:
            target = experiments.load(r["variant"]).trials.get(r["profile"])
        except KeyError:  # a study of a variant file that is gone
            continue
        if target and r.get("trials_done", target) < target:
            out.append(f"`{r['variant']}` ({int(r['trials_done'])} of {target} trials)")
    return out


def _missing_blocks(frame: pd.DataFrame) -> list[Block]:
    have = set(frame["variant"])
    missing = [name for name in experiments.exercises() if name not in have and not experiments.load(name).is_design]
    unfinished = unfinished_searches(frame)
    blocks = []
    if missing:
        blocks.append(Block("p", "These variants have no study in the storage yet, so their exercises are not "
                                 "answered on this page: " + ", ".join(f"`{m}`" for m in missing) + ". Run "
                                 "`python cli.py sweep VARIANT --decide`, then `python cli.py report all` again."))
    if unfinished:
        blocks.append(Block("p", "These searches stopped before their default number of trials, so their best setting "
                                 "may still change: " + ", ".join(unfinished) + ". Run the same sweep again: it "
                                 "resumes."))
    return [Block("h2", "Not measured yet"), *blocks] if blocks else []


def family_blocks(frame: pd.DataFrame) -> list[Block]:
    """What the sheet's 95% covers, and the control seeds its verdicts share."""
    tested = sum(len(d) for d in frame["candidate_diffs"])
    if not tested:
        return []
    text = (f"Each verdict's interval is 95% for its own question. The column *verdict, as one family of the "
            f"sheet* corrects the sheet's {counted(tested, 'tested setting')} as one family (Holm's step-down on "
            "their anytime-valid p-values): the chance that any better or worse there is wrong is at most 5%, "
            "whatever the dependence between the verdicts, including those that pair against the same control "
            "seeds. An equivalent there is each verdict's own (Holm covers the better and worse claims only).")
    blocks = [Block("p", text)]
    shared = frame[frame["shared_control"] != ""].groupby("shared_control")
    for key, rows in shared:
        blocks.append(Block("p", f"Shared control `{key}` (kept on the store's `shared-controls` study, trained once "
                                 f"and reused by every verdict whose control is that same run): "
                                 + "; ".join(f"`{r['variant']}`{by} on seeds {r['verdict_seeds']} (control mean "
                                             f"{fmt(r['control_mean'])})" for by, (_, r) in
                                             zip(by_design(rows), rows.iterrows())) + "."))
    return blocks


def exercise_studies(frame: pd.DataFrame) -> pd.DataFrame:
    """The studies of the chapter's exercises: a variant marked EXERCISE = False (precision) is left out; a study
    whose variant file is gone is kept."""
    own = set(experiments.names()) - set(experiments.exercises())
    return frame[~frame["variant"].isin(own)].reset_index(drop=True)


def searches_frame(storage: str, designs: list) -> pd.DataFrame:
    """The searches' rows (pipeline.report.overview); none, where the store holds designs only."""
    try:
        return summary_frame(storage)
    except ReportError:
        if not designs:
            raise
        return pd.DataFrame()


def with_design_answers(frame: pd.DataFrame, designs: list) -> pd.DataFrame:
    """The searches' rows, and a row for each designed contrast that answers an exercise (design_answers)."""
    rows = [row for study in designs for row in design_answer_rows(study)]
    if not rows:
        return frame
    return pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).sort_values(["variant", "study"],
                                                                                 ignore_index=True)


def design_studies(storage: str) -> list:
    """The store's designed studies (contrasts over cells, no search), by name."""
    import optuna

    studies = [optuna.load_study(study_name=s["name"], storage=storage) for s in list_studies(storage)]
    return [study for study in studies if is_design(study)]


def write_answers(storage: str, folder: Path, evidence: Sequence[str] = ()) -> Path:
    """out_root/answers/: report.md and report.html, answers.csv and figures/. ``evidence``: more Optuna stores
    whose transfer pairs the sheet shows as evidence only (pipeline.report.transfer_section)."""
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    designs = design_studies(storage)
    frame = exercise_studies(with_design_answers(searches_frame(storage, designs), designs))
    if frame.empty:
        raise ReportError(f"no study of the chapter's exercises in {storage}: run `python cli.py sweep VARIANT` for "
                          f"one of {', '.join(experiments.exercises())} first")
    written = frame.assign(off_profile=frame["off_profile"].map(lambda off: ", ".join(off) if isinstance(off, list)
                                                                 else "")) if "off_profile" in frame else frame
    written.to_csv(folder / "answers.csv", index=False)  # the knobs as text: "lr_schedule=cosine", not a list repr
    profiles = sorted({str(v) for v in frame.get("profile", pd.Series(dtype=str)).dropna()} - {"?"})  # "?": not
    devices = sorted({d for text in frame.get("device", pd.Series(dtype=str)) for d in split_devices(text)})  # recorded
    blocks = [Block("h1", "Answers to the exercises of “Single Shot Multibox Detection” (Dive into Deep Learning)"),
              Block("p", f"Made by `python cli.py report all` from the {counted(frame['study'].nunique(), 'study')} "
                         f"in `{storage}`"
                         + (f", trained on {', '.join(devices)}" if devices else "")
                         + (f" at the {' and '.join(profiles)} profile{'s' * (len(profiles) > 1)}" if profiles else "")
                         + ". Each exercise is a variant "
                         "(a file in `experiments/`), run as an Optuna study against its control, the chapter's own "
                         "configuration under the same profile.")]
    transfer, carried = transfer_section(storage, folder, evidence)
    searched = frame[~design_rows(frame)]  # the VOC, anchor and threshold sections read the searches' runs
    blocks += _glance_blocks(frame, folder) + whose_answer_blocks(frame, carried) + family_blocks(frame)
    blocks += transfer + _voc_blocks(searched)
    blocks += anchor_blocks(searched, folder)
    blocks += effects_section(designs) + _threshold_blocks(searched) + _missing_blocks(frame)
    blocks.append(Block("p", "The data behind this page: `answers.csv`, one row per study, and one per designed "
                             "contrast that answers an exercise."))
    write_documents(folder, blocks, "tinyssd-ablate: answers to the chapter's exercises")
    return folder

