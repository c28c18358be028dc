"""What a measurement ran on: the CPU's model name and the cores this process may use."""

from __future__ import annotations

import os
import platform
from pathlib import Path


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
