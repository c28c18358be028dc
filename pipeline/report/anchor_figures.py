"""The figure of `python cli.py anchors`: how well the anchors fit a data set's objects, and the anchor_scale
that fits them best."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullFormatter

from pipeline.evaluation.anchor_fit import MATCH_IOU, ObjectFit
from pipeline.report.figures import COLORS, new_figure


def plot_anchor_fit(fit: ObjectFit, curve: list[tuple[float, float]], scale: float, suggested: float,
                    title: str, path: Path) -> str:
    """Left: each object's best IoU with any anchor, by COCO size; right: the share of objects some anchor
    matches at IoU >= 0.5 against anchor_scale, the current and the suggested scale marked."""
    objects = pd.DataFrame({"best IoU with any anchor": fit.best_iou, "COCO size": fit.size})
    order = [s for s in ("small", "medium", "large") if (objects["COCO size"] == s).any()]
    with new_figure(path, n_axes=2, ncols=2, width=5.0, height=3.8, title=title) as (fig, (left, right)):
        sns.boxplot(objects, x="COCO size", y="best IoU with any anchor", order=order, ax=left, color="#cfd8e3",
                    fliersize=2)
        left.axhline(MATCH_IOU, color=COLORS["best"], lw=1.2, ls="--")
        left.set(ylim=(0, 1), title="objects' best anchor")
        scales, recalls = zip(*curve)
        right.plot(scales, recalls, marker="o", ms=3, color=COLORS["trial"])
        right.set_xscale("log")
        right.set_xticks([0.25, 0.5, 1, 2], labels=["0.25", "0.5", "1", "2"])
        right.xaxis.set_minor_formatter(NullFormatter())
        right.axvline(scale, color=COLORS["control"], lw=1, label=f"now: {scale:g}")
        right.axvline(suggested, color=COLORS["best"], lw=1.5, ls="--", label=f"best: {suggested:g}")
        right.set(xlabel="anchor_scale (log)", ylabel=f"objects matched at IoU ≥ {MATCH_IOU}", ylim=(0, 1.02),
                  title="best possible recall")
        right.legend(loc="lower right", fontsize=8)
    return (f"Left: each object's best IoU with any anchor; under the dashed line ({MATCH_IOU}) no anchor matches "
            "it and the chapter's matching gives it an anchor whose offsets must stretch. Right: the share of "
            "objects some anchor matches, for other anchor_scale values.")
