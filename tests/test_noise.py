"""The noise budget's pieces: a bootstrap resample scores what pycocotools scores on the resampled set itself."""

import math

import numpy as np
import pytest

from pipeline.evaluate import coco_evaluate
from pipeline.noise import Budget, bootstrap_maps, end_of_training_sd, evaluated, map_of_sample


def inline_set(n_images=6, seed=0):
    """COCO ground truth (two classes, 1-3 objects per image) and noisy detections of it, with misses and
    false positives."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "height": 100, "width": 100})
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 60, 2), *rng.uniform(8, 40, 2)))
            cat = int(rng.integers(1, 3))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
            if rng.uniform() < 0.8:  # found, roughly
                results.append({"image_id": i, "category_id": cat, "score": float(rng.uniform(0.2, 1.0)),
                                "bbox": [x + float(rng.normal(0, 3)), y + float(rng.normal(0, 3)), w, h]})
        results.append({"image_id": i, "category_id": 1, "score": float(rng.uniform(0, 0.6)),
                        "bbox": [float(v) for v in (*rng.uniform(0, 60, 2), 20, 20)]})  # a false positive
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def resampled_set(gt, results, sample):
    """The data set the resample stands for: image sample[j] of the original becomes image j + 1."""
    images, annotations, dets = [], [], []
    for j, i in enumerate(sample):
        old = gt["images"][i]["id"]
        images.append({**gt["images"][i], "id": j + 1})
        annotations += [{**a, "image_id": j + 1, "id": len(annotations) + n + 1}
                        for n, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old)]
        dets += [{**r, "image_id": j + 1} for r in results if r["image_id"] == old]
    return {**gt, "images": images, "annotations": annotations}, dets


def test_the_whole_sample_is_cocoevals_map():
    gt, results = inline_set()
    assert map_of_sample(evaluated(gt, results), list(range(6))) == pytest.approx(coco_evaluate(gt, results).metrics["map"])


@pytest.mark.parametrize("sample", [[0, 0, 1, 2, 3, 4], [5, 5, 5, 2, 2, 0], [3, 1, 4, 1, 5, 0]])
def test_a_resample_with_repeats_is_the_map_of_that_resampled_set(sample):
    gt, results = inline_set()
    direct = coco_evaluate(*resampled_set(gt, results, sample)).metrics["map"]
    assert map_of_sample(evaluated(gt, results), sample) == pytest.approx(direct, abs=1e-12)


def test_bootstrap_spread_shrinks_with_more_images():
    small, large = inline_set(10, seed=1), inline_set(80, seed=1)
    assert np.std(bootstrap_maps(*small, resamples=60)) > np.std(bootstrap_maps(*large, resamples=60))


def test_end_of_training_and_the_budget_arithmetic():
    last_three = np.var([0.2, 0.3, 0.5], ddof=1)  # the first seed's last three; the second seed's do not move
    assert end_of_training_sd([[0.1, 0.2, 0.3, 0.5], [0.4, 0.4, 0.4]]) == pytest.approx(math.sqrt(last_three / 2))
    budget = Budget(seeds=5, mean=0.19, seed_sd=0.029, validation_sd=0.02, end_of_training_sd=0.03,
                    validation_images=100)
    assert budget.paired_sd == pytest.approx(0.029 * math.sqrt(2))
    effects = budget.minimum_detectable_effects()
    assert effects[2] > effects[3] > effects[5] > effects[10] > effects[20] > 0
