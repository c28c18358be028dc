"""Using a trained checkpoint: COCO metrics on a data set, and boxes drawn on one image."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor, resize

from pipeline.data import DataError, load_split, to_coco_dict
from pipeline.evaluation.coco import CocoResult, coco_evaluate
from pipeline.evaluation.evaluate import predict_with_config, to_coco_results
from pipeline.evaluation.visualize import draw_detections, save_grid
from pipeline.machine import resolve_device
from pipeline.model.checkpoint import load_checkpoint


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


FALLBACK_THRESHOLD = 0.5  # for a checkpoint that chose none (from before thresholds were chosen)


def display_threshold(state: dict, asked: float | None) -> tuple[float, str]:
    """The threshold to draw at and where it comes from: the one asked for, or the checkpoint's own (the score
    that maximised F1 at IoU 0.5 on its validation split), or 0.5 when it has none."""
    if asked is not None:
        return asked, "asked for"
    chosen = state.get("display_threshold")
    if chosen is None:
        return FALLBACK_THRESHOLD, "the checkpoint chose none; 0.5"
    return float(chosen), "chosen by F1 on its validation split"


def predict_image(checkpoint: Path, image_path: Path, out: Path, threshold: float | None = None,
                  device: str = "auto") -> tuple[list[dict], float, str]:
    """Draw the detections scoring >= the threshold (see display_threshold) on the original image; returns them
    in pixels, with the threshold and where it came from."""
    dev = resolve_device(device)
    model, cfg, class_names, state = load_checkpoint(checkpoint, dev)
    threshold, source = display_threshold(state, threshold)
    original = read_image(image_path)
    h, w = original.shape[-2:]
    resized = resize(original, [cfg.image_size, cfg.image_size], antialias=True)
    det = predict_with_config(model, resized[None], dev, cfg, min_score=threshold)[0]
    boxes = det.boxes_xyxy.cpu() * torch.tensor([w, h, w, h])
    labels = [class_names[i] for i in det.labels.tolist()]
    save_grid([draw_detections(original, boxes, labels, scores=det.scores.cpu())], out, ncol=1)
    found = [{"label": lab, "score": float(s), "box_xyxy": b} for lab, s, b in
             zip(labels, det.scores.tolist(), boxes.tolist())]
    return found, threshold, source
