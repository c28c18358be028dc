"""A run's MLflow metric columns are its headline metrics; each seed's value, the pack's intervals and the
per-class APs go to its table artifact, none lost."""

import math

import pytest

from pipeline.metric_names import headline, is_headline, objective_choices
from pipeline.training.run_table import table_columns
from pipeline.training.seeds import combine


def test_headline_keeps_every_objective_and_leaves_seeds_intervals_and_classes_to_the_table():
    assert all(is_headline(k) and is_headline(f"final/{k}") for k in objective_choices())
    assert all(is_headline(k) for k in ("train/loss", "final/train/cls_box_ratio_mean", "timing/train_s",
                                        "final/trial_seconds", "test/map"))
    assert not any(is_headline(k) for k in ("val/map/seed_3", "final/val/map_ci95", "val/voc_ap50/banana",
                                            "val/voc_ap50/banana/seed_2", "val/new_metric", "trial_seconds2"))


def test_a_packs_table_holds_every_value_it_does_not_log_as_a_metric():
    per_seed = {1: {"val/map": 0.2, "val/voc_ap50/banana": 0.5}, 4: {"val/map": 0.4, "val/voc_ap50/banana": 0.7}}
    epoch = combine(per_seed, 2)
    final = {**epoch, "trial_seconds": 3.0}
    table = table_columns([(0, epoch), (1, epoch), (None, final)])
    rows = list(zip(*table.values()))
    assert set(table) == {"epoch", "metric", "seed", "statistic", "value"}
    assert len(rows) == 2 * len(epoch) + len(final)  # every value, once per epoch and once as final
    assert (0, "val/map", 1, "value", 0.2) in rows and (1, "val/map", 4, "value", 0.4) in rows
    assert (None, "val/voc_ap50/banana", 4, "value", 0.7) in rows
    assert (None, "val/map", None, "value", pytest.approx(0.3)) in rows
    [(half,)] = [(r[4],) for r in rows if r[0] is None and r[1] == "val/map" and r[3] == "ci95_half_width"]
    assert half == pytest.approx(12.7062 * (0.2 / math.sqrt(2)) / math.sqrt(2), rel=1e-4)  # t(.975, 1) · sd / √n
    assert headline(final) == {"val/map": pytest.approx(0.3), "trial_seconds": 3.0}  # no seeds, intervals, classes
