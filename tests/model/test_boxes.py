import math

import torch
from torchvision.ops import box_iou

from pipeline.model.boxes import decode, encode, match_anchors, multibox_prior, multibox_target
from pipeline.model.tinyssd import TinySSD

S2 = math.sqrt(2)


def test_anchors_of_a_1x1_map_match_the_chapter():
    anchors = multibox_prior(1, 1, (0.2, 0.272), (1, 2, 0.5))
    expected = torch.tensor([
        [0.4, 0.4, 0.6, 0.6],
        [0.364, 0.364, 0.636, 0.636],
        [0.5 - 0.1 * S2, 0.5 - 0.05 * S2, 0.5 + 0.1 * S2, 0.5 + 0.05 * S2],
        [0.5 - 0.05 * S2, 0.5 - 0.1 * S2, 0.5 + 0.05 * S2, 0.5 + 0.1 * S2],
    ])
    torch.testing.assert_close(anchors, expected)


def test_anchors_of_a_2x2_map_go_row_by_row():
    anchors = multibox_prior(2, 2, (0.5,), (1,))
    expected = torch.tensor([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]])
    torch.testing.assert_close(anchors, expected)


def test_anchor_counts_follow_the_feature_maps():
    model = TinySSD(1)
    assert model.anchors_for_size(256).shape == (5444, 4)
    assert model.anchors_for_size(512).shape == ((64 ** 2 + 32 ** 2 + 16 ** 2 + 8 ** 2 + 1) * 4, 4) == (21764, 4)
    assert model.anchors_for_size(320).shape == (8504, 4)


def test_decode_inverts_encode():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 0.7
    boxes = torch.cat([xy, xy + 0.05 + torch.rand(50, 2, generator=g) * 0.25], dim=1)
    anchors = TinySSD(1).anchors_for_size(256)[:50]
    torch.testing.assert_close(decode(encode(boxes, anchors), anchors), boxes, atol=1e-5, rtol=1e-5)


def test_encode_uses_factors_10_10_5_5():
    anchor = torch.tensor([[0.0, 0.0, 0.2, 0.2]])
    box = torch.tensor([[0.02, 0.0, 0.22, 0.4]])  # centre x +0.02, height doubled
    expected = torch.tensor([[10 * 0.02 / 0.2, 10 * 0.1 / 0.2, 5 * math.log(1e-6 + 1.0), 5 * math.log(1e-6 + 2.0)]])
    torch.testing.assert_close(encode(box, anchor), expected)


def test_matching_on_a_hand_made_case():
    anchors = torch.tensor([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1],
                            [.1, .1, .45, .45], [0, 0, .45, .5]])
    gt = torch.tensor([[[0, 0, .5, .5], [.6, .6, .7, .7], [0, 0, 0, 0]]])
    valid = torch.tensor([[True, True, False]])
    # box 1 is tiny: its best IoU (0.04, anchor 3) is far below 0.5 but it must still get that anchor;
    # anchor 4 has IoU 0.49 with box 0 (background); anchor 5 has 0.9 (matched by threshold); the padding row takes nothing
    assert match_anchors(anchors, gt, valid).tolist() == [[0, -1, -1, 1, -1, 0]]


def chapter_assign_anchor_to_bbox(ground_truth, anchors, iou_threshold=0.5):
    """The chapter's per-image loop, verbatim in substance: the reference for the batched version."""
    num_anchors, num_gt_boxes = anchors.shape[0], ground_truth.shape[0]
    jaccard = box_iou(anchors, ground_truth)
    anchors_bbox_map = torch.full((num_anchors,), -1, dtype=torch.long)
    max_ious, indices = torch.max(jaccard, dim=1)
    anc_i = torch.nonzero(max_ious >= iou_threshold).reshape(-1)
    anchors_bbox_map[anc_i] = indices[max_ious >= iou_threshold]
    for _ in range(num_gt_boxes):
        max_idx = torch.argmax(jaccard)
        box_idx, anc_idx = (max_idx % num_gt_boxes).long(), (max_idx // num_gt_boxes).long()
        anchors_bbox_map[anc_idx] = box_idx
        jaccard[:, box_idx] = -1
        jaccard[anc_idx, :] = -1
    return anchors_bbox_map


def test_batched_matching_equals_the_chapters_per_image_loop():
    g = torch.Generator().manual_seed(1)
    anchors = TinySSD(1).anchors_for_size(128)
    B, M = 6, 5
    xy = torch.rand(B, M, 2, generator=g) * 0.8
    boxes = torch.cat([xy, xy + 0.02 + torch.rand(B, M, 2, generator=g) * 0.2], dim=-1).clamp(max=1)
    n_valid = torch.tensor([5, 1, 3, 0, 2, 4])
    valid = torch.arange(M)[None] < n_valid[:, None]
    batched = match_anchors(anchors, boxes, valid)
    for b in range(B):
        if n_valid[b] == 0:
            assert (batched[b] == -1).all()
            continue
        assert torch.equal(batched[b], chapter_assign_anchor_to_bbox(boxes[b, :n_valid[b]], anchors))


def test_targets_are_masked_offsets_and_shifted_classes():
    anchors = TinySSD(1).anchors_for_size(64)
    targets = torch.tensor([[[2, .1, .1, .5, .6], [-1, 0, 0, 0, 0]]])
    offsets, mask, cls = multibox_target(anchors, targets)
    positive = cls[0] > 0
    assert positive.any() and set(cls[0][positive].tolist()) == {3}
    assert torch.equal(mask[0, :, 0], positive.float())
    assert (offsets[0][~positive] == 0).all() and torch.isfinite(offsets).all()
    decoded = decode(offsets[0][positive], anchors[positive])
    torch.testing.assert_close(decoded, targets[0, :1, 1:].expand_as(decoded), atol=1e-5, rtol=0)
