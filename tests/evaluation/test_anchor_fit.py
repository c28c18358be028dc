"""How anchors fit objects: hand-built cases on the model's own anchors, and the anchors command end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from pipeline.evaluation.anchor_fit import anchor_levels, best_possible_recall, fit_objects, objects_of, suggest_scale
from pipeline.model.tinyssd import TinySSD

runner = CliRunner()


def test_an_object_that_is_an_anchor_fits_it_exactly_on_its_feature_map():
    anchors = TinySSD(1).anchors_for_size(128)
    levels = anchor_levels(128)
    assert len(levels) == len(anchors)
    picks = [0, int(np.flatnonzero(levels == 2)[5]), int(np.flatnonzero(levels == 4)[0])]
    fit = fit_objects(anchors[picks].clamp(0, 1), np.array(["medium"] * 3), 128, 1.0)
    for i, pick in enumerate(picks):
        if (anchors[pick] >= 0).all() and (anchors[pick] <= 1).all():  # not cut by the clamp
            assert fit.best_iou[i] == pytest.approx(1.0) and fit.feature_map[i] == levels[pick]


def test_objects_smaller_than_every_anchor_fit_nothing_until_the_anchors_shrink():
    """A 0.08-wide square: the chapter's smallest anchor is 0.2 wide (IoU at most 0.16); at about half the
    scale the smallest anchors reach IoU 0.5."""
    centres = torch.tensor([[0.5, 0.5], [0.3, 0.7], [0.8, 0.2]])
    boxes = torch.cat([centres - 0.04, centres + 0.04], dim=1)
    size = np.array(["small"] * 3)
    assert best_possible_recall(fit_objects(boxes, size, 128, 1.0)) == 0.0
    suggested, curve = suggest_scale(boxes, size, 128)
    assert suggested < 0.6 and dict(curve)[suggested] == max(r for _, r in curve) > 0


def test_objects_of_a_split_and_their_coco_sizes():
    targets = torch.tensor([[[0, 0.0, 0.0, 0.1, 0.1], [-1, 0, 0, 0, 0]], [[0, 0.0, 0.0, 0.5, 0.5], [0, 0, 0, 1, 1]]])
    boxes, size = objects_of(targets, torch.tensor([[256, 256], [256, 256]]))
    assert boxes.shape == (3, 4) and size.tolist() == ["small", "large", "large"]  # 25.6² < 32²; 128², 256²


def test_the_anchors_command_writes_a_figure_and_json(workdir, tiny_bananas):
    result = runner.invoke(app, ["anchors", "--dataset", str(tiny_bananas), "--device", "cpu", "--out", "fit.png",
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["objects"] == 12 and 0 <= out["best_possible_recall"] <= out["suggested_best_possible_recall"] <= 1
    assert Image.open(workdir / "fit.png").size[0] > 600
