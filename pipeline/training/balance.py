"""What a loss knob does to the balance between the class and the box loss: the ratio of their weighted terms
(from the epoch's sums, pipeline.training.step) and of their gradients' norms on the layers both heads share (the
five feature blocks), probed once an epoch on one batch. Box weight 4, focal loss and random negatives all move
this balance; logging it shows the side effect of each (issue 27)."""

from __future__ import annotations

import math

import torch

from pipeline.config import RunConfig
from pipeline.model.boxes import multibox_target
from pipeline.model.losses import detection_loss
from pipeline.model.pack import replica_model
from pipeline.model.tinyssd import TinySSD, preprocess

BALANCE_KEYS = ("train/cls_box_ratio", "train/grad_ratio_cls_box")  # logged every epoch, and their means at the end
PROBE_SEED_OFFSET = 7919  # the probe's own negatives stream: it never draws from the training's generators


def replica_gradient_ratio(model, k: int, images_uint8: torch.Tensor, targets: torch.Tensor, cfg: RunConfig) -> float:
    """gradient_ratio of replica k of a pack's model, on a copy of it: the pack's weights, BatchNorm statistics and
    every random stream are left as they were (building the copy draws initial weights: that draw is undone)."""
    with torch.random.fork_rng(devices=[]):
        copy = replica_model(model, k)
    return gradient_ratio(copy, images_uint8, targets, cfg)


def gradient_ratio(probe: TinySSD, images_uint8: torch.Tensor, targets: torch.Tensor, cfg: RunConfig) -> float:
    """‖∇(cls_weight · class loss)‖ / ‖∇(box_weight · box loss)‖ over the shared blocks' parameters, on one batch,
    in training mode (its BatchNorm statistics move: pass a copy of a model that trains on)."""
    device = next(probe.parameters()).device
    probe = probe.train()
    anchors, cls_logits, box_pred = probe(preprocess(images_uint8.to(device), cfg.channels_last))
    box_target, mask, labels = multibox_target(anchors, targets.to(device))
    negatives = torch.Generator().manual_seed(cfg.seed + PROBE_SEED_OFFSET)
    losses = detection_loss(cls_logits, box_pred, labels, box_target, mask, cfg, negatives)
    shared = [p for p in probe.blocks.parameters() if p.requires_grad]
    norms = []
    for term, weight in ((losses["loss_cls"], cfg.cls_weight), (losses["loss_box"], cfg.box_weight)):
        grads = torch.autograd.grad(weight * term, shared, retain_graph=True, allow_unused=True)
        norms.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None)))
    return norms[0] / norms[1] if norms[1] > 0 else math.inf


def loss_ratio(loss_cls: float, loss_box: float, cfg: RunConfig) -> float:
    """(cls_weight · class loss) / (box_weight · box loss): which term the total is made of."""
    box = cfg.box_weight * loss_box
    return cfg.cls_weight * loss_cls / box if box > 0 else math.inf


def training_means(history: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    """Each key's mean over the epochs that logged it: the balance 'averaged over training'."""
    out = {}
    for key in keys:
        values = [epoch[key] for epoch in history if key in epoch and math.isfinite(epoch[key])]
        if values:
            out[f"{key}_mean"] = sum(values) / len(values)
    return out
