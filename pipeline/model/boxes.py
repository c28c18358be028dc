"""Anchors, offset encoding and the chapter's anchor matching, vectorised over the batch.

Boxes are relative to the image ([0, 1]) unless a name says otherwise. IoU and
format conversion come from ``torchvision.ops``.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou

# The chapter's anchors: five scales, three ratios, so len(sizes) + len(ratios) - 1 = 4 per location.
ANCHOR_SIZES = ((0.2, 0.272), (0.37, 0.447), (0.54, 0.619), (0.71, 0.79), (0.88, 0.961))
ANCHOR_RATIOS = ((1.0, 2.0, 0.5),) * 5
OFFSET_SCALE = (10.0, 10.0, 5.0, 5.0)  # centre x, centre y, log width, log height
XY_SCALE, WH_SCALE = OFFSET_SCALE[0], OFFSET_SCALE[2]  # Python numbers: no host-to-device copy in a CUDA graph
_EPS = 1e-6  # the chapter's guard in log(eps + w / w_anchor)


def anchors_per_location(sizes=ANCHOR_SIZES[0], ratios=ANCHOR_RATIOS[0]) -> int:
    return len(sizes) + len(ratios) - 1


def multibox_prior(height: int, width: int, sizes, ratios, device=None) -> torch.Tensor:
    """Anchors of one feature map, as the chapter's ``multibox_prior`` makes them.

    Returns:
        Tensor[height * width * (len(sizes) + len(ratios) - 1), 4]: xyxy, relative. Anchors of one
        location are consecutive: every size with ratios[0], then sizes[0] with ratios[1:].
    """
    sizes_t = torch.tensor(sizes, device=device)
    ratios_t = torch.tensor(ratios, device=device)
    center_y = (torch.arange(height, device=device) + 0.5) / height
    center_x = (torch.arange(width, device=device) + 0.5) / width
    shift_y, shift_x = torch.meshgrid(center_y, center_x, indexing="ij")
    shift_y, shift_x = shift_y.reshape(-1), shift_x.reshape(-1)
    # w is scaled by height/width so that ratio 1 stays square on rectangular maps
    w = torch.cat((sizes_t * torch.sqrt(ratios_t[0]), sizes_t[0] * torch.sqrt(ratios_t[1:]))) * height / width
    h = torch.cat((sizes_t / torch.sqrt(ratios_t[0]), sizes_t[0] / torch.sqrt(ratios_t[1:])))
    half_wh = torch.stack((-w, -h, w, h)).T.repeat(height * width, 1) / 2
    centres = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=1)
    centres = centres.repeat_interleave(len(w), dim=0)
    return centres + half_wh


def feature_map_sizes(image_size: int) -> list[int]:
    """Sides of TinySSD's five feature maps: /8, /16, /32, /64 and the global pool (1)."""
    return [image_size // 8, image_size // 16, image_size // 32, image_size // 64, 1]


def encode(boxes_xyxy: torch.Tensor, anchors_xyxy: torch.Tensor) -> torch.Tensor:
    """Offsets of boxes from anchors with factors (10, 10, 5, 5), as the chapter's ``offset_boxes``.

    boxes_xyxy, anchors_xyxy: Tensor[..., 4] (broadcastable). Returns Tensor[..., 4].
    Invariant: ``decode(encode(b, a), a) == b`` up to the eps in the log.
    """
    b = box_convert(boxes_xyxy, "xyxy", "cxcywh")
    a = box_convert(anchors_xyxy, "xyxy", "cxcywh")
    offset_xy = XY_SCALE * (b[..., :2] - a[..., :2]) / a[..., 2:]
    offset_wh = WH_SCALE * torch.log(_EPS + b[..., 2:] / a[..., 2:])
    return torch.cat([offset_xy, offset_wh], dim=-1)


def decode(offsets: torch.Tensor, anchors_xyxy: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: Tensor[..., 4] offsets -> Tensor[..., 4] xyxy boxes."""
    a = box_convert(anchors_xyxy, "xyxy", "cxcywh")
    xy = offsets[..., :2] * a[..., 2:] / XY_SCALE + a[..., :2]
    wh = torch.exp(offsets[..., 2:] / WH_SCALE) * a[..., 2:]
    return box_convert(torch.cat([xy, wh], dim=-1), "cxcywh", "xyxy")


def match_anchors(anchors_xyxy: torch.Tensor, gt_boxes_xyxy: torch.Tensor, gt_valid: torch.Tensor,
                  iou_threshold: float = 0.5) -> torch.Tensor:
    """The chapter's ``assign_anchor_to_bbox`` for a whole batch at once.

    First every anchor with IoU >= threshold takes its best box; then, greedily, the
    highest remaining (anchor, box) pair is fixed and its row and column discarded, once
    per valid box, so every box gets an anchor even when its best IoU is below threshold.

    anchors_xyxy: Tensor[A, 4]; gt_boxes_xyxy: Tensor[B, M, 4]; gt_valid: bool Tensor[B, M]
    (False marks padding rows, which are ignored).
    Returns: long Tensor[B, A], the matched box index per anchor, -1 for background.
    """
    B, M, _ = gt_boxes_xyxy.shape  # batch, max boxes per image
    A = anchors_xyxy.shape[0]
    iou = box_iou(anchors_xyxy, gt_boxes_xyxy.reshape(-1, 4)).reshape(A, B, M).permute(1, 0, 2)
    iou = torch.where(gt_valid[:, None, :], iou, -1.0).contiguous()  # [B, A, M]
    best_iou, best_box = iou.max(dim=2)
    matched = torch.where(best_iou >= iou_threshold, best_box, torch.full_like(best_box, -1))
    n_valid = gt_valid.sum(dim=1)  # [B]
    batch_idx = torch.arange(B, device=iou.device)
    for step in range(M):  # at most M rounds, each fixing one box in every image; no per-image loop
        active = step < n_valid  # [B]
        pick = iou.view(B, A * M).argmax(dim=1)  # first maximum, as the chapter's argmax over the flattened matrix
        anchor, box = pick // M, pick % M
        matched[batch_idx, anchor] = torch.where(active, box, matched[batch_idx, anchor])
        # discard the pair's column and row; an inactive image discards a padding column already at -1
        # and one anchor row, which can no longer be picked by its (finished) image anyway
        iou[batch_idx, :, box] = torch.where(active[:, None], -1.0, iou[batch_idx, :, box])
        iou[batch_idx, anchor, :] = torch.where(active[:, None], -1.0, iou[batch_idx, anchor, :])
    return matched


def multibox_target(anchors_xyxy: torch.Tensor, targets: torch.Tensor):
    """Training targets for a batch, as the chapter's ``multibox_target``.

    anchors_xyxy: Tensor[A, 4]; targets: Tensor[B, M, 5] rows of (class, x1, y1, x2, y2), class -1 = padding.
    Returns:
        offsets: Tensor[B, A, 4], zero where the anchor is background;
        mask: Tensor[B, A, 4], 1.0 for positive anchors;
        cls: long Tensor[B, A], 0 for background, class + 1 otherwise.
    """
    gt_valid = targets[..., 0] >= 0
    matched = match_anchors(anchors_xyxy, targets[..., 1:], gt_valid)
    positive = matched >= 0
    index = matched.clamp(min=0)
    gathered = torch.gather(targets, 1, index[..., None].expand(-1, -1, 5))  # [B, A, 5]
    cls = torch.where(positive, gathered[..., 0].long() + 1, torch.zeros_like(matched))
    mask = positive[..., None].to(targets.dtype).expand(-1, -1, 4)
    # where, not a product: a padding row could encode to NaN, and NaN * 0 is NaN
    offsets = torch.where(mask.bool(), encode(gathered[..., 1:], anchors_xyxy[None]), 0.0)
    return offsets, mask, cls
