"""The chapter's loss and its exercise variants, each a separate small piece.

Matching and encoding live in boxes.py; here we only turn predictions and targets
into a number: per-anchor class loss (CE or focal), per-coordinate box loss (L1 or
smooth L1), which negatives the class loss sees, then weights and normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import RunConfig


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """-alpha_t (1 - p_t)^gamma log p_t over the softmax, per anchor.

    logits: Tensor[..., q+1]; labels: long Tensor[...] (0 = background). Returns Tensor[...].
    alpha None is the chapter's form (one global factor, here 1); a number is RetinaNet's
    balance: alpha for object classes, 1 - alpha for background. gamma = 0, alpha None is CE.
    """
    log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    # -expm1 is 1 - p without cancellation; the clamp keeps d/dp (1-p)^gamma finite as p -> 1 for gamma < 1
    one_minus_p = (-torch.expm1(log_p)).clamp(min=1e-12)
    loss = -(one_minus_p ** gamma) * log_p
    if alpha is not None:
        loss = loss * torch.where(labels > 0, alpha, 1.0 - alpha)
    return loss


def class_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """Per-anchor class loss: Tensor[B, A, q+1], Tensor[B, A] -> Tensor[B, A]."""
    if cfg.cls_loss == "focal":
        return focal_loss(logits, labels, cfg.focal_gamma, cfg.focal_alpha)
    B, A, C = logits.shape  # batch, anchors, classes + background
    return F.cross_entropy(logits.reshape(-1, C).float(), labels.reshape(-1), reduction="none").reshape(B, A)


def box_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """Per-coordinate box loss on positive anchors only: Tensor[B, A, 4] each -> Tensor[B, A, 4].

    smooth_l1 is the chapter's sigma form: (sigma x)^2 / 2 if |x| < 1/sigma^2 else |x| - 0.5/sigma^2,
    which is torch's smooth_l1_loss with beta = 1/sigma^2.
    """
    pred, target = pred.float() * mask, target * mask
    if cfg.box_loss == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0 / cfg.smooth_l1_sigma ** 2, reduction="none")
    return F.l1_loss(pred, target, reduction="none")


def select_negatives(cls_loss_per_anchor: torch.Tensor, positive: torch.Tensor, strategy: str,
                     ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Anchors the class loss sees: all positives plus the chosen negatives, per image.

    cls_loss_per_anchor, positive: Tensor[B, A]. Returns bool Tensor[B, A].
    hard: the ``ratio * n_pos`` highest-loss negatives (SSD's hard negative mining);
    random: that many negatives drawn uniformly. An image with no positives keeps no negatives.
    """
    if strategy == "all":
        return torch.ones_like(positive, dtype=torch.bool)
    if strategy == "hard":
        score = cls_loss_per_anchor.detach().float()
    else:
        device = generator.device if generator is not None else positive.device
        score = torch.rand(positive.shape, generator=generator, device=device).to(positive.device)
    score = score.masked_fill(positive, float("-inf"))  # positives are never counted as negatives
    n_keep = (positive.sum(dim=1, keepdim=True) * ratio).floor().long()  # [B, 1]
    rank = score.argsort(dim=1, descending=True).argsort(dim=1)  # rank 0 = highest score
    return positive | (rank < n_keep)


def detection_loss(cls_logits, box_offsets, cls_labels, box_targets, box_mask, cfg: RunConfig,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Weighted, normalised loss of a batch.

    cls_logits: [B, A, q+1]; box_offsets, box_targets, box_mask: [B, A, 4]; cls_labels: [B, A].
    With every knob at its default this is the chapter's calc_loss, to the bit:
    mean over anchors of CE plus mean over anchor coordinates of masked L1, averaged over images.
    With negative sampling the class term is still a mean over all anchors, the negatives not chosen
    counting 0. 'positives' normalisation is SSD's: both sums divided by the number of positives.
    Returns {"loss", "loss_cls", "loss_box"}: the total and the two unweighted terms.
    """
    B = cls_logits.shape[0]
    positive = cls_labels > 0
    cls = class_loss(cls_logits, cls_labels, cfg)  # [B, A]
    box = box_loss(box_offsets, box_targets, box_mask, cfg)  # [B, A, 4]
    seen = select_negatives(cls, positive, cfg.neg_sampling, cfg.neg_pos_ratio, generator)
    if cfg.loss_normalization == "positives":
        n_pos = positive.sum().clamp(min=1)
        cls_term = (cls * seen).sum() / n_pos
        box_term = box.sum() / n_pos
        return {"loss": cfg.cls_weight * cls_term + cfg.box_weight * box_term,
                "loss_cls": cls_term, "loss_box": box_term}
    # over all anchors, the negatives left out counting 0: each kept anchor weighs what it weighs in the chapter,
    # so sampling changes only which negatives count (dividing by the kept count would also scale the class
    # term against the box term, by 33-1361x on bananas)
    cls_per_image = cls.mean(dim=1) if cfg.neg_sampling == "all" else (cls * seen).mean(dim=1)
    box_per_image = box.reshape(B, -1).mean(dim=1)
    per_image = cfg.cls_weight * cls_per_image + cfg.box_weight * box_per_image
    return {"loss": per_image.mean(), "loss_cls": cls_per_image.mean(), "loss_box": box_per_image.mean()}
