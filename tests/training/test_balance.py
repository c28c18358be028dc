"""The class-to-box balance: the gradient ratio scales with the weights as it must, the probe leaves training
exactly as it was, and a fit logs both ratios every epoch and their means at the end."""

import dataclasses

import pytest
import torch

from conftest import tiny_config
from pipeline.model.pack import Pack, build_model
from pipeline.training import balance, train as train_module
from pipeline.training.balance import loss_ratio, replica_gradient_ratio
from pipeline.training.train import fit


def probe_batch(n=4, size=64):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    wh = 0.2 + 0.3 * torch.rand(n, 1, 2, generator=g)
    xy = torch.rand(n, 1, 2, generator=g) * (1 - wh)
    return images, torch.cat([torch.zeros(n, 1, 1), xy, xy + wh], dim=-1)


def test_the_gradient_ratio_scales_with_the_weights_and_touches_nothing():
    images, targets = probe_batch()
    cfg = tiny_config(channels_last=False)
    torch.manual_seed(0)
    model = build_model(Pack((cfg, dataclasses.replace(cfg, seed=1))), 1, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ratio = replica_gradient_ratio(model, 1, images, targets, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(rng, torch.get_rng_state())
    assert 0 < ratio < float("inf")
    heavier = replica_gradient_ratio(model, 1, images, targets, dataclasses.replace(cfg, box_weight=4.0))
    assert heavier == pytest.approx(ratio / 4, rel=1e-5)  # the same gradients, the box side weighed 4 times
    assert replica_gradient_ratio(model, 0, images, targets, cfg) != ratio  # replica 0's own weights
    assert loss_ratio(0.3, 0.1, dataclasses.replace(cfg, box_weight=4.0)) == pytest.approx(0.75)


def test_a_fit_logs_the_balance_every_epoch_and_trains_exactly_as_without_the_probe(tiny_bananas, monkeypatch):
    from pipeline.data import load_split

    train = load_split(str(tiny_bananas), "train", 64, progress=False)
    val = load_split(str(tiny_bananas), "val", 64, progress=False)
    cfg = tiny_config(epochs=2, hflip=True, neg_sampling="random", neg_pos_ratio=3.0)
    probed = fit(cfg, train, val, progress=False)
    for epoch in probed.history:
        assert epoch["train/cls_box_ratio"] == pytest.approx(epoch["train/loss_cls"] / epoch["train/loss_box"])
        assert epoch["train/grad_ratio_cls_box"] > 0
    means = balance.training_means(probed.history, balance.BALANCE_KEYS)
    assert means["train/cls_box_ratio_mean"] == pytest.approx(
        sum(e["train/cls_box_ratio"] for e in probed.history) / 2)
    monkeypatch.setattr(train_module._Training, "add_balance", lambda self, metrics: None)
    plain = fit(cfg, train, val, progress=False)
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, probed.model.state_dict()[key]), key
