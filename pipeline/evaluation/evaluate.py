"""Detections from TinySSD outputs, and COCO-style metrics from pycocotools.

postprocess: softmax -> decode -> score threshold -> per-class batched_nms, for a whole
batch in one NMS call. coco_evaluate: pycocotools' COCOeval with all 12 stats kept
under names, plus the precision array for PR curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from pipeline.evaluation.coco import CocoColumns
from pipeline.model.boxes import decode
from pipeline.model.tinyssd import autocast

PRE_NMS_TOP_K = 1000  # candidates per image before NMS: bounds the cost early in training


@dataclass
class Detections:
    """Detections of one image: boxes_xyxy relative [n, 4], scores [n], labels [n] (0..q-1)."""
    boxes_xyxy: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def postprocess(cls_logits: torch.Tensor, box_offsets: torch.Tensor, anchors_xyxy: torch.Tensor,
                score_threshold: float = 0.01, nms_iou: float = 0.5, max_detections: int = 100) -> list[Detections]:
    """cls_logits [B, A, q+1], box_offsets [B, A, 4], anchors [A, 4] -> one Detections per image."""
    B, A, C = cls_logits.shape  # batch, anchors, classes + background
    q = C - 1
    # softmax over a transposed view runs ~15x faster on CPU than over the short last dimension
    scores = torch.softmax(cls_logits.float().transpose(1, 2), dim=1).transpose(1, 2)[..., 1:].reshape(B, A * q)
    boxes = decode(box_offsets.float(), anchors_xyxy).clamp(0.0, 1.0)  # [B, A, 4]
    top_scores, top_idx = scores.topk(min(PRE_NMS_TOP_K, A * q), dim=1)  # [B, K]
    keep = top_scores > score_threshold
    image = torch.arange(B, device=scores.device)[:, None].expand_as(top_idx)[keep]
    anchor, label = top_idx[keep] // q, top_idx[keep] % q
    cand_boxes, cand_scores = boxes[image, anchor], top_scores[keep]
    kept = batched_nms(cand_boxes, cand_scores, image * q + label, nms_iou)  # sorted by score
    kept = kept[torch.sort(image[kept], stable=True).indices]  # group by image, score order kept
    counts = torch.bincount(image[kept], minlength=B)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[image[kept]]
    kept = kept[rank < max_detections]
    per_image = torch.bincount(image[kept], minlength=B).tolist()
    return [Detections(b, s, l) for b, s, l in zip(cand_boxes[kept].split(per_image),
                                                  cand_scores[kept].split(per_image),
                                                  label[kept].split(per_image))]


@torch.no_grad()
def predict_pack(model, images_uint8: torch.Tensor, device: torch.device, *, replicas: list[int] | None = None,
                 batch_size: int = 64, channels_last: bool = True, precision: str = "fp32",
                 **post) -> list[list[Detections]]:
    """Detections of each replica of a pack (a TinySSD, one or K replicas, or a pipeline.model.pack.ReplicaLoop) for
    uint8 images [N, 3, S, S]: one list per replica in ``replicas`` (default: all), boxes relative. Every
    replica sees the same images, in one forward pass per batch."""
    model.eval()
    k = model.replicas
    chosen = list(range(k)) if replicas is None else replicas
    out: list[list[Detections]] = [[] for _ in chosen]
    batch_size = max(1, batch_size // k)  # a pack predicts K copies of each batch at once
    for start in range(0, len(images_uint8), batch_size):
        batch = images_uint8[start:start + batch_size].to(device)
        x = model.pack_input(batch[None].expand(k, *batch.shape), channels_last)
        with autocast(precision, device):
            anchors, cls_logits, box_offsets = model.forward_pack(x)  # [K, B, ...]
        # only the chosen replicas are decoded: a replica whose weights diverged to NaN has nothing to give
        found = postprocess(cls_logits[chosen].flatten(0, 1), box_offsets[chosen].flatten(0, 1), anchors, **post)
        for i in range(len(chosen)):
            out[i] += found[i * len(batch):(i + 1) * len(batch)]
    return out


def predict(model, images_uint8: torch.Tensor, device: torch.device, **options) -> list[Detections]:
    """Detections of a one-replica TinySSD for uint8 images [N, 3, S, S], in batches, on ``device``; boxes relative.
    Options: batch_size, channels_last, precision, and postprocess's."""
    return predict_pack(model, images_uint8, device, **options)[0]


def coco_columns(detections: list[Detections], orig_sizes: torch.Tensor) -> CocoColumns:
    """The tensor half of :func:`to_coco_results`: all images' detections leave the device in one
    copy, scaled to original pixels. Raises ValueError on a non-finite box or score: pycocotools
    would score a NaN box as a match."""
    if not detections:
        return CocoColumns([], [], [], [])
    counts = [len(det.scores) for det in detections]
    boxes = torch.cat([det.boxes_xyxy for det in detections]).double().cpu()
    scores = torch.cat([det.scores for det in detections]).double().cpu()
    labels = torch.cat([det.labels for det in detections]).cpu()
    image = torch.repeat_interleave(torch.arange(len(detections)), torch.tensor(counts, dtype=torch.long))
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if not finite.all():
        raise ValueError(f"non-finite box or score in the detections of image {int(image[~finite][0])}")
    h, w = orig_sizes.double()[image].unbind(-1)
    xyxy = boxes * torch.stack([w, h, w, h], dim=1)
    return CocoColumns((image + 1).tolist(), (labels + 1).tolist(), xyxy.tolist(), scores.tolist())


def predict_with_config(model, images_uint8: torch.Tensor, device: torch.device, cfg, *, min_score: float = 0.0,
                        replicas: list[int] | None = None) -> list[list[Detections]] | list[Detections]:
    """:func:`predict` with a run's own settings (a RunConfig): layout, precision, threshold, NMS, cap.
    ``min_score`` raises the score threshold, never lowers it. With ``replicas``, :func:`predict_pack`'s
    per-replica lists for those replicas of a pack."""
    options = dict(channels_last=cfg.channels_last, precision=cfg.precision,
                   score_threshold=max(min_score, cfg.score_threshold), nms_iou=cfg.nms_iou,
                   max_detections=cfg.max_detections)
    if replicas is not None:
        return predict_pack(model, images_uint8, device, replicas=replicas, **options)
    return predict(model, images_uint8, device, **options)


def to_coco_results(detections: list[Detections], orig_sizes: torch.Tensor) -> list[dict]:
    """COCO results in original pixels: image_id = index + 1, category_id = label + 1, bbox xywh."""
    return coco_columns(detections, orig_sizes).results()
