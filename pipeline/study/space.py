"""A variant's search space, described: every parameter its space function can suggest, with its distribution."""

from __future__ import annotations

from typing import Any

import experiments
from pipeline.config import RunConfig


class SpaceRecorder:
    """A stand-in trial that records the suggest_* calls of a space: the variant's search space, described.

    A categorical returns the choice that ``plan`` names for it (by index; the first otherwise), so
    that :func:`describe_space` can walk the branches of a conditional space."""

    def __init__(self, plan: dict[str, int] | None = None):
        self.plan = plan or {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.categoricals: list[tuple[str, int]] = []  # (name, number of choices), in the order met

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.calls[name] = {"type": "float", "low": low, "high": high, "log": log, "step": step}
        return low

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.calls[name] = {"type": "int", "low": low, "high": high, "log": log, "step": step}
        return low

    def suggest_categorical(self, name, choices):
        self.calls[name] = {"type": "categorical", "choices": list(choices)}
        self.categoricals.append((name, len(choices)))
        return choices[self.plan.get(name, 0)]


MAX_SPACE_BRANCHES = 10_000  # combinations of categorical choices walked; the largest variant here has 60


def describe_space(variant: experiments.Variant, base: RunConfig) -> dict[str, dict[str, Any]]:
    """Every parameter the space can suggest, with its distribution: each combination of categorical
    choices is tried, so a parameter that only one branch suggests (focal_gamma when cls_loss is
    focal) is recorded too. A branch chosen by the value of a float or int is not walked."""
    calls: dict[str, dict[str, Any]] = {}
    pending, seen = [{}], set()
    while pending and len(seen) < MAX_SPACE_BRANCHES:
        plan = pending.pop()
        if frozenset(plan.items()) in seen:
            continue
        seen.add(frozenset(plan.items()))
        recorder = SpaceRecorder(plan)
        variant.space(recorder, base)
        for name, distribution in recorder.calls.items():
            calls.setdefault(name, distribution)
        pending += [{**plan, name: i} for name, n in recorder.categoricals if name not in plan for i in range(1, n)]
    return dict(sorted(calls.items()))
