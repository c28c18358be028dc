"""VOC AP at IoU 0.5 against hand-computed cases, and against COCO's AP50 from pycocotools where they must agree."""

import math

import numpy as np
import pytest

from pipeline.evaluation.coco import coco_evaluate
from pipeline.evaluation.voc import ap_11_point, ap_all_points, precision_recall, voc_metrics
from conftest import inline_set


def one_class(boxes_per_image, detections):
    """Ground truth of one class ('banana'), and results: (image, score, bbox xywh)."""
    images = [{"id": i + 1, "height": 100, "width": 100} for i in range(len(boxes_per_image))]
    annotations = [{"id": n + 1, "image_id": i + 1, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for n, (i, box) in enumerate((i, b) for i, boxes in enumerate(boxes_per_image)
                                                                for b in boxes)]
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "banana"}]}
    return gt, [{"image_id": i, "category_id": 1, "score": s, "bbox": b} for i, s, b in detections]


BOX_A, BOX_B = [10, 10, 40, 40], [60, 50, 30, 30]


def test_a_perfect_detector_scores_1():
    gt, results = one_class([[BOX_A], [BOX_B]], [(1, 0.9, BOX_A), (2, 0.8, BOX_B)])
    assert {k: voc_metrics(gt, results)[k] for k in ("voc07_ap50", "voc_ap50", "best_f1")} == {
        "voc07_ap50": 1.0, "voc_ap50": 1.0, "best_f1": 1.0}


def test_a_false_positive_ranked_first_halves_the_precision():
    gt, results = one_class([[BOX_A]], [(1, 0.9, BOX_B), (1, 0.5, BOX_A)])  # the wrong box scores higher
    precision, recall, n = precision_recall(gt, results, 1)
    assert n == 1 and precision.tolist() == [0.0, 0.5] and recall.tolist() == [0.0, 1.0]
    assert (voc_metrics(gt, results)["voc07_ap50"], voc_metrics(gt, results)["voc_ap50"]) == (0.5, 0.5)


def test_a_missed_object_caps_recall_at_half():
    gt, results = one_class([[BOX_A], [BOX_B]], [(1, 0.9, BOX_A)])
    metrics = voc_metrics(gt, results)
    assert metrics["voc_ap50"] == 0.5  # precision 1 up to recall 0.5
    assert metrics["voc07_ap50"] == pytest.approx(6 / 11)  # recall points 0, 0.1, ..., 0.5


def test_a_second_detection_of_one_object_is_a_false_positive_and_iou_below_half_misses():
    shifted = [BOX_A[0] + 25, BOX_A[1], BOX_A[2], BOX_A[3]]  # IoU with BOX_A: 15*40 / (2*1600 - 600) = 0.23
    gt, results = one_class([[BOX_A]], [(1, 0.9, BOX_A), (1, 0.8, BOX_A), (1, 0.7, shifted)])
    precision, recall, _ = precision_recall(gt, results, 1)
    assert precision.tolist() == pytest.approx([1.0, 0.5, 1 / 3]) and recall.tolist() == [1.0, 1.0, 1.0]


def test_11_point_and_all_point_by_hand():
    precision, recall = np.array([1.0, 0.5, 2 / 3]), np.array([1 / 3, 1 / 3, 2 / 3])
    assert ap_all_points(precision, recall) == pytest.approx(1 / 3 * 1.0 + 1 / 3 * 2 / 3)
    assert ap_11_point(precision, recall) == pytest.approx((4 * 1.0 + 3 * 2 / 3) / 11)


def test_all_point_ap_agrees_with_cocos_ap50():
    """COCO's AP50 is the same curve sampled at 101 recall points: close, not equal."""
    gt, results = inline_set(n_images=60, seed=3)
    coco = coco_evaluate(gt, results).metrics["map50"]
    voc = voc_metrics(gt, results)
    assert voc["voc_ap50"] == pytest.approx(coco, abs=0.02)
    assert set(voc) == {"voc07_ap50", "voc_ap50", "voc07_ap50/a", "voc07_ap50/b", "voc_ap50/a", "voc_ap50/b",
                        "f1_threshold", "best_f1"}
    for kind in ("voc07_ap50", "voc_ap50"):  # the mean is the classes' mean
        assert voc[kind] == pytest.approx((voc[f"{kind}/a"] + voc[f"{kind}/b"]) / 2)


def test_no_ground_truth_of_a_class_leaves_it_out_and_none_at_all_is_nan():
    gt, results = one_class([[BOX_A]], [(1, 0.9, BOX_A)])
    gt["categories"].append({"id": 2, "name": "ghost"})
    assert voc_metrics(gt, results)["voc_ap50"] == 1.0
    gt["annotations"] = []
    assert math.isnan(voc_metrics(gt, results)["voc_ap50"])


def test_the_display_threshold_is_where_f1_peaks():
    """Two objects; detections 0.9 (hit), 0.8 (miss), 0.6 (hit), 0.3 (miss): F1 is 2/3, 1/2, 4/5, 2/3 after each,
    so the threshold is 0.6 with F1 0.8."""
    gt, results = one_class([[BOX_A], [BOX_B]], [(1, 0.9, BOX_A), (1, 0.8, BOX_B), (2, 0.6, BOX_B), (2, 0.3, BOX_A)])
    metrics = voc_metrics(gt, results)
    assert metrics["f1_threshold"] == 0.6 and metrics["best_f1"] == pytest.approx(0.8)
    gt["annotations"] = []
    assert math.isnan(voc_metrics(gt, results)["f1_threshold"])
