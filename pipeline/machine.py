"""What a run runs on: the device a config names, resolved; and what a measurement ran on, the CPU's model name
and the cores this process may use. Imports torch only when a device is resolved."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) ...'), from /proc/cpuinfo on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """The cores this process may run on (its affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_description() -> str:
    """'cpu: AMD EPYC (2 cores)': the 2-core machines differ (Intel Xeon, AMD EPYC), so a time names which."""
    return f"cpu: {cpu_model()} ({cpu_cores()} cores)"


DEVICES_JOIN = " and "  # between the machines a study ran on, in its reports (devices_text, split_devices)


def devices_list(attrs: dict) -> list[str]:
    """The machines a study's runs were trained on, from its user attributes, in the order first used: the list
    ``devices_used`` (record_device in pipeline.study.optuna_study), with ``device_used`` added where a checkout from
    before the list (which wrote only that one) resumed the study since."""
    used = [d for d in attrs.get("devices_used") or [] if d]
    latest = attrs.get("device_used")
    return used + ([latest] if latest and latest not in used else [])


def devices_used(attrs: dict, description: str) -> list[str]:
    """devices_list with ``description`` added: the list to store once a run is trained on ``description``. A study
    resumed on another machine (the 2-core machines differ from session to session) names both."""
    used = devices_list(attrs)
    return used + ([description] if description not in used else [])


def devices_text(attrs: dict) -> str | None:
    """'cpu: AMD EPYC (2 cores) and cpu: Intel(R) Xeon(R) Processor (2 cores)': every machine a study's runs were
    trained on; None where it recorded none."""
    return DEVICES_JOIN.join(devices_list(attrs)) or None


def split_devices(text: str | None) -> list[str]:
    """The machines in a devices_text, one each."""
    return [d for d in text.split(DEVICES_JOIN) if d] if isinstance(text, str) else []


def resolve_device(name: str) -> "torch.device":
    """'auto' is CUDA where torch sees it, else the CPU; 'cuda' without CUDA is an error, not a silent CPU run."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def device_description(device: str) -> str:
    """What the trials run on, for the report: 'cpu: AMD EPYC (2 cores)' or the GPU's name."""
    import torch

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return torch.cuda.get_device_name(resolved)
    return cpu_description()
