"""Shared fixtures: a tiny generated banana folder and a CPU-sized config for end-to-end runs."""

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import generate_bananas

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")  # for tests that run the CLI in a subprocess

# Shrinks any run to seconds on a CPU: a 64-pixel input, a few images, one epoch.
TINY_SETS = ["image_size=64", "train_images=8", "val_images=4", "batch_size=4", "epochs=1"]
TINY_OFF_PROFILE = "epochs=1, batch_size=4, train_images=8, val_images=4"  # how a sheet names them, off the quick profile


def tiny_args() -> list[str]:
    return [arg for pair in TINY_SETS for arg in ("--set", pair)]


@pytest.fixture(scope="session")
def tiny_bananas(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny_bananas"
    generate_bananas(root, n_train=12, n_val=4, progress=False)
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder with the embedded default stores, whatever the caller's environment says."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path / "cache"))
    return tmp_path


def plain(output: str) -> str:
    """CLI output without rich's panel borders and line wrapping, for matching messages."""
    for ch in "│╭╮╰╯─":
        output = output.replace(ch, " ")
    return " ".join(output.split())


def tiny_config(**overrides):
    """A RunConfig small enough for a fit in seconds: 64 px, batch 4, 2 epochs, on the CPU."""
    from pipeline.config import RunConfig

    return RunConfig(**{"image_size": 64, "batch_size": 4, "epochs": 2, "device": "cpu", **overrides})


@pytest.fixture(scope="module")
def splits(tiny_bananas):
    """The tiny banana set's first 8 training images and its validation split, at 64 px."""
    from pipeline.data import load_split

    return (load_split(str(tiny_bananas), "train", 64, progress=False).subset(8),
            load_split(str(tiny_bananas), "val", 64, progress=False))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def inline_set(n_images=6, seed=0):
    """COCO ground truth (two classes, 1-3 objects per image) and noisy detections of it, with misses and
    false positives."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "height": 100, "width": 100})
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 60, 2), *rng.uniform(8, 40, 2)))
            cat = int(rng.integers(1, 3))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
            if rng.uniform() < 0.8:  # found, roughly
                results.append({"image_id": i, "category_id": cat, "score": float(rng.uniform(0.2, 1.0)),
                                "bbox": [x + float(rng.normal(0, 3)), y + float(rng.normal(0, 3)), w, h]})
        results.append({"image_id": i, "category_id": 1, "score": float(rng.uniform(0, 0.6)),
                        "bbox": [float(v) for v in (*rng.uniform(0, 60, 2), 20, 20)]})  # a false positive
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": annotations, "categories": categories}, results
