"""How values read in the report: numbers, signed deltas, counts, parameter values and a trial's settings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import off_profile_words
from pipeline.stats.verdict import interval_text


def counted(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def choice_label(value: Any) -> str:
    if value is None or value == "None":
        return "None"
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def decided_at(r) -> str:
    """Where a study's answer was decided, from a row or dict with profile, dataset and image_size: its profile
    (and the knobs off it, off_profile), data set and input side ("?" for what it did not record), and the machine
    where the row names one (device)."""
    size = r.get("image_size")
    data = Path(str(r["dataset"])).name if isinstance(r.get("dataset"), str) else "?"
    device = r.get("device")
    return (f"{r.get('profile') or '?'} profile{off_profile_words(r.get('off_profile'))}"
            + f", {data}" + (f", {int(size)} px" if size == size and size else "")
            + (f", on {device}" if isinstance(device, str) and device else ""))


def delta_text(r) -> str:
    """A row's Δ mAP against its control: the verdict's mean paired Δ and interval over new seeds, or the search's
    one-seed difference, marked as not tested."""
    if pd.isna(r["seeds"]) or not r["seeds"]:
        delta = r.get("delta")
        return "n/a" if delta is None or pd.isna(delta) else f"{delta:+.4f} (one seed, not tested)"
    delta = r.get("confirmed_delta")
    return "n/a" if delta is None or pd.isna(delta) else f"{delta:+.4f} {interval_text(r['ci_lo'], r['ci_hi'])}"


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def params_text(row: pd.Series) -> str:
    if row["control"]:
        return "control (the chapter's settings)"
    items = [(c.removeprefix("params_"), v) for c, v in row.items() if c.startswith("params_") and not missing(v)]
    return ", ".join(f"{k}={choice_label(v) if not isinstance(v, float) else f'{v:.4g}'}" for k, v in items)



def setting_text(params: dict) -> str:
    """A setting's name from its parameters (a trial's params, a design cell's overrides), as params_text writes a
    trial's: how transfer matches a setting across studies and how the sheet names a design's cell."""
    return params_text(pd.Series({"control": False, **{f"params_{k}": v for k, v in params.items()}}))

def signed(value: float) -> str:
    return "n/a" if missing(value) else f"{value:+.4f}"


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
