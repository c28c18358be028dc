"""Checkpoints: weights plus the config that made them, written atomically."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.config import RunConfig
from pipeline.model import TinySSD


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: names the file and the problem."""


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save to a temp file beside ``path``, fsync, then os.replace: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: Path, model: TinySSD, cfg: RunConfig, class_names: list[str], **extra) -> Path:
    state = {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "class_names": list(class_names), **extra}
    return atomic_save(state, path)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[TinySSD, RunConfig, list[str], dict]:
    """(model in eval mode, its config, class names, the whole saved dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        cfg = RunConfig(**state["config"])
        model = TinySSD(len(state["class_names"]), cfg.anchor_scale)
        model.load_state_dict(state["model"])
    except Exception as exc:  # truncated, not a checkpoint, or from another version
        raise CheckpointError(f"{path}: not a readable tinyssd checkpoint ({type(exc).__name__}: {exc})") from exc
    return model.to(device).eval(), cfg, state["class_names"], state


KEEP_EPOCH_STATES = 2  # the newest, and one to fall back on if the newest is truncated


def save_epoch_state(folder: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Everything needed to resume after ``epoch``, written atomically; older states are pruned."""
    path = atomic_save({**state, "epoch": epoch}, Path(folder) / f"epoch-{epoch:04d}.pt")
    for old in sorted(Path(folder).glob("epoch-*.pt"))[:-KEEP_EPOCH_STATES]:
        old.unlink(missing_ok=True)
    return path


def load_latest_epoch_state(folder: Path | None) -> dict[str, Any] | None:
    """The newest readable epoch state in ``folder``: a truncated file falls back to the one before."""
    if folder is None:
        return None
    for path in sorted(Path(folder).glob("epoch-*.pt"), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a partial write from a killed process: try the previous epoch
            continue
    return None
