"""Drawing boxes on images and saving image grids (torchvision.utils + PIL)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, make_grid

from pipeline.data import DetectionData

# Distinct, readable on most backgrounds; class k gets PALETTE[k % len(PALETTE)].
PALETTE = ["#ff1f1f", "#1fa2ff", "#39e639", "#ff9f1a", "#d21fff", "#00e5d4", "#ffffff", "#ffe01a"]


def draw_detections(image: torch.Tensor, boxes_xyxy: torch.Tensor, labels: list[str], colors=None,
                    scores=None) -> torch.Tensor:
    """Boxes with "label score" captions drawn on a copy of an image.

    image: uint8 [3, H, W]. boxes_xyxy: [K, 4] in pixels of that image. labels: K names.
    colors: one color or K colors (names, "#rrggbb" or RGB tuples); default one per label.
    scores: optional [K] floats, appended to the captions. Returns uint8 [3, H, W].
    """
    boxes_xyxy = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    if len(boxes_xyxy) == 0:
        return image.clone()
    captions = list(labels)
    if scores is not None:
        captions = [f"{name} {float(s):.2f}" for name, s in zip(captions, scores)]
    if colors is None:
        names = sorted(set(labels))
        colors = [PALETTE[names.index(name) % len(PALETTE)] for name in labels]
    # Keep boxes on the canvas so a box that pokes out is still drawn.
    h, w = image.shape[-2:]
    boxes_xyxy = boxes_xyxy.clone()
    boxes_xyxy[:, 0::2] = boxes_xyxy[:, 0::2].clamp(0, w - 1)
    boxes_xyxy[:, 1::2] = boxes_xyxy[:, 1::2].clamp(0, h - 1)
    width = max(1, round(min(h, w) / 128))
    return draw_bounding_boxes(image, boxes_xyxy, labels=captions, colors=colors, width=width)


def save_grid(images: list[torch.Tensor], path: Path, ncol: int = 4) -> Path:
    """Tile uint8 [3, H, W] images (all the same size) into one PNG at path; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(torch.stack(images), nrow=ncol, padding=2, pad_value=255)  # uint8 [3, H', W']
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def preview(data: DetectionData, path: Path, n: int = 16) -> Path:
    """The ground-truth boxes of the first n images drawn, one color per class, as one PNG."""
    tiles = []
    for image, rows in zip(data.images[:n], data.targets[:n]):
        rows = rows[rows[:, 0] >= 0]
        size = torch.tensor([image.shape[2], image.shape[1]] * 2, dtype=torch.float32)  # W, H, W, H
        classes = rows[:, 0].long().tolist()
        labels = [data.class_names[c] for c in classes]
        colors = [PALETTE[c % len(PALETTE)] for c in classes]
        tiles.append(draw_detections(image, rows[:, 1:] * size, labels, colors=colors))
    return save_grid(tiles, path, ncol=min(4, max(1, len(tiles))))
