"""The CLI's option types and input checks: each command in cli.py parses with these, calls one function in
pipeline/, and prints. A bad value is a usage error (exit 2) that names its option."""

from __future__ import annotations

import json
import math
import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.config import ConfigError, RunConfig, default_profile, make_config, parse_overrides
from pipeline.terminal import err_console


class Profile(str, Enum):
    chapter = "chapter"
    quick = "quick"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"  # the generated sets' held-out split, which verdicts are scored on


SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a knob: key=value (repeatable); see `knobs`")]


ProfileOpt = Annotated[Optional[Profile], typer.Option(help="chapter: the chapter's protocol (default on a GPU); quick: CPU-sized (default on a CPU)")]


DatasetOpt = Annotated[Optional[str], typer.Option(help="'bananas' (default), 'shapes', or a path to a banana or COCO folder")]


DeviceOpt = Annotated[Device, typer.Option(help="auto picks CUDA when there is one")]


JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object as the last line of stdout")]


SkipOpt = Annotated[bool, typer.Option("--skip-invalid", help="skip and count bad data records instead of refusing the data set")]


def usage_error(message: str, hint: str | None = None):
    raise typer.BadParameter(message, param_hint=hint)


def device_kind(device: Device) -> str:
    import torch
    return "cuda" if device == Device.cuda or (device == Device.auto and torch.cuda.is_available()) else "cpu"


def user_overrides(sets: list[str] | None, device: Device, **flags) -> dict:
    """The explicit flags, then --set: what the user changed from the profile, type-checked.

    A bad value is a usage error that names the option it came from: --epochs, --dataset, ... or --set."""
    overrides = {"device": device.value}
    for key, value in flags.items():
        if value is not None:
            try:
                RunConfig(**{key: value})  # checked alone here, so that the error names this flag, not --set
            except ConfigError as exc:
                usage_error(str(exc), "--" + key.replace("_", "-"))
            overrides[key] = value
    try:
        overrides.update(parse_overrides(sets or []))
    except ConfigError as exc:
        usage_error(str(exc), "--set")
    return overrides


def chosen_profile(profile: Profile | None, device: Device) -> str:
    return profile.value if profile else default_profile(device_kind(device))


def build_config(profile: str, overrides: dict) -> RunConfig:
    """Defaults < profile < overrides, with every error a usage error (exit 2)."""
    try:
        cfg = make_config(profile, overrides)
    except ConfigError as exc:
        usage_error(str(exc), "--set")
    check_device(cfg.device)
    return cfg


def finite_option(value: float | None) -> float | None:
    """A number option must be a number: nan and inf are refused as such (Click's range check, which would run
    first, reads nan as out of range and says so, so the options using this declare their range here instead)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number")
    return value


def finite_in(low: float, high: float | None = None):
    """A callback for a float option: a finite number in [low, high]."""
    def check(value: float | None) -> float | None:
        finite_option(value)
        if value is not None and (value < low or (high is not None and value > high)):
            raise typer.BadParameter(f"{value:g} is outside [{low:g}, {high if high is not None else 'inf'}]")
        return value
    return check


# sweep's seeds and verdicts (see the README's "Seeds, packs and verdicts")
SeedsOpt = Annotated[int, typer.Option(min=0, max=64, help="afterwards, re-train the best and the control with N new "
                                       "seeds (each as one pack, scored on the test split) for a verdict; with "
                                       "--decide: the seeds added per look")]


DecideOpt = Annotated[bool, typer.Option("--decide", help="afterwards, add seeds (packs of --seeds, default 1) to the "
                                         "best and the control until the verdict is better, worse or equivalent "
                                         "within ±--delta, or --max-seeds run out")]


DeltaOpt = Annotated[float, typer.Option(callback=finite_in(1e-4, 1.0),
                                         help="the verdict's equivalence margin, in mAP (0.0001 to 1)")]


MaxSeedsOpt = Annotated[int, typer.Option(min=2, max=256, help="the most new seeds --decide spends per setting")]


CandidatesOpt = Annotated[int, typer.Option(min=1, max=10, help="how many of the best trials get a verdict "
                                            "(Holm-corrected together)")]


ContrastOpt = Annotated[Optional[list[str]], typer.Option(
    "--contrast", help="a designed variant's contrast to add seeds to (repeatable; default: all): the others are "
                       "read on the seeds kept for them, at the same alpha, and left pending if those do not decide "
                       "them")]


SeedsPerTrialOpt = Annotated[int, typer.Option(min=1, max=64, help="train every trial as a pack of K seeds (the same "
                                               "K seeds for every trial): its value is their mean, with a 95% "
                                               "interval")]


def check_device(device: str) -> None:
    """device=cuda where torch sees no GPU is the user's choice to fix, not a crash in the middle of a run."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        usage_error("cuda: torch sees no CUDA device here; use --device cpu (or auto)", "--device")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_image_out(path: Path, flag: str, source: Path | None = None) -> None:
    """An image file to write: a name PIL can write, in a folder that can be created, never the input itself."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_dir():
        usage_error(f"{path}: give a file name ending in {', '.join(IMAGE_SUFFIXES)}", flag)
    if source is not None and path.exists() and path.resolve() == source.resolve():
        usage_error(f"{path} is the input image: it would be overwritten; choose another --out", flag)
    check_writable(path.parent)


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def study_name_option(name: str | None) -> str | None:
    """A study name becomes an MLflow experiment, a folder of epoch states and a report folder: keep it plain."""
    if name is not None and not STUDY_NAME.fullmatch(name):
        usage_error(f"{name!r}: use letters, digits, '.', '_' and '-' (at most 100, starting with a letter or "
                     "digit)", "--study-name")
    return name


def storage_url(url: str) -> str:
    """Refuse an Optuna storage URL that does not parse or cannot be connected to, before any data is loaded."""
    return checked_storage_url(url, "--storage")


def checked_storage_url(url: str, flag: str) -> str:
    """storage_url's checks, its errors naming ``flag``."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from pipeline.sqlite_files import sqlite_problem

    try:
        parsed = sqlalchemy.engine.make_url(url)
        if parsed.get_backend_name() != "sqlite":  # a SQLite file is created only once the input has been checked
            with sqlalchemy.create_engine(parsed, poolclass=NullPool).connect():
                pass
        elif problem := sqlite_problem(url, "optuna"):
            usage_error(problem, flag)
    except sqlalchemy.exc.ArgumentError as exc:  # not a URL, or an unknown database
        usage_error(f"{exc} (expected sqlite:///FILE or postgresql://USER@HOST/DB)", flag)
    except ImportError as exc:
        usage_error(f"{parsed}: its database driver is not installed ({exc})", flag)
    except sqlalchemy.exc.SQLAlchemyError as exc:  # the driver's own words, without SQLAlchemy's links
        usage_error(f"cannot connect to {parsed}: {' '.join(str(getattr(exc, 'orig', None) or exc).split())}",
                     flag)
    return url


def existing_storage_url(url: str) -> str:
    """storage_url for a store that is read, never created (merge's SOURCE)."""
    return existing_store_url(url, "SOURCE")


def existing_store_url(url: str, flag: str) -> str:
    """storage_url for a store that is read, never created: a SQLite file must exist and hold something."""
    from pipeline.sqlite_files import sqlite_path

    path = sqlite_path(url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        usage_error(f"{path}: no such Optuna store (a SQLite file that is there and not empty)", flag)
    return checked_storage_url(url, flag)


def check_tracking_store() -> None:
    """Refuse an MLFLOW_TRACKING_URI whose SQLite file cannot be an MLflow store, or whose artifacts would be
    written outside its folder (a copied or moved project folder), before anything is written."""
    from pipeline.sqlite_files import sqlite_problem
    from pipeline.tracking import artifacts_elsewhere, tracking_uri

    if problem := sqlite_problem(tracking_uri(), "mlflow") or artifacts_elsewhere(tracking_uri()):
        usage_error(problem, "MLFLOW_TRACKING_URI")


def seconds_since_process_start() -> float | None:
    """How long this process has existed (Linux; None elsewhere): where a command's start-up went."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks
    except (OSError, ValueError, IndexError):
        return None


def json_line(obj: dict) -> None:
    """One machine-readable line; NaN (no ground truth of that size) and infinities become null, at any depth."""
    typer.echo(json.dumps(finite_json(obj)))


def finite_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def seed_pack(cfg: RunConfig, k: int, num_classes: int, flag: str):
    """K seeds of cfg as one pack, refused as a usage error naming ``flag`` when it will not fit in memory."""
    from pipeline.model.pack import Pack, PackError, check_fits
    from pipeline.machine import resolve_device

    try:
        check_fits(cfg, k, num_classes, resolve_device(cfg.device))
    except PackError as exc:
        usage_error(str(exc), flag)
    return Pack.of_seeds(cfg, k)


def load_or_exit(cfg: RunConfig, skip_invalid: bool):
    """Both splits, checked before any store is touched; bad data is a usage error naming file and line."""
    from pipeline.data import DataError
    from pipeline.training.run import load_data

    try:
        train, val = load_data(cfg, progress=True, skip_invalid=skip_invalid)
    except DataError as exc:
        usage_error(str(exc), "--dataset")
    if train.skipped or val.skipped:
        err_console.print(f"[yellow]skipped {train.skipped} invalid train and {val.skipped} invalid val records[/]")
    return train, val


def check_writable(path: Path) -> None:
    if path.exists() and not path.is_dir():
        usage_error(f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        usage_error(f"{path}: cannot create the directory ({exc.strerror})")
    if not os.access(path, os.W_OK):
        usage_error(f"{path}: directory is not writable")


def threshold_value(text: str) -> float | None:
    """--threshold: 'auto' (None) or a number in [0, 1]."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        usage_error(f"{text!r}: give auto or a number in [0, 1]", "--threshold")
    return value


def variant_name(value: str) -> str:
    import experiments
    if value not in experiments.names():
        raise typer.BadParameter(f"unknown variant {value!r}; valid variants: {', '.join(experiments.names())}")
    return value
