"""Using a trained checkpoint: COCO metrics on a data set, and boxes drawn on one image."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor, resize

from pipeline.checkpoint import load_checkpoint
from pipeline.data import DataError, load_split, to_coco_dict
from pipeline.evaluate import CocoResult, coco_evaluate, predict_with_config, to_coco_results
from pipeline.train import resolve_device
from pipeline.visualize import draw_detections, save_grid


def evaluate_checkpoint(checkpoint: Path, dataset: str | None = None, split: str = "val",
                        detections_out: Path | None = None, device: str = "auto",
                        progress: bool = True) -> CocoResult:
    """COCO metrics of a checkpoint on ``split`` of ``dataset`` (default: the one it was trained on)."""
    dev = resolve_device(device)
    model, cfg, class_names, _ = load_checkpoint(checkpoint, dev)
    data = load_split(dataset or cfg.dataset, split, cfg.image_size, progress=progress)
    if data.class_names != class_names:
        raise DataError(f"{dataset or cfg.dataset}: classes {data.class_names} differ from the checkpoint's {class_names}")
    detections = predict_with_config(model, data.images, dev, cfg)
    results = to_coco_results(detections, data.orig_sizes)
    if detections_out is not None:
        Path(detections_out).parent.mkdir(parents=True, exist_ok=True)
        Path(detections_out).write_text(json.dumps(results))
    return coco_evaluate(to_coco_dict(data), results)


def read_image(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] from any image file PIL reads."""
    try:
        with Image.open(path) as img:
            return pil_to_tensor(img.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from exc


def predict_image(checkpoint: Path, image_path: Path, out: Path, threshold: float = 0.5,
                  device: str = "auto") -> list[dict]:
    """Draw the detections scoring >= threshold on the original image; returns them in pixels."""
    dev = resolve_device(device)
    model, cfg, class_names, _ = load_checkpoint(checkpoint, dev)
    original = read_image(image_path)
    h, w = original.shape[-2:]
    resized = resize(original, [cfg.image_size, cfg.image_size], antialias=True)
    det = predict_with_config(model, resized[None], dev, cfg, min_score=threshold)[0]
    boxes = det.boxes_xyxy.cpu() * torch.tensor([w, h, w, h])
    labels = [class_names[i] for i in det.labels.tolist()]
    save_grid([draw_detections(original, boxes, labels, scores=det.scores.cpu())], out, ncol=1)
    return [{"label": lab, "score": float(s), "box_xyxy": b} for lab, s, b in
            zip(labels, det.scores.tolist(), boxes.tolist())]
