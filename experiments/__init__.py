"""One small declarative file per study. Each module defines:

- a docstring: the question, and what it is compared against (trial 0, the control);
- FIXED: overrides every trial of the study uses, the control included;
- TRIALS: default trial count per profile;
- OBJECTIVE: the metric maximised;
- space(trial, base): the trial.suggest_* calls, returning RunConfig overrides;
- sampler(seed): the Optuna sampler, with the reason for it in the docstring;
- PRUNE (default True): False for a grid, where every configuration is part of the answer and a
  pruned one would be a missing answer.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

# BruteForceSampler and TPE's group option are stable in practice; Optuna still flags them experimental.
warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
warnings.filterwarnings("ignore", message=".*experimental.*")


@dataclass(frozen=True)
class Study:
    name: str  # user-facing, e.g. "focal-loss"
    question: str  # the module docstring
    fixed: dict[str, Any]
    trials: dict[str, int]  # profile -> default trial count
    objective: str
    space: Callable  # (trial, base RunConfig) -> dict of overrides
    sampler: Callable  # (seed) -> optuna sampler
    prune: bool = True  # whether the median pruner may stop this study's trials early

    @classmethod
    def from_module(cls, module: ModuleType) -> "Study":
        return cls(name=module.__name__.rsplit(".", 1)[-1].replace("_", "-"), question=(module.__doc__ or "").strip(),
                   fixed=dict(getattr(module, "FIXED", {})), trials=dict(module.TRIALS),
                   objective=getattr(module, "OBJECTIVE", "val/map"), space=module.space, sampler=module.sampler,
                   prune=getattr(module, "PRUNE", True))


def names() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> Study:
    """The study called ``name``; KeyError lists the valid names."""
    if name not in names():
        raise KeyError(f"unknown variant {name!r}; valid variants: {', '.join(names())}")
    return Study.from_module(importlib.import_module(f"{__name__}.{name.replace('-', '_')}"))
