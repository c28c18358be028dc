"""Every knob of a run, with the chapter's defaults, and parsing of key=value overrides.

A trial's config is ``dataclasses.replace(base, **overrides)`` and ``asdict(cfg)``
is what goes to MLflow as params, so the params always match the code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    # The chapter's protocol, unchanged: the default on a GPU.
    "chapter": {},
    # Sized so `train` takes under 1.5 minutes and a default `sweep focal-loss` under 10 on the 2-core
    # machines (AMD EPYC Zen 3 and Intel Xeon), while still ranking settings as 128 px did (docs/noise-budget.md).
    "quick": {
        "image_size": 64,  # 1/16 of the chapter's FLOPs; anchors are relative, so they keep their meaning
        "epochs": 10,  # ~80 s of training on the 2-core EPYC (measured; 205 s at 128 px)
        "batch_size": 16,  # twice the steps per epoch: with few epochs, steps matter more than batch size
        "lr": 0.4,  # measured at 128 px: val mAP 0.15-0.19 after 10 epochs, against 0.09-0.12 at the chapter's 0.2
    },
}


class ConfigError(ValueError):
    """A bad override: names the key and what is allowed."""


def _knob(default, help: str, *, choices=None, low=None, high=None, multiple_of=None):
    meta = {"help": help, "choices": choices, "low": low, "high": high, "multiple_of": multiple_of}
    return field(default=default, metadata=meta)


# What a trained seed scores depends on the code as well as on its RunConfig. Bump this whenever a change alters
# any trained score (tests/training/test_results_version.py pins a small pack's losses and fails then): kept
# seeds and shared controls scored by other code are then never reused. Version 1 is left out of their digests,
# so seeds kept before versioning stay reusable.
RESULTS_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    # --- data --------------------------------------------------------------
    dataset: str = _knob("bananas", "'bananas', 'shapes', or a path to a banana folder or a COCO folder")
    image_size: int = _knob(256, "input side in pixels; images are resized to it (TinySSD halves it 6 times)",
                            low=64, high=1024, multiple_of=32)
    anchor_scale: float = _knob(1.0, "multiplies every anchor size (the chapter's: 0.2 to 0.961 of the image side); "
                                "below 1, anchors fit smaller objects", low=0.05, high=4.0)
    train_images: int = _knob(0, "use only the first N training images (0 = all)", low=0)
    val_images: int = _knob(0, "use only the first N validation images (0 = all)", low=0)
    hflip: bool = _knob(False, "flip each training image left-right with probability 0.5, on the device "
                               "(not in the chapter)")
    # --- optimisation: the chapter's protocol --------------------------------
    epochs: int = _knob(20, "training epochs", low=1, high=10_000)
    batch_size: int = _knob(32, "images per SGD step", low=1, high=4096)
    lr: float = _knob(0.2, "SGD learning rate", low=1e-6, high=10.0)
    weight_decay: float = _knob(5e-4, "SGD weight decay", low=0.0, high=1.0)
    lr_schedule: str = _knob("constant", "constant (the chapter) or cosine decay to 0 over the epochs",
                             choices=("constant", "cosine"))
    average_last: int = _knob(0, "score and keep the mean of the last N epochs' weights (SWA-style, BatchNorm "
                                 "statistics averaged too); 0: the last epoch's weights (the chapter)", low=0, high=10_000)
    seed: int = _knob(0, "seed for weights, batch order and sampling", low=0, high=2**32 - 1)
    device: str = _knob("auto", "auto picks CUDA when there is one", choices=("auto", "cpu", "cuda"))
    # --- speed (no effect on the maths in fp32) ------------------------------
    channels_last: bool = _knob(True, "NHWC memory layout: about 1.5x faster convolutions on CPU")
    precision: str = _knob("fp32", "bf16 autocasts forward and backward", choices=("fp32", "bf16"))
    cuda_graph: bool = _knob(True, "on CUDA, replay each full training batch from one captured CUDA graph "
                                   "(no effect on the CPU)")
    cudnn_benchmark: bool = _knob(False, "on CUDA, time cuDNN's convolution algorithms once per shape and keep "
                                         "the fastest: measured on an H200, +17% training speed for 12 s once per "
                                         "process, so it pays off from about 70 s of training")
    torch_compile: bool = _knob(False, "torch.compile the model: pays off only in long runs, as compiling "
                                       "takes tens of seconds per process")
    pack_layout: str = _knob("auto", "how a seed pack runs its K replicas: grouped (one network, convolutions with "
                                     "groups=K) or loop (K dense networks in turn); auto: grouped on CUDA, loop on "
                                     "a CPU, where grouped convolutions are slower (no effect on the maths)",
                             choices=("auto", "grouped", "loop"))
    val_every: int = _knob(0, "validate every N epochs and after the last; the pruner sees only these. "
                              "0 = auto: every epoch on the CPU, every 5th on CUDA, where pycocotools would "
                              "otherwise take most of a trial", low=0, high=10_000)
    # --- the chapter's exercises ---------------------------------------------
    box_loss: str = _knob("l1", "box regression loss", choices=("l1", "smooth_l1"))
    smooth_l1_sigma: float = _knob(1.0, "sigma of the chapter's smooth L1 (beta = 1/sigma^2)", low=1e-3, high=1e3)
    cls_loss: str = _knob("ce", "class loss over the softmax", choices=("ce", "focal"))
    focal_gamma: float = _knob(2.0, "focal loss gamma (0 is cross-entropy)", low=0.0, high=10.0)
    focal_alpha: float | None = _knob(
        None, "none: one global factor (the chapter); a number: alpha for objects, 1-alpha for background",
        low=0.0, high=1.0)
    cls_weight: float = _knob(1.0, "weight of the class loss", low=0.0, high=100.0)
    box_weight: float = _knob(1.0, "weight of the box loss", low=0.0, high=100.0)
    loss_normalization: str = _knob(
        "anchors", "anchors: mean over all anchors (the chapter); positives: sum / number of positives (SSD)",
        choices=("anchors", "positives"))
    neg_sampling: str = _knob(
        "all", "which negative anchors the class loss sees", choices=("all", "hard", "random"))
    neg_pos_ratio: float = _knob(3.0, "negatives per positive for hard or random sampling", low=0.1, high=1000.0)
    # --- inference -------------------------------------------------------------
    nms_iou: float = _knob(0.5, "NMS IoU threshold, per class (torchvision batched_nms); the chapter's NMS is "
                           "class-agnostic after each anchor's best class: the same with one class", low=0.0, high=1.0)
    score_threshold: float = _knob(0.01, "drop detections scoring below this", low=0.0, high=1.0)
    max_detections: int = _knob(100, "detections kept per image (COCO counts 100)", low=1, high=10_000)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_value(f, getattr(self, f.name))


def knob_type(annotation) -> tuple[type, bool]:
    """(type, optional) from a field annotation such as ``float | None``."""
    hint = typing.get_type_hints(RunConfig)[annotation] if isinstance(annotation, str) else annotation
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], True
    return hint, False


def _check_value(f: dataclasses.Field, value) -> None:
    meta = f.metadata
    if value is None:
        if not knob_type(f.name)[1]:
            raise ConfigError(f"{f.name}: must not be empty")
        return
    kind = knob_type(f.name)[0]
    numeric_ok = kind is float and isinstance(value, int) and not isinstance(value, bool)
    if not (isinstance(value, kind) or numeric_ok) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{f.name}: expected {kind.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{f.name}: must be a finite number, got {value}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{f.name}: must be one of {', '.join(meta['choices'])}; got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{f.name}: must be in {allowed}; got {value}")
    if meta.get("multiple_of") and value % meta["multiple_of"]:
        raise ConfigError(f"{f.name}: must be a multiple of {meta['multiple_of']}; got {value}")


def scaled_value(knob: str, value: float, factor: float) -> float | int:
    """``value`` of ``knob`` times ``factor``, rounded to the knob's multiple (an input side to 32 px) where it has
    one, else kept as a number of the knob's type."""
    meta = {f.name: f.metadata for f in dataclasses.fields(RunConfig)}[knob]
    if value is None:
        raise ConfigError(f"{knob}: its value here is empty (None), so there is nothing to scale; give its value")
    if meta.get("multiple_of"):
        step = meta["multiple_of"]
        return int(round(value * factor / step)) * step
    return int(round(value * factor)) if knob_type(knob)[0] is int else value * factor


def parse_value(key: str, text: str):
    """Convert the text of one override to the type of field ``key``."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    if key not in fields:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
    kind, optional = knob_type(key)
    text = text.strip()
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {text!r}")
            return value
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {text!r}") from None
    return text


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.1", "box_loss=smooth_l1"]`` -> ``{"lr": 0.1, "box_loss": "smooth_l1"}``, type-checked."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} must look like key=value")
        out[key.strip()] = parse_value(key.strip(), text)
    return out


def make_config(profile: str = "chapter", overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the profile, then the user's overrides; validated."""
    if profile not in PROFILES:
        raise ConfigError(f"profile: must be one of {', '.join(PROFILES)}; got {profile!r}")
    merged = {**PROFILES[profile], **(overrides or {})}
    unknown = set(merged) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(RunConfig(), **merged)


PROTOCOL_KNOBS = ("image_size", "epochs", "batch_size", "lr", "lr_schedule")  # how a run trains, in words
PROTOCOL_EXTRAS = ("train_images", "val_images", "weight_decay", "average_last", "precision")  # named when changed


def protocol(base: dict[str, Any]) -> str:
    """How a study's base configuration trains, in words: '64 px, 10 epochs, batch 16, lr 0.4 constant', with any
    other knob of the protocol that differs from the chapter's after it ('..., precision=bf16')."""
    size, epochs, batch, lr, schedule = (base.get(knob) for knob in PROTOCOL_KNOBS)
    chapter = dataclasses.asdict(RunConfig())
    extras = [f"{k}={base[k]}" for k in PROTOCOL_EXTRAS if k in base and base[k] != chapter[k]]
    return ", ".join([f"{size} px, {epochs} epochs, batch {batch}, lr {lr} {schedule}", *extras])


def knobs_off_profile(base: dict[str, Any], profile: str | None) -> list[str]:
    """The knobs of the protocol, other than the image side (which every label names), where a study's base
    configuration leaves its named profile: ['lr_schedule=cosine'] for the quick profile with a cosine tail. A
    study that names no profile the code knows is read against the chapter's protocol, so nothing is hidden."""
    named = dataclasses.asdict(make_config(profile if profile in PROFILES else "chapter"))
    return [f"{k}={base[k]}" for k in (*PROTOCOL_KNOBS[1:], *PROTOCOL_EXTRAS) if k in base and base[k] != named[k]]


def off_profile_words(off_profile) -> str:
    """' with lr_schedule=cosine' after a profile's name, for knobs_off_profile's list; '' for none (or no list)."""
    return f" with {', '.join(off_profile)}" if isinstance(off_profile, (list, tuple)) and off_profile else ""


def at_chapter_protocol(base: dict[str, Any]) -> bool:
    """Whether a study's base configuration trains as the chapter does (256 px, 20 epochs, batch 32, lr 0.2 at a
    constant rate, every image, fp32): the chapter profile with a knob of its protocol changed (a 128-px rung,
    say) is not."""
    return protocol(base) == protocol(dataclasses.asdict(RunConfig()))


def proxy_note(base: dict[str, Any]) -> str:
    """What a verdict decided off the chapter's protocol says beside itself, wherever it is read (the terminal, the
    MLflow run's description, the Optuna Dashboard note): that it answers a proxy's question; '' at the chapter's
    protocol."""
    if at_chapter_protocol(base):
        return ""
    return (f"Measured at {protocol(base)}, a proxy for the chapter's protocol (256 px, 20 epochs, batch 32, lr 0.2): "
            "whether it holds there is a measurement of its own (the same sweep with --profile chapter); the answer "
            "sheet (python cli.py report all) says whose answer each verdict is.")


GPU_VAL_EVERY = 5  # measured: COCOeval of 100 images takes ~0.25 s, longer than a GPU epoch of the chapter


def validation_epochs(cfg: RunConfig, device_type: str) -> set[int]:
    """The 0-based epochs after which fit validates: every val_every-th and always the last."""
    every = cfg.val_every or (GPU_VAL_EVERY if device_type == "cuda" else 1)
    return {e for e in range(cfg.epochs) if (e + 1) % every == 0} | {cfg.epochs - 1}


def default_profile(device: str) -> str:
    """The chapter's protocol on a GPU, the quick one on a CPU."""
    return "chapter" if device == "cuda" else "quick"


def knob_table() -> list[dict[str, Any]]:
    """One row per field: name, type, default, allowed values, help."""
    rows = []
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if meta.get("choices"):
            allowed = " | ".join(meta["choices"])
        elif meta.get("low") is not None:
            allowed = f"[{meta['low']}, {meta['high']}]" if meta.get("high") is not None else f">= {meta['low']}"
            if meta.get("multiple_of"):
                allowed += f", multiple of {meta['multiple_of']}"
        else:
            allowed = ""
        kind, optional = knob_type(f.name)
        rows.append({"name": f.name, "type": kind.__name__ + (" | None" if optional else ""),
                     "default": f.default, "allowed": allowed, "help": meta["help"]})
    return rows


# A knob that has no effect under another knob's value: (knob, the knob that decides, the values that leave it idle)
IDLE_UNLESS = (("focal_gamma", "cls_loss", ("ce",)), ("focal_alpha", "cls_loss", ("ce",)),
               ("smooth_l1_sigma", "box_loss", ("l1",)), ("neg_pos_ratio", "neg_sampling", ("all",)))


def active_params(cfg: RunConfig) -> dict[str, Any]:
    """The config's fields without the knobs that have no effect under its other settings (focal γ and α under
    cross-entropy, σ under L1, the ratio when every negative counts): what MLflow shows as the run's params, so
    that a comparison view does not read the control's idle focal_gamma=2.0 as a focal setting. The whole config
    is kept beside it as the run's config.json."""
    params = dataclasses.asdict(cfg)
    for knob, decider, idle in IDLE_UNLESS:
        if params[decider] in idle:
            del params[knob]
    return params
