"""A run's every value as one table artifact (``metrics_table.json``, MLflow's table format), where MLflow
shows only its headline metrics as columns (pipeline.metric_names.is_headline). Each epoch's rows are appended as
the epoch is reported (MLflow's log_table appends to a table already there), the final ones at the end, so a
pruned, failed or killed run keeps the rows of every epoch it reported.

One row per value: the epoch it was scored after (from 0, as the run's metric steps; empty for the run's final
values), the metric ('val/map', 'val/voc_ap50/banana'), the seed it belongs to (empty for a single run's value or
a pack's mean), what it is ('value', or 'ci95_half_width' of a pack's mean) and the value."""

from __future__ import annotations

import math
import re

from pipeline.training.seeds import CI_SUFFIX

TABLE_FILE = "metrics_table.json"
COLUMNS = ("epoch", "metric", "seed", "statistic", "value")
_SEED = re.compile(r"^(?P<metric>.+)/seed_(?P<seed>\d+)$")


def _row(epoch: int | None, key: str, value: float) -> dict:
    seed, statistic = None, "value"
    if match := _SEED.match(key):
        key, seed = match["metric"], int(match["seed"])
    elif key.endswith(CI_SUFFIX):
        key, statistic = key[:-len(CI_SUFFIX)], "ci95_half_width"
    return {"epoch": epoch, "metric": key, "seed": seed, "statistic": statistic,
            "value": None if value is None or math.isnan(value) else float(value)}


def table_columns(entries: list[tuple[int | None, dict[str, float]]]) -> dict[str, list]:
    """Rows of (epoch, its metrics) entries, epoch None for the final values, as columns (what
    MlflowClient.log_table takes)."""
    rows = [_row(epoch, key, value) for epoch, metrics in entries for key, value in metrics.items()]
    return {column: [row[column] for row in rows] for column in COLUMNS}
