"""The pack's loss: K replicas with their own knobs give, in float64, what detection_loss gives each alone."""

import pytest
import torch

from pipeline.config import RunConfig
from pipeline.model.losses import LossKnobs, detection_loss, draw_negative_scores, pack_loss

MIXED = [RunConfig(),  # the chapter
         RunConfig(cls_loss="focal", focal_gamma=2.0, focal_alpha=0.25, box_loss="smooth_l1", smooth_l1_sigma=3.0),
         RunConfig(cls_loss="focal", focal_gamma=0.5, neg_sampling="hard", neg_pos_ratio=3.0, box_weight=2.0),
         RunConfig(neg_sampling="random", neg_pos_ratio=1.0, loss_normalization="positives", cls_weight=0.5),
         RunConfig(box_loss="smooth_l1", smooth_l1_sigma=0.5, loss_normalization="positives")]


def replica_batches(K, B=3, A=50, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, B, A, C, generator=g, dtype=torch.float64)
    labels = torch.randint(1, C, (K, B, A), generator=g) * (torch.rand(K, B, A, generator=g) < 0.15)
    mask = (labels > 0).double()[..., None].expand(-1, -1, -1, 4).contiguous()
    offsets = torch.randn(K, B, A, 4, generator=g, dtype=torch.float64)
    targets = torch.randn(K, B, A, 4, generator=g, dtype=torch.float64) * mask
    return logits, offsets, labels, targets, mask


def float64(configs) -> LossKnobs:
    return LossKnobs.of(configs, "cpu", torch.float64)


@pytest.mark.parametrize("configs", [MIXED, [RunConfig()] * 3, [MIXED[1]] * 2], ids=["mixed", "chapter", "focal"])
def test_a_pack_of_knobs_is_each_replica_alone_in_float64(configs):
    K = len(configs)
    logits, offsets, labels, targets, mask = replica_batches(K)
    logits.requires_grad_(), offsets.requires_grad_()
    draws = draw_negative_scores([torch.Generator().manual_seed(10 + k) for k in range(K)],
                                 [c.neg_sampling == "random" for c in configs], *labels.shape[1:])
    packed = pack_loss(logits, offsets, labels, targets, mask, float64(configs), draws)
    packed["loss"].sum().backward()
    for k, cfg in enumerate(configs):
        alone_logits, alone_offsets = logits[k].detach().requires_grad_(), offsets[k].detach().requires_grad_()
        alone = detection_loss(alone_logits, alone_offsets, labels[k], targets[k], mask[k], cfg,
                               torch.Generator().manual_seed(10 + k))
        alone["loss"].backward()
        for key in ("loss", "loss_cls", "loss_box"):
            torch.testing.assert_close(packed[key][k], alone[key].double(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logits.grad[k], alone_logits.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(offsets.grad[k], alone_offsets.grad, rtol=1e-12, atol=1e-12)


def test_only_a_random_replica_draws_from_its_generator():
    logits, offsets, labels, targets, mask = replica_batches(2)
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    draws = draw_negative_scores(generators, [False, True], *labels.shape[1:])
    assert torch.equal(draws[0], torch.zeros_like(draws[0]))
    assert torch.equal(generators[0].get_state(), torch.Generator().manual_seed(1).get_state())
    assert not torch.equal(generators[1].get_state(), torch.Generator().manual_seed(2).get_state())
    assert torch.equal(draws[1], torch.rand(labels.shape[1:], generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="samples its negatives at random: pass its draws"):
        pack_loss(logits, offsets, labels, targets, mask, float64([MIXED[0], MIXED[3]]))


def test_a_pack_of_one_with_the_chapters_knobs_is_the_chapters_loss_to_the_bit():
    from test_losses import chapter_calc_loss, random_batch

    logits, box, labels, target, mask = random_batch()
    ours = pack_loss(logits[None], box[None], labels[None], target[None], mask[None], LossKnobs.of([RunConfig()], "cpu"))
    chapter = chapter_calc_loss(logits, labels, box.reshape(3, -1), target.reshape(3, -1), mask.reshape(3, -1))
    assert torch.equal(ours["loss"][0], chapter)
