"""The answer sheet's forest plot: every exercise's difference against its control, with its interval, on one
axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pipeline.config import off_profile_words
from pipeline.machine import DEVICES_JOIN, split_devices
from pipeline.report.design_answers import which_contrast
from pipeline.report.figures import COLORS, Skipped, new_figure

OUTCOME_COLORS = {"better": COLORS["best"], "worse": COLORS["failed"], "equivalent": COLORS["trial"],
                  "undecided": "#999999", "pending": "#bbbbbb", "not decided": "#bbbbbb"}


def _points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per study with a comparison: Δ (the verdict's, else the search's one-seed Δ) and its interval, in
    the order the plot lists them top to bottom: by exercise, the chapter's protocol first within each. A row's
    label leaves out the exercise, which heads its group."""
    shown = frame[frame["delta"].notna() | frame["confirmed_delta"].notna()].copy()
    decided = shown["confirmed_delta"].notna()
    shown["value"] = shown["confirmed_delta"].where(decided, shown["delta"])
    shown["lo"] = shown["ci_lo"].where(decided, np.nan)
    shown["hi"] = shown["ci_hi"].where(decided, np.nan)
    profiles = shown["profile"] if "profile" in shown else pd.Series("?", index=shown.index)
    offs = shown.get("off_profile", pd.Series([[]] * len(shown), index=shown.index))
    where = [f"{p}{off_profile_words(off)}, {_px(size)}{_machine(device)}" for p, off, size, device in
             zip(profiles, offs, shown.get("image_size", pd.Series(np.nan, index=shown.index)),
                 shown.get("device", pd.Series(None, index=shown.index)))]
    designs = shown["design_variant"] if "design_variant" in shown else pd.Series(None, index=shown.index)
    names = [f"{d}{which}" if isinstance(d, str) else "its search"
             for d, which in zip(designs, which_contrast(shown))]
    shown["label"] = [f"{v} at {w}  ({o}, " + (f"{n} new seeds on {split}" if n else "the search on val") + ")"
                      for v, w, o, n, split in zip(names, where, shown["outcome"], shown["seeds"], shown["split"])]
    shown["chapter"] = list(shown.get("chapter_protocol", profiles == "chapter").fillna(False).astype(bool))
    shown["marker"] = np.where(shown["chapter"], "s", "o")
    return shown.sort_values(["variant", "chapter", "label"], ascending=[True, False, True])


def _rows_and_headings(points: pd.DataFrame) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The y of each point, and of each exercise's heading above its group, counted from the top."""
    rows, headings, line = [], [], 0
    for variant, group in points.groupby("variant", sort=False):
        headings.append((line, variant))
        rows += range(line + 1, line + 1 + len(group))
        line += 1 + len(group)
    return np.array(rows), headings


def _px(size) -> str:
    return "? px" if size != size or size is None else f"{int(size)} px"


def _machine(device) -> str:
    """' on CPU', ' on NVIDIA H200' or ' on NVIDIA H200 and CPU': the row's machines, short."""
    short = dict.fromkeys("CPU" if d.startswith("cpu") else d for d in split_devices(device))
    return f" on {DEVICES_JOIN.join(short)}" if short else ""


def plot_forest(frame: pd.DataFrame, delta: float, path: Path) -> str:
    """Each exercise's Δ mAP (best setting − control, on the split it was scored on): a point with its 95%
    interval where a verdict has seeds, a hollow point for the search's one-seed Δ; the band is the equivalence
    margin."""
    points = _points(frame)
    if points.empty:
        raise Skipped("no study has both a complete control and a complete setting besides it")
    rows, headings = _rows_and_headings(points)
    lines = len(rows) + len(headings)
    y = lines - 1 - rows  # the first line on top
    width = max(9.5, 5.5 + 0.075 * max(len(label) for label in points["label"]))  # the rows' labels fit beside
    with new_figure(path, width=width, height=1.6 + 0.45 * lines,
                    title="Each exercise: best setting minus the chapter's, mAP") as (fig, (ax,)):
        for line, _ in headings[1:]:
            ax.axhline(lines - 1 - line + 0.5, color="#888888", lw=0.8)  # a rule above each exercise but the first
        ax.axvspan(-delta, delta, color="#e8eef5", zorder=0)
        ax.axvline(0, color=COLORS["control"], lw=1)
        for yi, (_, p) in zip(y, points.iterrows()):
            color = OUTCOME_COLORS.get(p["outcome"], "#bbbbbb")
            if not np.isnan(p["lo"]):
                ax.errorbar(p["value"], yi, xerr=[[p["value"] - p["lo"]], [p["hi"] - p["value"]]], fmt=p["marker"],
                            color=color, ecolor=color, capsize=4, ms=6)
            else:
                ax.plot(p["value"], yi, p["marker"], mfc="white", mec=color, ms=6)
        ax.set_yticks([*y, *(lines - 1 - line for line, _ in headings)],
                      [*points["label"], *(variant for _, variant in headings)])
        for label, grid in zip(ax.get_yticklabels()[len(y):], ax.get_ygridlines()[len(y):]):
            label.set_fontweight("bold")  # a heading: no point on its line, so no grid line either
            grid.set_visible(False)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.margins(x=0.08)  # a point at the end of the range stays off the frame
        ax.set_ylim(-0.6, lines - 0.4)  # and so does the first or last row
        ax.set(xlabel="Δ mAP@[.5:.95], best − control (on the split each row names)")
        handles = [Line2D([], [], marker="o", ls="", color=c, label=o) for o, c in OUTCOME_COLORS.items()
                   if o in set(points["outcome"])]
        handles += [Line2D([], [], marker=m, ls="", color="#555555", label=f"{name} protocol")  # filled: a hollow
                    for m, name in (("o", "a cheaper"), ("s", "the chapter's"))  # point means untested
                    if m in set(points["marker"])]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=8)
    return (f"Right of 0: the exercise's best setting scored higher than the chapter's. A filled point with a bar is "
            f"a verdict on new seeds (the bar: its 95% interval, valid at any number of seeds); a hollow point is the "
            f"search's own one-seed difference, not tested. A square is decided at the chapter's protocol (256 px, 20 "
            f"epochs, batch 32, lr 0.2), a circle at a cheaper one; each exercise's rows sit under its name, the "
            f"chapter's protocol first, each row naming what measured it (the exercise's search, or a design) and its "
            f"profile, input side and machine. The shaded band is ±{delta:g}, the margin within which "
            "a difference counts as equivalent.")
