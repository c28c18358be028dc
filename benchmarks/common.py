"""What the benchmark scripts share: the random input batch, device sync and name, and their usage checks.

Every script puts the repository root on ``sys.path`` before it imports this module.
"""

from __future__ import annotations

import argparse

import torch


def make_batch(batch: int, size: int, boxes: int, seed: int = 0):
    """Random uint8 images [B, 3, S, S] and targets [B, boxes, 5]: class 0, xyxy relative, all real boxes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    wh = 0.1 + 0.3 * torch.rand(batch, boxes, 2, generator=g)
    xy = torch.rand(batch, boxes, 2, generator=g) * (1 - wh)
    targets = torch.cat([torch.zeros(batch, boxes, 1), xy, xy + wh], dim=-1)
    return images, targets


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timing around it covers that work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_name(device: str) -> str | None:
    return torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None


def whole_numbers(p: argparse.ArgumentParser, text: str, flag: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], or the parser's usage error naming ``flag``."""
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        p.error(f"{flag} takes comma-separated whole numbers, e.g. 1,2,4")


def check_size_and_device(p: argparse.ArgumentParser, args) -> None:
    """Usage errors every benchmark script shares: an input TinySSD cannot take, a CUDA device torch cannot see."""
    if args.image_size % 64 or args.image_size < 64:
        p.error("--image-size must be a positive multiple of 64")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
