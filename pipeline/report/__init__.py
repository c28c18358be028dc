"""Studies and their MLflow runs → pandas → seaborn figures → report.md and a self-contained report.html.

Three layers, kept apart:

- gathering (``gather``, over ``trials`` and ``select``): the Optuna study and its MLflow runs become one
  ``StudyData`` of DataFrames;
- figures (``figures``): one function per chart, DataFrames in, a PNG out, or ``Skipped(reason)`` when the
  chart would be empty or meaningless (the report then says why it is left out);
- writing (``document``): the report is a list of blocks, rendered once as Markdown and once as HTML with the
  figures embedded as data URIs, so the HTML opens from disk with everything showing.

The pages sit on top: ``study_page`` (with ``study_summary``, ``verdict_section`` and ``reproduce``) for one
study, ``answers`` for 'all' (the answer sheet, from ``overview``'s one row per study). Imports run one way, from the pages down to ``document``, ``stats``, ``text`` and ``trials``.

Pruned and failed trials never count as best: only COMPLETE trials are compared. A single-seed
difference is reported as untested; with confirmation runs (``sweep --seeds N``) the report gives
mean ± 95% CI over seeds and a paired t-test of best against control, seed by seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from pipeline.report.answers import write_answers
from pipeline.report.design_section import is_design, write_design_report
from pipeline.report.select import ReportError, pick_study
from pipeline.report.study_page import write_study_report
from pipeline.sqlite_files import DEFAULT_STORAGE
from pipeline.study.store_checks import unreadable_attrs_error

__all__ = ["ReportError", "write_report"]


def write_report(target: str, *, storage: str = DEFAULT_STORAGE, out_root: Path = Path("reports"),
                 study_name: str | None = None, evidence: Sequence[str] = ()) -> Path:
    """Write out_root/<target>/ (report.md, report.html, trials.csv, figures/) or, for 'all', the answer sheet in
    out_root/answers/ (report.md, report.html, answers.csv, figures/).

    ``evidence``: for 'all', more Optuna stores whose transfer pairs the sheet shows as evidence only.
    Returns the folder written. ReportError when there is no such study (the message lists those that exist).
    """
    try:
        if target == "all":
            return write_answers(storage, Path(out_root) / "answers", evidence)
        study, note = pick_study(target, storage, study_name)
        if is_design(study):
            return write_design_report(study, Path(out_root) / (study_name or target))
        return write_study_report(study, note, storage, Path(out_root) / (study_name or target))
    except json.JSONDecodeError as exc:  # a truncated or hand-edited study attribute: say which
        raise ReportError(str(unreadable_attrs_error(storage, exc))) from None
