"""TinySSD as in the chapter: five blocks, each with a 3x3 class head and a 3x3 box head."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from pipeline.model.boxes import ANCHOR_RATIOS, ANCHOR_SIZES, anchors_per_location, feature_map_sizes, multibox_prior

BLOCK_CHANNELS = (64, 128, 128, 128, 128)


def down_sample_block(in_channels: int, out_channels: int, replicas: int = 1) -> nn.Sequential:
    """2 x (conv3x3 pad 1, BatchNorm, ReLU), then maxpool 2: halves the side. With ``replicas`` K, K such blocks
    as one: each convolution has groups=K and every layer K times the channels, replica k in the k-th slice."""
    layers: list[nn.Module] = []
    k = replicas
    for _ in range(2):
        layers += [nn.Conv2d(k * in_channels, k * out_channels, 3, padding=1, groups=k),
                   nn.BatchNorm2d(k * out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def base_net(replicas: int = 1) -> nn.Sequential:
    """Three down-sampling blocks 3 -> 16 -> 32 -> 64: 256 -> 32."""
    channels = (3, 16, 32, 64)
    return nn.Sequential(*(down_sample_block(channels[i], channels[i + 1], replicas) for i in range(3)))


def _block(i: int, replicas: int) -> nn.Module:
    if i == 0:
        return base_net(replicas)
    if i == 4:
        return nn.AdaptiveMaxPool2d((1, 1))
    return down_sample_block(64 if i == 1 else 128, 128, replicas)


def _flatten(pred: torch.Tensor, per_anchor: int, replicas: int) -> torch.Tensor:
    """[B, K*a*p, H, W] -> [K, B, H*W*a, p], anchors of one location consecutive as in multibox_prior."""
    batch, _, height, width = pred.shape  # B, K*a*k, H, W
    return (pred.view(batch, replicas, -1, height, width).permute(1, 0, 3, 4, 2)
            .reshape(replicas, batch, -1, per_anchor))


class TinySSD(nn.Module):
    """forward(x) -> (anchors [A, 4] xyxy relative, class logits [B, A, q+1], box offsets [B, A, 4]).

    ``anchor_scale`` multiplies the chapter's anchor sizes (1: the chapter's own anchors). With ``replicas``
    K > 1 it is a pack: K TinySSDs as one network (HFTA's horizontal fusion), replica k's images in input
    channels 3k..3k+2 and its layers in the k-th slice of each; :meth:`forward_pack` returns [K, B, ...].
    The state dict has TinySSD's keys, each tensor K times as long along dim 0."""

    def __init__(self, num_classes: int, anchor_scale: float = 1.0, replicas: int = 1):
        super().__init__()
        self.num_classes, self.anchor_scale, self.replicas = num_classes, anchor_scale, replicas
        a, k = anchors_per_location(), replicas
        self.blocks = nn.ModuleList(_block(i, k) for i in range(5))
        self.cls_heads = nn.ModuleList(nn.Conv2d(k * c, k * a * (num_classes + 1), 3, padding=1, groups=k)
                                       for c in BLOCK_CHANNELS)
        self.box_heads = nn.ModuleList(nn.Conv2d(k * c, k * a * 4, 3, padding=1, groups=k) for c in BLOCK_CHANNELS)
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    def anchors(self, feature_shapes: list[tuple[int, int]], device) -> torch.Tensor:
        key = (tuple(feature_shapes), str(device))
        if key not in self._anchor_cache:  # anchors depend only on the shapes: build once
            self._anchor_cache[key] = torch.cat([
                multibox_prior(h, w, [size * self.anchor_scale for size in sizes], ratios, device)
                for (h, w), sizes, ratios in zip(feature_shapes, ANCHOR_SIZES, ANCHOR_RATIOS)])
        return self._anchor_cache[key]

    def anchors_for_size(self, image_size: int, device=None) -> torch.Tensor:
        """The anchors forward() returns for a square input of side ``image_size``, without running it:
        Tensor[A, 4], xyxy relative (A = 5444 at 256)."""
        return self.anchors([(s, s) for s in feature_map_sizes(image_size)], device)

    def forward_pack(self, x: torch.Tensor):
        """x [B, 3K, H, W] -> (anchors [A, 4], class logits [K, B, A, q+1], box offsets [K, B, A, 4])."""
        cls_preds, box_preds, shapes = [], [], []
        for block, cls_head, box_head in zip(self.blocks, self.cls_heads, self.box_heads):
            x = block(x)
            shapes.append((x.shape[-2], x.shape[-1]))
            cls_preds.append(_flatten(cls_head(x), self.num_classes + 1, self.replicas))
            box_preds.append(_flatten(box_head(x), 4, self.replicas))
        anchors = self.anchors(shapes, x.device)
        return anchors, torch.cat(cls_preds, dim=2), torch.cat(box_preds, dim=2)

    def forward(self, x: torch.Tensor):
        anchors, cls_logits, box_offsets = self.forward_pack(x)
        return (anchors, cls_logits[0], box_offsets[0]) if self.replicas == 1 else (anchors, cls_logits, box_offsets)

    def pack_input(self, images_uint8: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """uint8 [K, B, 3, H, W], replica k's batch at k -> the float input of forward_pack, [B, 3K, H, W]."""
        k, b, c, h, w = images_uint8.shape  # replicas, batch, channels, height, width
        return preprocess(images_uint8.permute(1, 0, 2, 3, 4).reshape(b, k * c, h, w), channels_last,
                          self.cls_heads[0].weight.dtype)

    def replica_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Replica k's weights and BatchNorm statistics, as a one-replica TinySSD's state dict."""
        return {name: value.chunk(self.replicas)[k].clone() if value.dim() else value.clone()
                for name, value in self.state_dict().items()}

    @torch.no_grad()
    def load_replica_state_dicts(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Replica k takes ``states[k]``, a one-replica TinySSD's state dict (see replica_state_dict)."""
        if len(states) != self.replicas:
            raise ValueError(f"{len(states)} replica states for a pack of {self.replicas}")
        for name, value in self.state_dict().items():
            value.copy_(torch.cat([s[name] for s in states]) if value.dim() else states[0][name])


def preprocess(images_uint8: torch.Tensor, channels_last: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, H, W] in [0, 1]; the first BatchNorm absorbs the scale. ``dtype`` is
    the model's (float64 in the exactness tests); bf16 comes from autocast, not from here."""
    x = images_uint8.to(dtype).div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def cpu_computes_bf16(capabilities: dict | None = None) -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16), from torch's own detection."""
    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def warn_if_bf16_is_emulated(precision: str, device: torch.device, capabilities: dict | None = None) -> None:
    """bf16 on a CPU without bf16 arithmetic is emulated: say so before a training that will crawl."""
    if precision == "bf16" and device.type == "cpu" and not cpu_computes_bf16(capabilities):
        warnings.warn("precision=bf16 on a CPU without bf16 arithmetic (neither AVX512-BF16 nor AMX-BF16): torch "
                      "emulates it, and training runs about 10x slower than fp32 (measured on a 2-core Zen 3 EPYC); "
                      "use fp32 here", stacklevel=3)


def autocast(precision: str, device: torch.device, cache: bool = True):
    """bf16 autocast when asked for, else a no-op context. ``cache=False`` inside a CUDA graph capture,
    where autocast's cache of cast weights would hold tensors from the capture's private pool."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)
