"""Shared fixtures: a tiny generated banana folder and a CPU-sized config for end-to-end runs."""

from pathlib import Path

import pytest

from pipeline.data import generate_bananas

# Shrinks any run to seconds on a CPU: a 64-pixel input, a few images, one epoch.
TINY_SETS = ["image_size=64", "train_images=8", "val_images=4", "batch_size=4", "epochs=1"]


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
