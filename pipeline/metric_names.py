"""The metrics a run logs, by name, and what each measures: torch-free, so variants load without torch."""

from __future__ import annotations

STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")  # COCOeval's stats, in order
# What each metric a variant may name as its OBJECTIVE measures (val/<name> or test/<name>)
METRIC_MEANINGS = {"map": "COCO mAP@[.5:.95]", "map50": "COCO AP at IoU 0.5", "map75": "COCO AP at IoU 0.75",
                   "voc07_ap50": "VOC2007 11-point AP at IoU 0.5", "voc_ap50": "VOC2010+ all-point AP at IoU 0.5"}


# A run's MLflow metric columns: these, per split (val/, test/, train/), per epoch and as final/, plus timing/ and
# the run's totals. Every other value (each seed's of a pack, the pack's 95% half-widths, VOC AP50 per class)
# goes to the run's table artifact instead (pipeline.training.run_table): 182 columns for a pack of two seeds
# made MLflow's Columns menu a list to hunt through.
HEADLINE_NAMES = frozenset([*STAT_NAMES, *METRIC_MEANINGS, "best_f1", "f1_threshold", "loss", "loss_cls",
                            "loss_box", "class_err", "bbox_mae", "cls_box_ratio", "grad_ratio_cls_box",
                            "cls_box_ratio_mean", "grad_ratio_cls_box_mean"])
RUN_TOTALS = frozenset(["train_images_per_s", "trial_seconds"])


def is_headline(key: str) -> bool:
    """Whether metric ``key`` is one of a run's MLflow metric columns ('val/map', 'final/val/map', 'timing/…'),
    not a value of its table ('val/map/seed_3', 'val/map_ci95', 'val/voc_ap50/banana')."""
    parts = key.removeprefix("final/").split("/")
    if parts[0] == "timing":
        return True
    if len(parts) == 1:
        return parts[0] in RUN_TOTALS
    return len(parts) == 2 and parts[1] in HEADLINE_NAMES


def headline(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if is_headline(k)}


def on_split(metric: str, split: str) -> str:
    """The same metric scored on another split: 'val/map_small' on 'test' is 'test/map_small'."""
    return f"{split}/{metric.split('/', 1)[1]}"


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
