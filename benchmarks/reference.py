"""The D2L chapter's reference implementation, the baseline that benchmarks/run.py measures against.

Source: Dive into Deep Learning (d2l.ai), PyTorch version, chapter "Computer Vision",
sections 14.4 "Anchor Boxes" (multibox_prior, box_iou, assign_anchor_to_bbox, offset_boxes,
multibox_target, offset_inverse, nms, multibox_detection) and 14.7 "Single Shot Multibox
Detection" (TinySSD and its pieces, calc_loss, the training step). The code below is that code,
verbatim in substance: same operations in the same order, per-image Python loops, the
while-loop NMS with argsort over all anchors, an fp32 contiguous model; only comments,
names of locals and line breaks differ.

If the ``d2l`` package is importable, the box functions are taken from ``d2l.torch`` instead
(``USING_D2L`` says which). TinySSD and calc_loss live only in the chapter's text, not in the
package, so they are always the copies here.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F  # noqa: F401  (kept for parity with the chapter's imports)

# --------------------------------------------------------------------------------------------
# Anchor Boxes (d2l 14.4)
# --------------------------------------------------------------------------------------------


def box_corner_to_center(boxes):
    """(x1, y1, x2, y2) -> (cx, cy, w, h), d2l 14.3."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    cx = (x1 + x2) / 2
    cy = (y1 + y2) / 2
    w = x2 - x1
    h = y2 - y1
    return torch.stack((cx, cy, w, h), axis=-1)


def box_center_to_corner(boxes):
    """(cx, cy, w, h) -> (x1, y1, x2, y2), d2l 14.3."""
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    x1 = cx - 0.5 * w
    y1 = cy - 0.5 * h
    x2 = cx + 0.5 * w
    y2 = cy + 0.5 * h
    return torch.stack((x1, y1, x2, y2), axis=-1)


def multibox_prior(data, sizes, ratios):
    """Anchor boxes of different shapes centred on each pixel of ``data`` ([B, C, H, W]) -> [1, A, 4]."""
    in_height, in_width = data.shape[-2:]
    device, num_sizes, num_ratios = data.device, len(sizes), len(ratios)
    boxes_per_pixel = num_sizes + num_ratios - 1
    size_tensor = torch.tensor(sizes, device=device)
    ratio_tensor = torch.tensor(ratios, device=device)
    offset_h, offset_w = 0.5, 0.5
    steps_h = 1.0 / in_height
    steps_w = 1.0 / in_width
    center_h = (torch.arange(in_height, device=device) + offset_h) * steps_h
    center_w = (torch.arange(in_width, device=device) + offset_w) * steps_w
    shift_y, shift_x = torch.meshgrid(center_h, center_w, indexing="ij")
    shift_y, shift_x = shift_y.reshape(-1), shift_x.reshape(-1)
    w = torch.cat((size_tensor * torch.sqrt(ratio_tensor[0]),
                   sizes[0] * torch.sqrt(ratio_tensor[1:]))) * in_height / in_width
    h = torch.cat((size_tensor / torch.sqrt(ratio_tensor[0]),
                   sizes[0] / torch.sqrt(ratio_tensor[1:])))
    anchor_manipulations = torch.stack((-w, -h, w, h)).T.repeat(in_height * in_width, 1) / 2
    out_grid = torch.stack([shift_x, shift_y, shift_x, shift_y],
                           dim=1).repeat_interleave(boxes_per_pixel, dim=0)
    output = out_grid + anchor_manipulations
    return output.unsqueeze(0)


def box_iou(boxes1, boxes2):
    """Pairwise IoU of two lists of xyxy boxes: [N, 4], [M, 4] -> [N, M] (the chapter's, not torchvision's)."""
    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    areas1 = box_area(boxes1)
    areas2 = box_area(boxes2)
    inter_upperlefts = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    inter_lowerrights = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    inters = (inter_lowerrights - inter_upperlefts).clamp(min=0)
    inter_areas = inters[:, :, 0] * inters[:, :, 1]
    union_areas = areas1[:, None] + areas2 - inter_areas
    return inter_areas / union_areas


def assign_anchor_to_bbox(ground_truth, anchors, device, iou_threshold=0.5):
    """Index of the ground-truth box assigned to each anchor ([A], -1 = none), for one image."""
    num_anchors, num_gt_boxes = anchors.shape[0], ground_truth.shape[0]
    jaccard = box_iou(anchors, ground_truth)
    anchors_bbox_map = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
    max_ious, indices = torch.max(jaccard, dim=1)
    anc_i = torch.nonzero(max_ious >= iou_threshold).reshape(-1)
    box_j = indices[max_ious >= iou_threshold]
    anchors_bbox_map[anc_i] = box_j
    col_discard = torch.full((num_anchors,), -1)
    row_discard = torch.full((num_gt_boxes,), -1)
    for _ in range(num_gt_boxes):
        max_idx = torch.argmax(jaccard)
        box_idx = (max_idx % num_gt_boxes).long()
        anc_idx = (max_idx / num_gt_boxes).long()
        anchors_bbox_map[anc_idx] = box_idx
        jaccard[:, box_idx] = col_discard
        jaccard[anc_idx, :] = row_discard
    return anchors_bbox_map


def offset_boxes(anchors, assigned_bb, eps=1e-6):
    """Offsets of assigned boxes from anchors, factors (10, 10, 5, 5)."""
    c_anc = box_corner_to_center(anchors)
    c_assigned_bb = box_corner_to_center(assigned_bb)
    offset_xy = 10 * (c_assigned_bb[:, :2] - c_anc[:, :2]) / c_anc[:, 2:]
    offset_wh = 5 * torch.log(eps + c_assigned_bb[:, 2:] / c_anc[:, 2:])
    offset = torch.cat([offset_xy, offset_wh], axis=1)
    return offset


def multibox_target(anchors, labels):
    """Label anchors with ground truth, one image at a time.

    anchors: [1, A, 4]; labels: [B, M, 5] rows (class, x1, y1, x2, y2), all rows real boxes.
    Returns (bbox_offset [B, A*4], bbox_mask [B, A*4], class_labels [B, A]).
    """
    batch_size, anchors = labels.shape[0], anchors.squeeze(0)
    batch_offset, batch_mask, batch_class_labels = [], [], []
    device, num_anchors = anchors.device, anchors.shape[0]
    for i in range(batch_size):
        label = labels[i, :, :]
        anchors_bbox_map = assign_anchor_to_bbox(label[:, 1:], anchors, device)
        bbox_mask = ((anchors_bbox_map >= 0).float().unsqueeze(-1)).repeat(1, 4)
        class_labels = torch.zeros(num_anchors, dtype=torch.long, device=device)
        assigned_bb = torch.zeros((num_anchors, 4), dtype=torch.float32, device=device)
        indices_true = torch.nonzero(anchors_bbox_map >= 0)
        bb_idx = anchors_bbox_map[indices_true]
        class_labels[indices_true] = label[bb_idx, 0].long() + 1
        assigned_bb[indices_true] = label[bb_idx, 1:]
        offset = offset_boxes(anchors, assigned_bb) * bbox_mask
        batch_offset.append(offset.reshape(-1))
        batch_mask.append(bbox_mask.reshape(-1))
        batch_class_labels.append(class_labels)
    bbox_offset = torch.stack(batch_offset)
    bbox_mask = torch.stack(batch_mask)
    class_labels = torch.stack(batch_class_labels)
    return bbox_offset, bbox_mask, class_labels


def offset_inverse(anchors, offset_preds):
    """Boxes (xyxy) from anchors and predicted offsets."""
    anc = box_corner_to_center(anchors)
    pred_bbox_xy = (offset_preds[:, :2] * anc[:, 2:] / 10) + anc[:, :2]
    pred_bbox_wh = torch.exp(offset_preds[:, 2:] / 5) * anc[:, 2:]
    pred_bbox = torch.cat((pred_bbox_xy, pred_bbox_wh), axis=1)
    predicted_bbox = box_center_to_corner(pred_bbox)
    return predicted_bbox


def nms(boxes, scores, iou_threshold):
    """Greedy NMS, a Python while loop over the boxes sorted by score: indices kept."""
    B = torch.argsort(scores, dim=-1, descending=True)
    keep = []
    while B.numel() > 0:
        i = B[0]
        keep.append(i)
        if B.numel() == 1:
            break
        iou = box_iou(boxes[i, :].reshape(-1, 4), boxes[B[1:], :].reshape(-1, 4)).reshape(-1)
        inds = torch.nonzero(iou <= iou_threshold).reshape(-1)
        B = B[inds + 1]
    return torch.tensor(keep, device=boxes.device)


def multibox_detection(cls_probs, offset_preds, anchors, nms_threshold=0.5, pos_threshold=0.009999999):
    """Detections per image with NMS.

    cls_probs: [B, q+1, A] (softmax over classes); offset_preds: [B, A*4]; anchors: [1, A, 4].
    Returns [B, A, 6] rows (class id or -1, confidence, x1, y1, x2, y2), kept boxes first in score order.
    """
    device, batch_size = cls_probs.device, cls_probs.shape[0]
    anchors = anchors.squeeze(0)
    num_classes, num_anchors = cls_probs.shape[1], cls_probs.shape[2]  # noqa: F841 (as in the chapter)
    out = []
    for i in range(batch_size):
        cls_prob, offset_pred = cls_probs[i], offset_preds[i].reshape(-1, 4)
        conf, class_id = torch.max(cls_prob[1:], 0)
        predicted_bb = offset_inverse(anchors, offset_pred)
        keep = nms(predicted_bb, conf, nms_threshold)
        all_idx = torch.arange(num_anchors, dtype=torch.long, device=device)
        combined = torch.cat((keep, all_idx))
        uniques, counts = combined.unique(return_counts=True)
        non_keep = uniques[counts == 1]
        all_id_sorted = torch.cat((keep, non_keep))
        class_id[non_keep] = -1
        class_id = class_id[all_id_sorted]
        conf, predicted_bb = conf[all_id_sorted], predicted_bb[all_id_sorted]
        below_min_idx = conf < pos_threshold
        class_id[below_min_idx] = -1
        conf[below_min_idx] = 1 - conf[below_min_idx]
        pred_info = torch.cat((class_id.unsqueeze(1), conf.unsqueeze(1), predicted_bb), dim=1)
        out.append(pred_info)
    return torch.stack(out)


USING_D2L = False
try:  # the real package, when it is installed, replaces the copies above
    from d2l import torch as _d2l

    box_corner_to_center = _d2l.box_corner_to_center  # noqa: F811
    box_center_to_corner = _d2l.box_center_to_corner  # noqa: F811
    multibox_prior = _d2l.multibox_prior  # noqa: F811
    box_iou = _d2l.box_iou  # noqa: F811
    assign_anchor_to_bbox = _d2l.assign_anchor_to_bbox  # noqa: F811
    offset_boxes = _d2l.offset_boxes  # noqa: F811
    multibox_target = _d2l.multibox_target  # noqa: F811
    offset_inverse = _d2l.offset_inverse  # noqa: F811
    nms = _d2l.nms  # noqa: F811
    multibox_detection = _d2l.multibox_detection  # noqa: F811
    USING_D2L = True
except Exception:  # not installed (or its heavy imports fail): the copies above are the reference
    pass

# --------------------------------------------------------------------------------------------
# Single Shot Multibox Detection (d2l 14.7)
# --------------------------------------------------------------------------------------------


def cls_predictor(num_inputs, num_anchors, num_classes):
    return nn.Conv2d(num_inputs, num_anchors * (num_classes + 1), kernel_size=3, padding=1)


def bbox_predictor(num_inputs, num_anchors):
    return nn.Conv2d(num_inputs, num_anchors * 4, kernel_size=3, padding=1)


def flatten_pred(pred):
    return torch.flatten(pred.permute(0, 2, 3, 1), start_dim=1)


def concat_preds(preds):
    return torch.cat([flatten_pred(p) for p in preds], dim=1)


def down_sample_blk(in_channels, out_channels):
    blk = []
    for _ in range(2):
        blk.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        blk.append(nn.BatchNorm2d(out_channels))
        blk.append(nn.ReLU())
        in_channels = out_channels
    blk.append(nn.MaxPool2d(2))
    return nn.Sequential(*blk)


def base_net():
    blk = []
    num_filters = [3, 16, 32, 64]
    for i in range(len(num_filters) - 1):
        blk.append(down_sample_blk(num_filters[i], num_filters[i + 1]))
    return nn.Sequential(*blk)


def get_blk(i):
    if i == 0:
        blk = base_net()
    elif i == 1:
        blk = down_sample_blk(64, 128)
    elif i == 4:
        blk = nn.AdaptiveMaxPool2d((1, 1))
    else:
        blk = down_sample_blk(128, 128)
    return blk


def blk_forward(X, blk, size, ratio, cls_predictor, bbox_predictor):
    Y = blk(X)
    anchors = multibox_prior(Y, sizes=size, ratios=ratio)
    cls_preds = cls_predictor(Y)
    bbox_preds = bbox_predictor(Y)
    return (Y, anchors, cls_preds, bbox_preds)


sizes = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
ratios = [[1, 2, 0.5]] * 5
num_anchors = len(sizes[0]) + len(ratios[0]) - 1


class TinySSD(nn.Module):
    """The chapter's TinySSD: forward(X) -> (anchors [1, A, 4], cls_preds [B, A, q+1], bbox_preds [B, A*4])."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        idx_to_in_channels = [64, 128, 128, 128, 128]
        for i in range(5):
            setattr(self, f"blk_{i}", get_blk(i))
            setattr(self, f"cls_{i}", cls_predictor(idx_to_in_channels[i], num_anchors, num_classes))
            setattr(self, f"bbox_{i}", bbox_predictor(idx_to_in_channels[i], num_anchors))

    def forward(self, X):
        anchors, cls_preds, bbox_preds = [None] * 5, [None] * 5, [None] * 5
        for i in range(5):
            X, anchors[i], cls_preds[i], bbox_preds[i] = blk_forward(
                X, getattr(self, f"blk_{i}"), sizes[i], ratios[i],
                getattr(self, f"cls_{i}"), getattr(self, f"bbox_{i}"))
        anchors = torch.cat(anchors, dim=1)
        cls_preds = concat_preds(cls_preds)
        cls_preds = cls_preds.reshape(cls_preds.shape[0], -1, self.num_classes + 1)
        bbox_preds = concat_preds(bbox_preds)
        return anchors, cls_preds, bbox_preds


cls_loss = nn.CrossEntropyLoss(reduction="none")
bbox_loss = nn.L1Loss(reduction="none")


def calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks):
    """Per-image loss: mean CE over anchors + mean masked L1 over anchor coordinates."""
    batch_size, num_classes = cls_preds.shape[0], cls_preds.shape[2]
    cls = cls_loss(cls_preds.reshape(-1, num_classes), cls_labels.reshape(-1)).reshape(batch_size, -1).mean(dim=1)
    bbox = bbox_loss(bbox_preds * bbox_masks, bbox_labels * bbox_masks).mean(dim=1)
    return cls + bbox


def make_trainer(net):
    """The chapter's optimiser: SGD, lr 0.2, weight decay 5e-4."""
    return torch.optim.SGD(net.parameters(), lr=0.2, weight_decay=5e-4)


def train_step(net, trainer, features, target):
    """One step of the chapter's training loop (its metric bookkeeping left out).

    features: float [B, 3, H, W] as the chapter's banana loader yields them (pixel values 0..255);
    target: [B, M, 5]. Returns the loss tensor (sum over the batch of per-image losses, un-synced).
    """
    return _step(net, trainer, features, target)[0]


def _step(net, trainer, features, target):
    """The loop body's training part: (loss, cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks)."""
    trainer.zero_grad()
    anchors, cls_preds, bbox_preds = net(features)
    bbox_labels, bbox_masks, cls_labels = multibox_target(anchors, target)
    l = calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks)  # noqa: E741
    l.mean().backward()
    trainer.step()
    return l, cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks


# --------------------------------------------------------------------------------------------
# The chapter's own speed figure
# --------------------------------------------------------------------------------------------


def cls_eval(cls_preds, cls_labels):
    """Correct class predictions, as a Python float (a host sync), d2l 14.7."""
    return float((cls_preds.argmax(dim=-1).type(cls_labels.dtype) == cls_labels).sum())


def bbox_eval(bbox_preds, bbox_labels, bbox_masks):
    """Sum of absolute offset errors over the matched anchors, as a Python float, d2l 14.7."""
    return float((torch.abs((bbox_labels - bbox_preds) * bbox_masks)).sum())


def timed_iteration(net, trainer, features, target):
    """One iteration of the chapter's loop, exactly the part between its ``timer.start()`` and the next.

    The chapter prints ``len(train_iter.dataset) / timer.stop()`` as "examples/sec". d2l's
    ``Timer.stop()`` returns the LAST interval only: the time from the start of the last batch to
    the end of the epoch. So the figure is the data set's size (1000) over the time of one
    iteration on the last, short batch (1000 = 31 x 32 + 8: a batch of 8), plus the end-of-epoch
    bookkeeping and the Animator's redraw of the plot (not included here). It is not a throughput.
    Returns the four metric sums the chapter accumulates.
    """
    _, cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks = _step(net, trainer, features, target)
    with warnings.catch_warnings():  # bbox_eval calls float() on a tensor that requires grad, as the chapter does
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        return (cls_eval(cls_preds, cls_labels), cls_labels.numel(),
                bbox_eval(bbox_preds, bbox_labels, bbox_masks), bbox_labels.numel())
