"""TinySSD as in the chapter: five blocks, each with a 3x3 class head and a 3x3 box head."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.boxes import ANCHOR_RATIOS, ANCHOR_SIZES, anchors_per_location, multibox_prior

BLOCK_CHANNELS = (64, 128, 128, 128, 128)


def down_sample_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """2 x (conv3x3 pad 1, BatchNorm, ReLU), then maxpool 2: halves the side."""
    layers: list[nn.Module] = []
    for _ in range(2):
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def base_net() -> nn.Sequential:
    """Three down-sampling blocks 3 -> 16 -> 32 -> 64: 256 -> 32."""
    channels = (3, 16, 32, 64)
    return nn.Sequential(*(down_sample_block(channels[i], channels[i + 1]) for i in range(3)))


def _block(i: int) -> nn.Module:
    if i == 0:
        return base_net()
    if i == 4:
        return nn.AdaptiveMaxPool2d((1, 1))
    return down_sample_block(64 if i == 1 else 128, 128)


def _flatten(pred: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """[B, a*k, H, W] -> [B, H*W*a, k], anchors of one location consecutive as in multibox_prior."""
    batch = pred.shape[0]  # B
    return pred.permute(0, 2, 3, 1).reshape(batch, -1, per_anchor)


class TinySSD(nn.Module):
    """forward(x) -> (anchors [A, 4] xyxy relative, class logits [B, A, q+1], box offsets [B, A, 4]).

    ``anchor_scale`` multiplies the chapter's anchor sizes (1: the chapter's own anchors)."""

    def __init__(self, num_classes: int, anchor_scale: float = 1.0):
        super().__init__()
        self.num_classes, self.anchor_scale = num_classes, anchor_scale
        a = anchors_per_location()
        self.blocks = nn.ModuleList(_block(i) for i in range(5))
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, a * (num_classes + 1), 3, padding=1) for c in BLOCK_CHANNELS)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c in BLOCK_CHANNELS)
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    def anchors(self, feature_shapes: list[tuple[int, int]], device) -> torch.Tensor:
        key = (tuple(feature_shapes), str(device))
        if key not in self._anchor_cache:  # anchors depend only on the shapes: build once
            self._anchor_cache[key] = torch.cat([
                multibox_prior(h, w, [size * self.anchor_scale for size in sizes], ratios, device)
                for (h, w), sizes, ratios in zip(feature_shapes, ANCHOR_SIZES, ANCHOR_RATIOS)])
        return self._anchor_cache[key]

    def forward(self, x: torch.Tensor):
        cls_preds, box_preds, shapes = [], [], []
        for block, cls_head, box_head in zip(self.blocks, self.cls_heads, self.box_heads):
            x = block(x)
            shapes.append((x.shape[-2], x.shape[-1]))
            cls_preds.append(_flatten(cls_head(x), self.num_classes + 1))
            box_preds.append(_flatten(box_head(x), 4))
        anchors = self.anchors(shapes, x.device)
        return anchors, torch.cat(cls_preds, dim=1), torch.cat(box_preds, dim=1)


def preprocess(images_uint8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, H, W] in [0, 1]; the first BatchNorm absorbs the scale."""
    x = images_uint8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(precision: str, device: torch.device, cache: bool = True):
    """bf16 autocast when asked for, else a no-op context. ``cache=False`` inside a CUDA graph capture,
    where autocast's cache of cast weights would hold tensors from the capture's private pool."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)
