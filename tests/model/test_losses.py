import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import RunConfig, make_config
from pipeline.model.losses import box_loss, detection_loss, focal_loss, select_negatives


def chapter_calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks):
    """The chapter's calc_loss, then .mean() as its training loop does."""
    batch_size, num_classes = cls_preds.shape[0], cls_preds.shape[2]
    cls = F.cross_entropy(cls_preds.reshape(-1, num_classes), cls_labels.reshape(-1),
                          reduction="none").reshape(batch_size, -1).mean(dim=1)
    bbox = F.l1_loss(bbox_preds * bbox_masks, bbox_labels * bbox_masks, reduction="none").mean(dim=1)
    return (cls + bbox).mean()


def random_batch(B=3, A=40, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, A, C, generator=g)
    labels = torch.randint(0, C, (B, A), generator=g) * (torch.rand(B, A, generator=g) < 0.2)
    mask = (labels > 0).float()[..., None].expand(-1, -1, 4).contiguous()
    return logits, torch.randn(B, A, 4, generator=g), labels, torch.randn(B, A, 4, generator=g) * mask, mask


def test_default_loss_is_the_chapters_to_the_bit():
    logits, box, labels, target, mask = random_batch()
    ours = detection_loss(logits, box, labels, target, mask, RunConfig())["loss"]
    chapter = chapter_calc_loss(logits, labels, box.reshape(3, -1), target.reshape(3, -1), mask.reshape(3, -1))
    assert torch.equal(ours, chapter)


def chapter_smooth_l1(x, sigma):
    x = x.abs()
    return torch.where(x < 1 / sigma ** 2, (sigma * x) ** 2 / 2, x - 0.5 / sigma ** 2)


@pytest.mark.parametrize("sigma, x, expected", [
    (10.0, 0.005, 0.00125), (10.0, 0.5, 0.495),
    (1.0, 0.5, 0.125), (1.0, 2.0, 1.5),
    (0.5, 1.0, 0.125), (0.5, 5.0, 3.0),
])
def test_smooth_l1_hand_values(sigma, x, expected):
    cfg = make_config("chapter", {"box_loss": "smooth_l1", "smooth_l1_sigma": sigma})
    pred = torch.tensor([[[x, -x, 0.0, 0.0]]])
    out = box_loss(pred, torch.zeros_like(pred), torch.ones_like(pred), cfg)
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([expected, expected]))


@pytest.mark.parametrize("sigma", [10.0, 3.0, 1.0, 0.5])
def test_smooth_l1_is_the_chapters_sigma_form(sigma):
    cfg = make_config("chapter", {"box_loss": "smooth_l1", "smooth_l1_sigma": sigma})
    x = torch.linspace(-6, 6, 1001).reshape(1, -1, 1).expand(-1, -1, 4).contiguous()
    out = box_loss(x, torch.zeros_like(x), torch.ones_like(x), cfg)
    torch.testing.assert_close(out, chapter_smooth_l1(x, sigma))
    torch.testing.assert_close(out, F.smooth_l1_loss(x, torch.zeros_like(x), beta=1 / sigma ** 2, reduction="none"))


def test_box_loss_ignores_negative_anchors():
    pred = torch.full((1, 2, 4), 3.0)
    mask = torch.tensor([[[1.0] * 4, [0.0] * 4]])
    out = box_loss(pred, torch.zeros_like(pred), mask, RunConfig())
    assert out[0, 0].tolist() == [3.0] * 4 and out[0, 1].tolist() == [0.0] * 4


def test_focal_with_gamma_0_and_no_alpha_is_cross_entropy():
    logits, _, labels, _, _ = random_batch()
    torch.testing.assert_close(focal_loss(logits, labels, 0.0, None),
                               F.cross_entropy(logits.permute(0, 2, 1), labels, reduction="none"))


def test_focal_hand_values_gamma_2_alpha_025():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = (0.25, 0.75)
    labels = torch.tensor([1, 0])
    expected = torch.tensor([-0.25 * 0.25 ** 2 * math.log(0.75),  # object: alpha, p_t = 0.75
                             -0.75 * 0.75 ** 2 * math.log(0.25)])  # background: 1 - alpha, p_t = 0.25
    torch.testing.assert_close(focal_loss(logits, labels, 2.0, 0.25), expected)
    # the chapter's form: one global factor, here 1
    torch.testing.assert_close(focal_loss(logits, labels, 2.0, None), expected / torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_gradients_are_finite_as_p_goes_to_1(gamma):
    logits = torch.tensor([[0.0, 60.0], [0.0, 200.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([1, 1]), gamma, 0.25).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_hard_negatives_are_the_highest_loss_ones():
    losses = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0, 2.0],
                           [1.0, 8.0, 7.0, 6.0, 0.5, 2.0],
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    positive = torch.tensor([[True, False, False, False, False, False],
                             [False, True, True, False, False, False],
                             [False] * 6])  # the last image has no positives
    seen = select_negatives(losses, positive, "hard", 2.0)
    assert seen[0].tolist() == [True, False, True, False, True, False]  # negatives with losses 5 and 4
    assert seen[1].tolist() == [True] * 6  # 2 positives -> 4 negatives, and there are only 4
    assert seen[2].tolist() == [False] * 6
    assert select_negatives(losses, positive, "hard", 1.0)[1].tolist() == [False, True, True, True, False, True]


def test_random_negatives_have_exact_counts_and_are_seeded():
    positive = torch.zeros(4, 100, dtype=torch.bool)
    positive[:, :5] = True
    positive[3] = False
    losses = torch.rand(4, 100)
    a = select_negatives(losses, positive, "random", 3.0, torch.Generator().manual_seed(0))
    b = select_negatives(losses, positive, "random", 3.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert (a & ~positive).sum(dim=1).tolist() == [15, 15, 15, 0]
    assert (a & positive).sum() == positive.sum()


def test_image_without_positives_does_not_blow_up():
    logits, box, labels, target, mask = random_batch(B=2)
    labels[1] = 0
    mask[1] = 0
    target[1] = 0
    for strategy in ("hard", "random"):
        for norm in ("anchors", "positives"):
            cfg = make_config("chapter", {"neg_sampling": strategy, "loss_normalization": norm})
            out = detection_loss(logits, box, labels, target, mask, cfg, torch.Generator().manual_seed(0))
            assert all(torch.isfinite(v) for v in out.values())


def test_positives_normalisation_is_sum_over_positives():
    logits, box, labels, target, mask = random_batch()
    cfg = make_config("chapter", {"loss_normalization": "positives", "cls_weight": 2.0, "box_weight": 0.5})
    out = detection_loss(logits, box, labels, target, mask, cfg)
    n_pos = (labels > 0).sum()
    ce = F.cross_entropy(logits.permute(0, 2, 1), labels, reduction="none").sum() / n_pos
    l1 = (box * mask - target).abs().sum() / n_pos
    torch.testing.assert_close(out["loss_cls"], ce)
    torch.testing.assert_close(out["loss_box"], l1)
    torch.testing.assert_close(out["loss"], 2.0 * ce + 0.5 * l1)


def test_negative_sampling_only_drops_negatives_it_does_not_reweight_the_rest():
    """With 'anchors' normalisation the class term stays a mean over ALL anchors: an anchor that is kept
    weighs what it weighs in the chapter's loss, and the box term is untouched."""
    logits, box, labels, target, mask = random_batch(B=2, A=40)
    chapter = detection_loss(logits, box, labels, target, mask, make_config("chapter"))
    hard = detection_loss(logits, box, labels, target, mask, make_config("chapter", {"neg_sampling": "hard"}))
    ce = F.cross_entropy(logits.permute(0, 2, 1), labels, reduction="none")  # [B, A]
    seen = select_negatives(ce, labels > 0, "hard", 3.0)
    torch.testing.assert_close(hard["loss_cls"], (ce * seen).sum(dim=1).div(40).mean())
    torch.testing.assert_close(hard["loss_box"], chapter["loss_box"])
    dropped = (ce * ~seen).sum(dim=1).div(40).mean()  # what the chapter's loss has and the sampled one leaves out
    torch.testing.assert_close(chapter["loss_cls"] - hard["loss_cls"], dropped)
