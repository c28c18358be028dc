"""What training computes, pinned: a small float64 pack of mixed knobs (flips, focal, smooth L1, random and hard
negatives, positives normalization, box weight, a last smaller batch), two epochs. When a change moves these
numbers, the scores every kept seed and shared control hold were computed by other code: bump RESULTS_VERSION in
pipeline/config.py (so they are not reused), then these numbers."""

import dataclasses

import pytest
import torch

from pipeline.config import RESULTS_VERSION, RunConfig
from pipeline.model.pack import Pack, build_model
from pipeline.training.epochs import ProgressView
from pipeline.training.step import TrainStep
from pipeline.training.train import _train_epoch, negatives_seed

BASE = RunConfig(image_size=64, batch_size=4, lr=0.2, device="cpu", channels_last=False, hflip=True)
CONFIGS = [dataclasses.replace(BASE, seed=11),
           dataclasses.replace(BASE, seed=12, cls_loss="focal", focal_gamma=2.0, focal_alpha=0.25,
                               box_loss="smooth_l1", smooth_l1_sigma=3.0),
           dataclasses.replace(BASE, seed=13, neg_sampling="random", neg_pos_ratio=3.0, box_weight=2.0),
           dataclasses.replace(BASE, seed=14, neg_sampling="hard", loss_normalization="positives", cls_weight=0.5)]
PINNED = {  # RESULTS_VERSION -> per replica, the train loss of epochs 1 and 2
    1: [[0.410564060337231, 0.14935546183974624], [0.08914196187139005, 0.030379476379334025],
        [0.05365826015221766, 0.04487521831162925], [68.61982252183923, 28.047983950988822]]}


def train_losses() -> list[list[float]]:
    g = torch.Generator().manual_seed(0)
    n, boxes = 10, 2
    images = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)
    wh = 0.2 + 0.3 * torch.rand(n, boxes, 2, generator=g, dtype=torch.float64)
    xy = torch.rand(n, boxes, 2, generator=g, dtype=torch.float64) * (1 - wh)
    targets = torch.cat([torch.zeros(n, boxes, 1, dtype=torch.float64), xy, xy + wh], dim=-1)
    pack = Pack(tuple(CONFIGS))
    model = build_model(pack, 1, torch.device("cpu")).double()
    generators = [torch.Generator().manual_seed(c.seed) for c in CONFIGS]
    negatives = [torch.Generator().manual_seed(negatives_seed(c.seed)) for c in CONFIGS]
    step = TrainStep(model, images, targets, pack, torch.device("cpu"), generators, negatives)
    epochs = [_train_epoch(step, n, BASE, generators, ProgressView(False, 2, 3, 0)) for _ in range(2)]
    return [[epoch[k]["train/loss"] for epoch in epochs] for k in range(len(CONFIGS))]


def test_training_computes_what_results_version_says():
    assert RESULTS_VERSION in PINNED, f"RESULTS_VERSION {RESULTS_VERSION} has no pinned losses: add them"
    got = train_losses()
    flat = [loss for replica in PINNED[RESULTS_VERSION] for loss in replica]
    assert [loss for replica in got for loss in replica] == pytest.approx(flat, rel=1e-9), (
        f"training now computes other numbers than RESULTS_VERSION {RESULTS_VERSION} pinned: if that is meant, "
        f"bump RESULTS_VERSION in pipeline/config.py and pin {got}")
