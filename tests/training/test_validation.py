"""Validation while training: COCO scoring in a worker thread, epochs reported in order, epoch states
saved with the weights of their own epoch."""

import os
import threading

import pytest
import torch

from conftest import tiny_config
from pipeline.data import to_coco_dict
from pipeline.evaluation.coco import coco_evaluate
from pipeline.evaluation.evaluate import Detections, coco_columns, to_coco_results
from pipeline.training import validation
from pipeline.training.step import TrainStep
from pipeline.training.train import fit


def test_detections_to_host_keeps_every_image_in_order():
    dets = [Detections(torch.rand(n, 4), torch.rand(n), torch.randint(0, 3, (n,))) for n in (2, 0, 5)]
    moved = validation.detections_to_host(dets)
    assert [len(d.scores) for d in moved] == [2, 0, 5]
    for a, b in zip(dets, moved):
        assert torch.equal(a.boxes_xyxy, b.boxes_xyxy) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.labels, b.labels)


def test_coco_columns_make_the_results_to_coco_results_makes():
    dets = [Detections(torch.tensor([[0.1, 0.2, 0.5, 0.6]]), torch.tensor([0.9]), torch.tensor([1])),
            Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)),
            Detections(torch.tensor([[0.0, 0.0, 1.0, 0.5]]), torch.tensor([0.25]), torch.tensor([0]))]
    sizes = torch.tensor([[100, 200], [10, 10], [50, 40]])  # (h, w)
    assert coco_columns(dets, sizes).results() == to_coco_results(dets, sizes) == [
        {"image_id": 1, "category_id": 2, "bbox": pytest.approx([20.0, 20.0, 80.0, 40.0]), "score": pytest.approx(0.9)},
        {"image_id": 3, "category_id": 1, "bbox": pytest.approx([0.0, 0.0, 40.0, 25.0]), "score": 0.25}]


def test_validator_scores_what_pycocotools_scores(splits):
    _, val = splits
    torch.manual_seed(0)
    from pipeline.model.tinyssd import TinySSD

    model = TinySSD(1).to(memory_format=torch.channels_last)
    cfg = tiny_config()
    with validation.Validator(val, cfg, torch.device("cpu")) as validator:
        scored = validator.start(model).result()
    direct = coco_evaluate(to_coco_dict(val), to_coco_results(scored.detections, val.orig_sizes))
    assert scored.metrics == pytest.approx({f"val/{k}": v for k, v in direct.metrics.items()}, nan_ok=True)
    assert scored.seconds > 0


def test_a_packs_replicas_are_scored_in_parallel_processes_as_pycocotools_scores_each(splits):
    _, val = splits
    from pipeline.model.pack import Pack, build_model

    pack = Pack(tuple(tiny_config(seed=s) for s in range(3)))
    model = build_model(pack, 1, torch.device("cpu"))
    with validation.Validator(val, pack.shared, torch.device("cpu")) as validator:
        scored = validator.start(model, replicas=[0, 1, 2]).result()
        workers = validator.processes._processes  # spawned once, at the pack's first validation
        assert 1 <= len(workers) <= 3 and all(pid != os.getpid() for pid in workers)
        again = validator.start(model, replicas=[0, 1, 2]).result()
        assert validator.processes._processes.keys() == workers.keys()  # the same processes, not new ones
    for replica in (scored, again):
        for s in replica:
            direct = coco_evaluate(to_coco_dict(val), to_coco_results(s.detections, val.orig_sizes))
            assert s.metrics == pytest.approx({f"val/{k}": v for k, v in direct.metrics.items()}, nan_ok=True)
    assert len({tuple(s.metrics.values()) for s in scored}) == 3  # three replicas' own detections, not one's


def test_scoring_runs_while_the_next_epoch_trains(splits, monkeypatch):
    """The first validation's scoring waits until epoch 1 has started training: done in line,
    it would wait forever (here: 20 s, then the test fails)."""
    train, val = splits
    second_epoch_started, seen = threading.Event(), {}
    start_epoch = TrainStep.start_epoch

    def counting_start_epoch(self):
        seen["epochs_started"] = seen.get("epochs_started", 0) + 1
        if seen["epochs_started"] == 2:
            second_epoch_started.set()
        start_epoch(self)

    def slow_score(self, columns, detections):
        if "first" not in seen:
            seen["first"] = (threading.current_thread().name, second_epoch_started.wait(timeout=20))
            seen["plain"] = all(isinstance(column, list) for column in vars(columns).values())  # no tensors
        return real_score(self, columns, detections)

    real_score = validation.Validator.score
    monkeypatch.setattr(TrainStep, "start_epoch", counting_start_epoch)
    monkeypatch.setattr(validation.Validator, "score", slow_score)
    reported = []
    result = fit(tiny_config(epochs=3), train, val, progress=False,
                 on_epoch=lambda epoch, metrics, run: reported.append((epoch, "val/map" in metrics)))
    thread, overlapped = seen["first"]
    assert thread.startswith("coco-scoring") and overlapped and seen["plain"]
    assert reported == [(0, True), (1, True), (2, True)]  # in order, each with its own score
    assert [("val/map" in m) for m in result.history] == [True, True, True]
    assert result.timings["scoring_s"] > 0


def test_epoch_states_hold_their_own_epoch_and_resume_to_the_same_weights(splits, tmp_path):
    """States are saved after validated epochs only, with that epoch's weights (training has moved
    on by the time its score is in); resuming from one trains to exactly the uninterrupted result."""
    train, val = splits
    cfg = tiny_config(epochs=3, val_every=2)  # validates after epochs 1 and 2
    full = fit(cfg, train, val, progress=False, state_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("epoch-*.pt")) == ["epoch-0001.pt", "epoch-0002.pt"]
    after_1 = torch.load(tmp_path / "epoch-0001.pt", weights_only=False)
    assert after_1["epoch"] == 1 and len(after_1["history"]) == 2 and "val/map" in after_1["history"][1]
    final = full.model.state_dict()
    assert any(not torch.equal(after_1["replicas"][0][k], final[k]) for k in final)  # not the later weights

    (tmp_path / "epoch-0002.pt").unlink()  # as if killed during epoch 2
    resumed = fit(cfg, train, val, progress=False, state_dir=tmp_path)
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0, msg=key)
    for got, want in zip(resumed.history[:2], after_1["history"]):
        assert got == pytest.approx(want, nan_ok=True)
    assert resumed.metrics == pytest.approx(full.metrics, nan_ok=True)


def test_an_epoch_state_of_another_configuration_is_ignored(splits, tmp_path):
    """A study created again under the same name must not train on the old study's weights."""
    train, val = splits
    other = fit(tiny_config(epochs=2, val_every=1, lr=0.05), train, val, progress=False, state_dir=tmp_path)
    assert (tmp_path / "epoch-0001.pt").exists()
    cfg = tiny_config(epochs=2, val_every=1)
    with pytest.warns(UserWarning, match="another configuration"):
        fresh = fit(cfg, train, val, progress=False, state_dir=tmp_path)
    scratch = fit(cfg, train, val, progress=False)
    for key, value in fresh.model.state_dict().items():
        torch.testing.assert_close(value, scratch.model.state_dict()[key], rtol=0, atol=0, msg=key)
    assert fresh.metrics != pytest.approx(other.metrics, nan_ok=True)


def test_a_failure_still_reports_the_epochs_scored_before_it(splits, monkeypatch):
    """Epoch 1's score is still pending when epoch 2 fails: it reaches the run anyway, on_epoch does not."""
    from pipeline.training import train as train_module
    from pipeline.tracking import MemoryTracker

    real_epoch, epochs = train_module._train_epoch, []

    def failing_third_epoch(*args):
        epochs.append(len(epochs))
        if epochs[-1] == 2:
            raise RuntimeError("a NaN, say")
        return real_epoch(*args)

    monkeypatch.setattr(train_module, "_train_epoch", failing_third_epoch)
    train, val = splits
    notified = []
    tracker = MemoryTracker()
    with pytest.raises(RuntimeError, match="a NaN"), tracker.run("failing") as run:
        fit(tiny_config(epochs=4, val_every=1), train, val, run=run, progress=False,
            on_epoch=lambda epoch, metrics, run: notified.append(epoch))
    logged = tracker.runs[0].metrics
    assert [step for step, _ in logged["val/map"]] == [0, 1] and [step for step, _ in logged["train/loss"]] == [0, 1]
    table = tracker.runs[0].tables["metrics_table.json"]  # a failed run keeps its epochs' rows in its table too
    assert sorted(set(table["epoch"])) == [0, 1] and "val/map" in table["metric"]
    assert notified == [0] or notified == [0, 1]  # epoch 1 reached on_epoch only if its score was in before the failure
