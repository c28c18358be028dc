"""The metrics a run logs, by name, and what each measures: torch-free, so variants load without torch."""

from __future__ import annotations

STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")  # COCOeval's stats, in order
# What each metric a variant may name as its OBJECTIVE measures (val/<name> or test/<name>)
METRIC_MEANINGS = {"map": "COCO mAP@[.5:.95]", "map50": "COCO AP at IoU 0.5", "map75": "COCO AP at IoU 0.75",
                   "voc07_ap50": "VOC2007 11-point AP at IoU 0.5", "voc_ap50": "VOC2010+ all-point AP at IoU 0.5"}


def objective_choices() -> list[str]:
    """What a variant may maximise: a validation metric every trial logs (COCO's, or the SSD paper's VOC AP50)."""
    return [f"val/{name}" for name in dict.fromkeys([*STAT_NAMES, *METRIC_MEANINGS])]


def metric_meaning(metric: str) -> str | None:
    """What a logged metric measures ('COCO mAP@[.5:.95]' for val/map), or None for one not described."""
    return METRIC_MEANINGS.get(metric.partition("/")[2])


def objective_label(metric: str) -> str:
    """An axis label for a metric: 'val COCO mAP@[.5:.95]' for val/map; the key itself for one not described."""
    meaning = metric_meaning(metric)
    return f"{metric.partition('/')[0]} {meaning}" if meaning else metric
