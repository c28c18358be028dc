"""The chapter's loss and the alternatives its exercises ask about, each a separate small piece.

Matching and encoding live in boxes.py; here we only turn predictions and targets
into a number: per-anchor class loss (CE or focal), per-coordinate box loss (L1 or
smooth L1), which negatives the class loss sees, then weights and normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import RunConfig


def full(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 at least: bf16 logits are cast up, float64 (the exactness tests) stays."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """-alpha_t (1 - p_t)^gamma log p_t over the softmax, per anchor.

    logits: Tensor[..., q+1]; labels: long Tensor[...] (0 = background). Returns Tensor[...].
    alpha None is the chapter's form (one global factor, here 1); a number is RetinaNet's
    balance: alpha for object classes, 1 - alpha for background. gamma = 0, alpha None is CE.
    """
    log_p = F.log_softmax(full(logits), dim=-1).gather(-1, labels[..., None]).squeeze(-1)
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
    return F.cross_entropy(full(logits.reshape(-1, C)), labels.reshape(-1), reduction="none").reshape(B, A)


def box_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """Per-coordinate box loss on positive anchors only: Tensor[B, A, 4] each -> Tensor[B, A, 4].

    smooth_l1 is the chapter's sigma form: (sigma x)^2 / 2 if |x| < 1/sigma^2 else |x| - 0.5/sigma^2,
    which is torch's smooth_l1_loss with beta = 1/sigma^2.
    """
    pred, target = full(pred) * mask, target * mask
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
        score = full(cls_loss_per_anchor.detach())
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


# --- packs: K replicas at once, each with its own knobs ------------------------------------------------------

PER_REPLICA_LOSS_KNOBS = ("box_loss", "smooth_l1_sigma", "cls_loss", "focal_gamma", "focal_alpha", "cls_weight",
                          "box_weight", "loss_normalization", "neg_sampling", "neg_pos_ratio")
STRATEGIES = ("all", "hard", "random")


@dataclass(frozen=True)
class LossKnobs:
    """The loss knobs of K replicas as [K] tensors (alpha NaN: none), and which code paths any replica needs:
    a pack of one setting runs only that setting's code, a mixed pack selects per replica with torch.where."""
    focal: torch.Tensor  # bool: cls_loss == focal
    gamma: torch.Tensor
    alpha: torch.Tensor
    smooth: torch.Tensor  # bool: box_loss == smooth_l1
    beta: torch.Tensor  # smooth L1's 1 / sigma^2
    cls_weight: torch.Tensor
    box_weight: torch.Tensor
    by_positives: torch.Tensor  # bool: loss_normalization == positives
    strategy: torch.Tensor  # long: the index in STRATEGIES
    ratio: torch.Tensor
    uses: frozenset[str]  # of "focal", "smooth", "hard", "random", "positives", "anchors"

    @classmethod
    def of(cls, configs: list[RunConfig], device, dtype: torch.dtype = torch.float32) -> "LossKnobs":
        """The knobs of ``configs``, one replica each; real numbers in ``dtype`` (float64 for the exactness tests)."""
        def tensor(values, kind=dtype):
            return torch.tensor(values, dtype=kind, device=device)
        uses = {name for name, used in (
            ("focal", any(c.cls_loss == "focal" for c in configs)),
            ("smooth", any(c.box_loss == "smooth_l1" for c in configs)),
            ("hard", any(c.neg_sampling == "hard" for c in configs)),
            ("random", any(c.neg_sampling == "random" for c in configs)),
            ("positives", any(c.loss_normalization == "positives" for c in configs)),
            ("anchors", any(c.loss_normalization == "anchors" for c in configs))) if used}
        return cls(focal=tensor([c.cls_loss == "focal" for c in configs], torch.bool),
                   gamma=tensor([c.focal_gamma for c in configs]),
                   alpha=tensor([math.nan if c.focal_alpha is None else c.focal_alpha for c in configs]),
                   smooth=tensor([c.box_loss == "smooth_l1" for c in configs], torch.bool),
                   beta=tensor([1.0 / c.smooth_l1_sigma ** 2 for c in configs]),
                   cls_weight=tensor([c.cls_weight for c in configs]),
                   box_weight=tensor([c.box_weight for c in configs]),
                   by_positives=tensor([c.loss_normalization == "positives" for c in configs], torch.bool),
                   strategy=tensor([STRATEGIES.index(c.neg_sampling) for c in configs], torch.long),
                   ratio=tensor([c.neg_pos_ratio for c in configs]), uses=frozenset(uses))


def _per_replica(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] tensor shaped to broadcast against ``like`` [K, ...]."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def pack_class_loss(logits: torch.Tensor, labels: torch.Tensor, knobs: LossKnobs) -> torch.Tensor:
    """Per-anchor class loss of each replica: logits [K, B, A, q+1], labels [K, B, A] -> [K, B, A].
    CE replicas in a mixed pack take the focal form with gamma 0 and no alpha, which is CE."""
    if "focal" not in knobs.uses:
        K, B, A, C = logits.shape  # replicas, batch, anchors, classes + background
        return F.cross_entropy(full(logits.reshape(-1, C)), labels.reshape(-1), reduction="none").reshape(K, B, A)
    log_p = F.log_softmax(full(logits), dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    one_minus_p = (-torch.expm1(log_p)).clamp(min=1e-12)  # as in focal_loss
    gamma = _per_replica(torch.where(knobs.focal, knobs.gamma, 0.0), log_p)
    loss = -(one_minus_p ** gamma) * log_p
    alpha = _per_replica(knobs.alpha, log_p)
    balanced = _per_replica(knobs.focal, log_p) & ~torch.isnan(alpha)
    return loss * torch.where(balanced, torch.where(labels > 0, alpha, 1.0 - alpha), 1.0)


def pack_box_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, knobs: LossKnobs) -> torch.Tensor:
    """Per-coordinate box loss of each replica on its positive anchors: [K, B, A, 4] each -> [K, B, A, 4];
    smooth L1 written out as torch's (0.5 x^2 / beta below beta, else |x| - 0.5 beta), with a [K] beta."""
    diff = (full(pred) * mask - target * mask).abs()
    if "smooth" not in knobs.uses:
        return diff
    beta = _per_replica(knobs.beta, diff)
    smooth = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return torch.where(_per_replica(knobs.smooth, diff), smooth, diff)


def draw_negative_scores(generators: list, random: list[bool], batch: int, anchors: int) -> torch.Tensor:
    """[K, B, A] uniform draws that rank the negatives of each replica that samples them at random, each from its
    replica's own (CPU) generator; zeros, drawing nothing, for the other replicas. On every device, so a seed draws
    the same negatives alone and inside any pack."""
    return torch.stack([torch.rand((batch, anchors), generator=g) if is_random else torch.zeros((batch, anchors))
                        for g, is_random in zip(generators, random)])


def _negative_scores(cls_loss: torch.Tensor, knobs: LossKnobs, draws: torch.Tensor | None) -> torch.Tensor:
    """What ranks the negatives: the loss for 'hard' replicas, ``draws`` (:func:`draw_negative_scores`) for
    'random' ones."""
    score = full(cls_loss.detach())
    if "random" not in knobs.uses:
        return score
    if draws is None:
        raise ValueError("a replica samples its negatives at random: pass its draws (draw_negative_scores)")
    return torch.where(_per_replica(knobs.strategy == STRATEGIES.index("random"), score), draws.to(score), score)


def pack_select_negatives(cls_loss: torch.Tensor, positive: torch.Tensor, knobs: LossKnobs,
                          draws: torch.Tensor | None) -> torch.Tensor:
    """select_negatives for each replica with its own strategy and ratio: [K, B, A] -> bool [K, B, A]."""
    score = _negative_scores(cls_loss, knobs, draws).masked_fill(positive, float("-inf"))
    n_keep = (positive.sum(dim=-1, keepdim=True) * _per_replica(knobs.ratio, positive)).floor().long()
    rank = score.argsort(dim=-1, descending=True).argsort(dim=-1)
    chosen = positive | (rank < n_keep)
    return torch.where(_per_replica(knobs.strategy == STRATEGIES.index("all"), chosen), True, chosen)


def pack_loss(cls_logits, box_offsets, cls_labels, box_targets, box_mask, knobs: LossKnobs,
              negative_draws: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """:func:`detection_loss` of each of K replicas, each with its own knobs: inputs with a leading K
    ([K, B, A, ...]), outputs {"loss", "loss_cls", "loss_box"} of shape [K]. ``negative_draws`` [K, B, A]
    (:func:`draw_negative_scores`) rank the negatives of the replicas that sample them at random. The replicas' parameters are
    disjoint, so the gradient of ``loss.sum()`` is each replica's own loss's gradient."""
    K, B = cls_logits.shape[:2]  # replicas, batch
    positive = cls_labels > 0
    cls = pack_class_loss(cls_logits, cls_labels, knobs)  # [K, B, A]
    box = pack_box_loss(box_offsets, box_targets, box_mask, knobs)  # [K, B, A, 4]
    if knobs.uses & {"hard", "random"}:
        cls = cls * pack_select_negatives(cls, positive, knobs, negative_draws)
    w_cls, w_box = knobs.cls_weight, knobs.box_weight
    cls_per_image, box_per_image = cls.mean(dim=-1), box.reshape(K, B, -1).mean(dim=-1)  # [K, B]
    out = {"loss": (w_cls[:, None] * cls_per_image + w_box[:, None] * box_per_image).mean(dim=1),
           "loss_cls": cls_per_image.mean(dim=1), "loss_box": box_per_image.mean(dim=1)}
    if "positives" in knobs.uses:
        n_pos = positive.reshape(K, -1).sum(dim=1).clamp(min=1)
        cls_term, box_term = cls.reshape(K, -1).sum(dim=1) / n_pos, box.reshape(K, -1).sum(dim=1) / n_pos
        by_positives = {"loss": w_cls * cls_term + w_box * box_term, "loss_cls": cls_term, "loss_box": box_term}
        out = {key: torch.where(knobs.by_positives, by_positives[key], out[key]) for key in out}
    return out
