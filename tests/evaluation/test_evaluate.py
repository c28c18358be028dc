import io
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torchvision.ops import nms

from pipeline.evaluation import coco
from pipeline.evaluation.coco import coco_evaluate, silence_stdout_in_this_thread
from pipeline.evaluation.evaluate import Detections, postprocess, to_coco_results
from pipeline.model.boxes import encode


def gt_dict():
    """Two 100x200 images: a large box and a small one in the first, a medium one in the second."""
    images = [{"id": 1, "file_name": "a.png", "height": 100, "width": 200},
              {"id": 2, "file_name": "b.png", "height": 100, "width": 200}]
    boxes = [(1, 1, [10, 10, 150, 80]), (1, 2, [160, 5, 20, 20]), (2, 1, [50, 20, 40, 50])]
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (img, cat, b) in enumerate(boxes)]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "banana"}, {"id": 2, "name": "apple"}]}


def test_perfect_detections_give_ap_1():
    gt = gt_dict()
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    metrics = coco_evaluate(gt, results).metrics
    assert metrics["map"] == pytest.approx(1.0) and metrics["map50"] == pytest.approx(1.0)
    assert metrics["map_small"] == pytest.approx(1.0) and metrics["mar100"] == pytest.approx(1.0)


def test_empty_detections_give_0_not_a_crash():
    result = coco_evaluate(gt_dict(), [])
    assert result.metrics["map"] == 0.0 and result.metrics["map_large"] == 0.0
    assert result.precision_iou50.shape == (101, 2)


def test_sizes_without_ground_truth_are_nan_not_minus_1():
    gt = gt_dict()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] > 32 ** 2]  # no small objects left
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 150, 80], "score": 0.5}]
    metrics = coco_evaluate(gt, results).metrics
    assert math.isnan(metrics["map_small"]) and metrics["map"] > 0
    assert math.isnan(coco_evaluate(gt, []).metrics["map_small"])


def test_a_nan_box_is_rejected():
    results = [{"image_id": 1, "category_id": 1, "bbox": [float("nan"), 10, 150, 80], "score": 0.9}]
    with pytest.raises(ValueError, match="non-finite"):
        coco_evaluate(gt_dict(), results)
    det = Detections(torch.tensor([[0.1, float("nan"), 0.5, 0.5]]), torch.tensor([0.5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="non-finite"):
        to_coco_results([det], torch.tensor([[100, 200]]))


def test_no_ground_truth_at_all_is_an_error():
    gt = gt_dict()
    gt["annotations"] = []
    with pytest.raises(ValueError, match="no annotations"):
        coco_evaluate(gt, [])


def test_pr_curve_of_one_miss_and_one_hit():
    gt = gt_dict()
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 150, 80], "score": 0.9},
               {"image_id": 2, "category_id": 1, "bbox": [100, 0, 30, 30], "score": 0.8}]
    result = coco_evaluate(gt, results)
    banana = result.precision_iou50[:, 0]
    assert banana[:51] == pytest.approx([1.0] * 51) and banana[51:].tolist() == [0.0] * 50  # recall 0.5 at precision 1
    assert result.metrics["map50"] == pytest.approx((51 / 101 + 0.0) / 2, abs=1e-6)  # the apple is never detected


def scoring_worker() -> ThreadPoolExecutor:
    """A worker like Validator's; its futures re-raise an assert that failed in the worker."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="coco-scoring")


def test_silencing_one_thread_leaves_the_others_printing(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    inside, other_printed = threading.Event(), threading.Event()

    def scoring():
        with silence_stdout_in_this_thread():
            print("silenced before")
            inside.set()
            assert other_printed.wait(timeout=10)
            print("silenced after", flush=True)
        print("worker after the context")

    with scoring_worker() as pool:
        done = pool.submit(scoring)
        assert inside.wait(timeout=10)
        print("training goes on")  # while the worker is inside the context
        other_printed.set()
        done.result(timeout=30)
    assert out.getvalue() == "training goes on\nworker after the context\n"
    assert sys.stdout.getvalue() == out.getvalue()  # attributes reach the wrapped stream


def test_silencing_in_the_calling_thread_follows_a_replaced_stdout(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    with silence_stdout_in_this_thread():
        print("dropped")
    monkeypatch.setattr(sys, "stdout", second)  # as pytest's capture or another redirect would
    with silence_stdout_in_this_thread(), silence_stdout_in_this_thread():  # nesting
        print("dropped too")
    print("kept")
    assert first.getvalue() == "" and second.getvalue() == "kept\n"


def test_scoring_in_a_worker_keeps_its_map_and_hides_only_its_own_prints(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    mid_scoring, other_printed = threading.Event(), threading.Event()

    class PausingCOCOeval(coco.COCOeval):  # pycocotools printed before this and prints after it
        def accumulate(self, *args, **kwargs):
            mid_scoring.set()
            assert other_printed.wait(timeout=10)
            return super().accumulate(*args, **kwargs)

    monkeypatch.setattr(coco, "COCOeval", PausingCOCOeval)
    gt = gt_dict()
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 150, 80], "score": 0.9},
               {"image_id": 2, "category_id": 1, "bbox": [100, 0, 30, 30], "score": 0.8}]
    with scoring_worker() as pool:
        scored = pool.submit(coco_evaluate, gt, results)
        assert mid_scoring.wait(timeout=10)
        print("epoch 2")
        other_printed.set()
        metrics = scored.result(timeout=30).metrics
    assert out.getvalue() == "epoch 2\n"
    assert metrics["map50"] == pytest.approx((51 / 101 + 0.0) / 2, abs=1e-6)  # as in the PR-curve test


def test_results_are_in_original_pixels():
    det = Detections(torch.tensor([[0.1, 0.2, 0.5, 0.6]]), torch.tensor([0.7]), torch.tensor([1]))
    (r,) = to_coco_results([det], torch.tensor([[100, 200]]))
    assert r["image_id"] == 1 and r["category_id"] == 2 and r["score"] == pytest.approx(0.7)
    assert r["bbox"] == pytest.approx([20.0, 20.0, 80.0, 40.0])


def logits_for(probabilities):
    return torch.log(torch.tensor(probabilities))


def test_postprocess_agrees_with_torchvision_nms_per_image_and_class():
    g = torch.Generator().manual_seed(0)
    A, q, B = 60, 2, 3
    xy = torch.rand(A, 2, generator=g) * 0.6
    anchors = torch.cat([xy, xy + 0.2 + 0.2 * torch.rand(A, 2, generator=g)], dim=1)
    cls_logits = torch.randn(B, A, q + 1, generator=g) * 3
    offsets = torch.randn(B, A, 4, generator=g) * 0.5
    dets = postprocess(cls_logits, offsets, anchors, score_threshold=0.05, nms_iou=0.5, max_detections=1000)
    from pipeline.model.boxes import decode
    for b in range(B):
        probs = cls_logits[b].softmax(-1)
        boxes = decode(offsets[b], anchors).clamp(0, 1)
        expected = []
        for c in range(q):
            keep = probs[:, c + 1] > 0.05
            kept = nms(boxes[keep], probs[keep, c + 1], 0.5)
            expected += [(c, round(s, 5)) for s in probs[keep, c + 1][kept].tolist()]
        got = [(int(label), round(float(score), 5)) for label, score in zip(dets[b].labels, dets[b].scores)]
        assert sorted(got) == sorted(expected)
        assert dets[b].scores.tolist() == sorted(dets[b].scores.tolist(), reverse=True)


def test_postprocess_finds_the_encoded_box_and_caps_detections():
    anchors = torch.tensor([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]])
    target = torch.tensor([[0.15, 0.12, 0.45, 0.40], [0.5, 0.5, 0.9, 0.9]])
    offsets = encode(target, anchors)[None]
    cls_logits = logits_for([[[0.1, 0.9], [0.995, 0.005]]])  # anchor 1 scores below 0.01
    (det,) = postprocess(cls_logits, offsets, anchors)
    assert det.labels.tolist() == [0]
    torch.testing.assert_close(det.boxes_xyxy, target[:1], atol=1e-5, rtol=0)
    many = postprocess(logits_for([[[0.1, 0.9]] * 2]), torch.zeros(1, 2, 4), anchors, max_detections=1)[0]
    assert len(many.scores) == 1
