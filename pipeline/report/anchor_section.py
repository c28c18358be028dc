"""The answer sheet's anchor section: how the anchors fit each data set the studies trained on, at the input
side and anchor scale their control used (pipeline.evaluation.anchor_fit; `python cli.py anchors` for one run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data import DataError, load_split
from pipeline.evaluation.anchor_fit import best_possible_recall, fit_objects, objects_of, suggest_scale, summary
from pipeline.report.anchor_figures import plot_anchor_fit
from pipeline.report.document import Block


def _fit_rows(name: str, result: dict) -> list[dict]:
    parts = [("all objects", result), *((f"COCO {s}", p) for s, p in result["by_size"].items()),
             *((f"best anchor on feature map {m}", p) for m, p in result["by_feature_map"].items())]
    return [{"data": name, "objects": label, "n": str(p["objects"]),
             "matched at IoU ≥ 0.5": f"{p['best_possible_recall']:.1%}", "median best IoU": f"{p['median_best_iou']:.3f}"}
            for label, p in parts if p["objects"]]


def _one_setting(dataset: str, image_size: int, anchor_scale: float, folder: Path) -> list[Block]:
    try:
        data = load_split(dataset, "train", image_size, progress=False)
    except DataError as exc:
        return [Block("p", f"`{dataset}`: left out, its data cannot be read here ({exc}).")]
    boxes, size = objects_of(data.targets, data.orig_sizes)
    fit = fit_objects(boxes, size, image_size, anchor_scale)
    suggested, curve = suggest_scale(boxes, size, image_size)
    name = f"{Path(dataset).name} at {image_size} px"
    stem = f"anchors_{Path(dataset).name}_{image_size}"
    caption = plot_anchor_fit(fit, curve, anchor_scale, suggested, f"anchors on {name}", folder / "figures" / f"{stem}.png")
    text = (f"On `{Path(dataset).name}` (training split, {len(boxes)} objects) at {image_size} px and anchor_scale "
            f"{anchor_scale:g}, {best_possible_recall(fit):.1%} of the objects have an anchor at IoU ≥ 0.5; "
            f"anchor_scale {suggested:g} would give {dict(curve)[suggested]:.1%} "
            f"(`python cli.py anchors --dataset {dataset} --set image_size={image_size}`).")
    return [Block("p", text), Block("table", table=pd.DataFrame(_fit_rows(name, summary(fit)))),
            Block("figure", caption, path=Path(f"figures/{stem}.png"))]


def anchor_blocks(frame: pd.DataFrame, folder: Path) -> list[Block]:
    """One part per (data set, input side, anchor scale) that a study's control used."""
    blocks = [Block("h2", "How the anchors' sizes and ratios fit the data at each scale"),
              Block("p", "TinySSD's anchors are 0.2 to 0.961 of the image side over five feature maps, with ratios 1, 2 "
                         "and 1/2. An object that no anchor overlaps at IoU 0.5 still gets its best anchor as a positive "
                         "in the chapter's matching, but that anchor's offsets must stretch far. The share of objects "
                         "some anchor matches is how many objects the matching gives a well-placed anchor to start from (predicted "
                         "offsets can still reach the others).")]
    settings = frame[["dataset", "image_size", "anchor_scale"]].dropna(subset=["dataset"]).drop_duplicates()
    for _, s in settings.iterrows():
        blocks += _one_setting(str(s["dataset"]), int(s["image_size"]), float(s["anchor_scale"]), folder)
    return blocks
