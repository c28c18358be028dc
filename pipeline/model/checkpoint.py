"""Checkpoints: weights plus the config that made them, written atomically."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.config import RunConfig
from pipeline.model.tinyssd import TinySSD


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: names the file and the problem."""


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save to a temp file beside ``path``, fsync, then os.replace: a crash leaves the old file or the new one.

    An interrupt (Ctrl-C, SIGTERM) that lands inside torch.save makes its zip writer fail on the way out with a
    RuntimeError ("unexpected pos"); the interrupt is what happened, so it is what propagates, and the trial
    ends as interrupted instead of failing with a traceback."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        interrupt = _interrupt_behind(exc)
        if interrupt is not None and interrupt is not exc:
            raise interrupt from None
        raise
    return path


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that ``exc`` is, or was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def save_checkpoint(path: Path, model: TinySSD, cfg: RunConfig, class_names: list[str],
                    display_threshold: float | None = None) -> Path:
    """A one-replica TinySSD's weights, the config that trained it, its class names and the score threshold to
    display its detections at (the one that maximised F1 on validation; None: unknown), written atomically."""
    state = {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "class_names": list(class_names),
             "display_threshold": display_threshold}
    return atomic_save(state, path)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= limit else text[:limit] + "..."


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[TinySSD, RunConfig, list[str], dict]:
    """(model in eval mode, its config, class names, the whole saved dict)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # weights_only refuses pickled Python objects; a text file or a cut-off copy fails too
        raise CheckpointError(f"{path}: not a PyTorch weights file, or a truncated one ({_first_line(exc)})") from exc
    missing = [k for k in ("model", "config", "class_names") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: a PyTorch file, but not a tinyssd checkpoint (no {', '.join(missing)})")
    try:
        cfg = RunConfig(**state["config"])
    except Exception as exc:  # a knob this version does not have, or a value it refuses
        raise CheckpointError(f"{path}: its config does not fit this version of tinyssd ({_first_line(exc)})") from exc
    model = TinySSD(len(state["class_names"]), cfg.anchor_scale)
    try:
        model.load_state_dict(state["model"])
    except Exception as exc:  # another architecture or class count than its own config says
        raise CheckpointError(f"{path}: its weights do not fit a TinySSD with {len(state['class_names'])} classes "
                              f"({_first_line(exc)})") from exc
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
