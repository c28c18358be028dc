"""tinyssd-ablate: measured answers to the exercises of D2L's "Single Shot Multibox Detection"."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import ConfigError, RunConfig, default_profile, knob_table, make_config, parse_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


class Profile(str, Enum):
    chapter = "chapter"
    quick = "quick"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a knob: key=value (repeatable); see `knobs`")]
ProfileOpt = Annotated[Optional[Profile], typer.Option(help="chapter: the chapter's protocol (default on a GPU); quick: CPU-sized (default on a CPU)")]
DatasetOpt = Annotated[Optional[str], typer.Option(help="'bananas' (default), 'shapes', or a path to a banana or COCO folder")]
DeviceOpt = Annotated[Device, typer.Option(help="auto picks CUDA when there is one")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object as the last line of stdout")]


def _usage_error(message: str, hint: str | None = None):
    raise typer.BadParameter(message, param_hint=hint)


def _device_kind(device: Device) -> str:
    import torch
    return "cuda" if device == Device.cuda or (device == Device.auto and torch.cuda.is_available()) else "cpu"


def build_config(sets: list[str] | None, profile: Profile | None, device: Device, **flags) -> RunConfig:
    """Defaults < profile < explicit flags < --set, with every error a usage error (exit 2)."""
    try:
        overrides = {k: v for k, v in flags.items() if v is not None}
        overrides["device"] = device.value
        overrides.update(parse_overrides(sets or []))
        chosen = profile.value if profile else default_profile(_device_kind(Device(overrides["device"])))
        return make_config(chosen, overrides)
    except ConfigError as exc:
        _usage_error(str(exc), "--set")


def _json_line(obj: dict) -> None:
    """One machine-readable line; NaN (no ground truth of that size) becomes null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()}
    typer.echo(json.dumps(clean))


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}")
    return table


@app.command()
def knobs(json_out: JsonOpt = False):
    """List every RunConfig knob: type, default, allowed values and meaning."""
    rows = knob_table()
    if json_out:
        typer.echo(json.dumps(rows, default=str))
        return
    table = Table(title="RunConfig knobs (set with --set key=value)")
    for col in ("name", "type", "default", "allowed", "help"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("name", "type", "default", "allowed", "help")))
    console.print(table)


@app.command()
def train(sets: SetOpt = None, profile: ProfileOpt = None, dataset: DatasetOpt = None,
          epochs: Annotated[Optional[int], typer.Option(help="training epochs")] = None,
          device: DeviceOpt = Device.auto,
          experiment: Annotated[str, typer.Option(help="MLflow experiment name")] = "tinyssd-train",
          out_dir: Annotated[Path, typer.Option(help="where checkpoints and pictures are written")] = Path("outputs"),
          json_out: JsonOpt = False):
    """Train TinySSD once, validate with COCO mAP every epoch, and log one MLflow run.

    Knobs (see `python cli.py knobs`): box_loss, smooth_l1_sigma, cls_loss, focal_gamma, focal_alpha,
    cls_weight, box_weight, loss_normalization, neg_sampling, neg_pos_ratio, image_size, lr, epochs, ...
    """
    from pipeline.run import tracked_run
    from pipeline.tracking import MlflowTracker

    cfg = build_config(sets, profile, device, dataset=dataset, epochs=epochs)
    _check_writable(out_dir)
    result = tracked_run(cfg, MlflowTracker(experiment), name="train", out_dir=out_dir, progress=True)
    console.print(_metrics_table("validation (COCO)", {k: v for k, v in result.metrics.items() if k.startswith("val/")}))
    console.print(f"checkpoint: {result.checkpoint}   MLflow run: {result.run_id}   "
                  f"training speed: {result.train_images_per_s:.1f} images/s")
    if json_out:
        _json_line({**result.metrics, "train_images_per_s": result.train_images_per_s, "run_id": result.run_id,
                    "checkpoint": str(result.checkpoint)})


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _usage_error(f"{path}: cannot create the directory ({exc.strerror})")
    if not os.access(path, os.W_OK):
        _usage_error(f"{path}: directory is not writable")


@app.command()
def evaluate(checkpoint: Path, dataset: DatasetOpt = None,
             split: Annotated[str, typer.Option(help="train or val")] = "val",
             detections_out: Annotated[Optional[Path], typer.Option(help="write COCO results JSON here")] = None,
             device: DeviceOpt = Device.auto, json_out: JsonOpt = False):
    """Print COCO metrics of CHECKPOINT on a data set and optionally write its COCO results JSON."""
    from pipeline.checkpoint import CheckpointError
    from pipeline.data import DataError
    from pipeline.inference import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(checkpoint, dataset, split, detections_out, device.value, progress=True)
    except (CheckpointError, DataError) as exc:
        _usage_error(str(exc))
    metrics = {f"val/{k}": v for k, v in result.metrics.items()}
    console.print(_metrics_table(f"COCO metrics of {checkpoint} on {split}", metrics))
    if json_out:
        _json_line(metrics)


@app.command()
def predict(checkpoint: Path, image: Path,
            out: Annotated[Path, typer.Option(help="PNG to write")] = Path("prediction.png"),
            threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="lowest score drawn")] = 0.5,
            device: DeviceOpt = Device.auto, json_out: JsonOpt = False):
    """Draw the boxes CHECKPOINT predicts on IMAGE."""
    from pipeline.checkpoint import CheckpointError
    from pipeline.data import DataError
    from pipeline.inference import predict_image

    try:
        found = predict_image(checkpoint, image, out, threshold, device.value)
    except (CheckpointError, DataError) as exc:
        _usage_error(str(exc))
    console.print(f"{len(found)} detections >= {threshold} written to {out}")
    if json_out:
        typer.echo(json.dumps({"out": str(out), "detections": found}))


@app.command()
def data(dataset: Annotated[str, typer.Argument(help="'bananas', 'shapes', or a path")] = "bananas",
         split: Annotated[str, typer.Option(help="train or val")] = "train",
         preview: Annotated[Path, typer.Option(help="PNG grid of samples with their boxes")] = Path("outputs/preview.png"),
         image_size: Annotated[int, typer.Option(help="side the images are resized to")] = 256,
         json_out: JsonOpt = False):
    """Generate (on first use) or inspect a data set, and write a preview grid of samples."""
    from pipeline.data import DataError, load_split, resolve_dataset
    from pipeline.visualize import preview as draw_preview

    try:
        folder, fmt = resolve_dataset(dataset)
        loaded = load_split(dataset, split, image_size)
    except DataError as exc:
        _usage_error(str(exc))
    preview.parent.mkdir(parents=True, exist_ok=True)
    draw_preview(loaded, preview)
    objects = int((loaded.targets[..., 0] >= 0).sum())
    summary = {"dataset": dataset, "folder": str(folder), "format": fmt, "split": split, "images": len(loaded),
               "objects": objects, "classes": loaded.class_names, "skipped": loaded.skipped, "preview": str(preview)}
    for key, value in summary.items():
        console.print(f"{key:>8}: {value}")
    if json_out:
        typer.echo(json.dumps(summary))


@app.command()
def ui(port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
       host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1"):
    """Start the MLflow UI on the project's tracking store (MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."""
    from pipeline.tracking import tracking_uri

    mlflow_bin = shutil.which("mlflow") or sys.executable.replace("python", "mlflow")
    uri = tracking_uri()
    console.print(f"MLflow UI on http://{host}:{port} for {uri}")
    os.execv(mlflow_bin, [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)])


if __name__ == "__main__":
    app()
