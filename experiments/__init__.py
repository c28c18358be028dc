"""One small declarative file per variant. Each module defines:

- a docstring: the question, and what it is compared against (trial 0, the control);
- FIXED: overrides every trial of the variant uses, the control included;
- FIXED_BY_PROFILE (optional): more such overrides for one profile only, e.g. {"quick": {"image_size": 128}};
- TRIALS: default trial count per profile;
- OBJECTIVE: the metric maximised;
- space(trial, base): the trial.suggest_* calls, returning RunConfig overrides;
- sampler(seed): the Optuna sampler, with the reason for it in the docstring;
- EXERCISE (optional, default True): False for a question about the tool itself rather than one of the
  chapter's exercises (bf16 against fp32, say): the answer sheet leaves it out.

A variant may instead ask its question as a designed contrast, with no search: CELLS names each cell's RunConfig
overrides ({} is the control, the chapter's configuration), and CONTRASTS names each contrast that answers the
question as weights over cells that sum to 0 (a main effect at matched balance: {"focal, box 4": 1, "ce, box 4":
-1}; an interaction: four cells, +1 -1 -1 +1). ``sweep VARIANT --decide`` trains every cell on the same new seeds
and decides each contrast on those paired seeds (pipeline.stats.contrasts). SECONDARY (optional) names more
metrics, as OBJECTIVE does ("val/map_small"): each contrast is also reported on them, on the same seeds, with its
own interval; they never decide when to stop. ANSWERS (optional) names the exercise a contrast answers
({"box 4 against the chapter": "loss-weights"}, for a contrast of one setting against the control): the answer
sheet then lists that contrast's verdict as one of the exercise's, at the design's profile. A cell's knob may be
set relative to the profile, ``Scaled(1.5)``: the control's value times 1.5 (an input side rounded to 32 px), so
"input x1.5" asks the same question at every profile (128 against 192 px at one, 256 against 384 at another).
Such a file sets no TRIALS, space or sampler.

Any other upper-case name must be a constant that ``space`` or ``sampler`` uses (a grid's values, say):
a typo such as ``OBJECTVE`` would otherwise be ignored in silence, so it is refused, naming the file.
Whether the median pruner may stop a variant's trials follows from its sampler: a grid never prunes,
because every configuration is part of the answer and a pruned one would be a missing answer.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import warnings
import dataclasses
from dataclasses import dataclass
from types import CodeType, ModuleType
from typing import Any, Callable

import optuna

from pipeline.metric_names import objective_choices

# BruteForceSampler and TPE's group option are stable in practice; Optuna still flags them experimental.
warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
warnings.filterwarnings("ignore", message=".*experimental.*")


@dataclass(frozen=True)
class Scaled:
    """A designed cell's knob set relative to the profile: the control's value times ``factor``."""
    factor: float

    def __str__(self) -> str:
        return f"x{self.factor:g} the profile's"


def resolve_cell(overrides: dict[str, Any], base: Any) -> dict[str, Any]:
    """A cell's overrides at the control's configuration ``base`` (a RunConfig): each Scaled value made a number."""
    from pipeline.config import scaled_value

    return {knob: scaled_value(knob, getattr(base, knob), value.factor) if isinstance(value, Scaled) else value
            for knob, value in overrides.items()}


@dataclass(frozen=True)
class Variant:
    name: str  # user-facing, e.g. "focal-loss"
    question: str  # the module docstring
    fixed: dict[str, Any]
    trials: dict[str, int]  # profile -> default trial count
    objective: str
    space: Callable  # (trial, base RunConfig) -> dict of overrides
    sampler: Callable  # (seed) -> optuna sampler
    prune: bool = True  # whether the median pruner may stop this variant's trials early
    fixed_by_profile: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    exercise: bool = True  # one of the chapter's exercises, so a line of the answer sheet
    cells: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # a designed contrast's cells
    contrasts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # name -> cell weights
    secondary: tuple[str, ...] = ()  # a designed contrast's secondary outcomes (metrics, as objective)
    answers: dict[str, str] = dataclasses.field(default_factory=dict)  # contrast -> the exercise it answers

    @property
    def is_design(self) -> bool:
        """A question asked as contrasts over cells, with no search."""
        return bool(self.cells)

    def cells_for(self, base: Any) -> dict[str, dict[str, Any]]:
        """A design's cells at the control's configuration ``base`` (a RunConfig), Scaled knobs resolved."""
        return {name: resolve_cell(overrides, base) for name, overrides in self.cells.items()}

    def fixed_for(self, profile: str) -> dict[str, Any]:
        """The overrides every trial of this variant uses under ``profile``, the control included."""
        return {**self.fixed, **self.fixed_by_profile.get(profile, {})}

    @classmethod
    def from_module(cls, module: ModuleType) -> "Variant":
        if hasattr(module, "CELLS"):
            return cls._design(module)
        check_names(module)
        sampler = module.sampler
        return cls(name=module.__name__.rsplit(".", 1)[-1].replace("_", "-"), question=(module.__doc__ or "").strip(),
                   fixed=dict(getattr(module, "FIXED", {})), trials=dict(module.TRIALS),
                   objective=getattr(module, "OBJECTIVE", "val/map"), space=module.space, sampler=sampler,
                   prune=not isinstance(sampler(0), optuna.samplers.GridSampler),
                   fixed_by_profile=dict(getattr(module, "FIXED_BY_PROFILE", {})),
                   exercise=bool(getattr(module, "EXERCISE", True)))


    @classmethod
    def _design(cls, module: ModuleType) -> "Variant":
        check_design(module)
        return cls(name=module.__name__.rsplit(".", 1)[-1].replace("_", "-"), question=(module.__doc__ or "").strip(),
                   fixed=dict(getattr(module, "FIXED", {})), trials={}, objective=getattr(module, "OBJECTIVE", "val/map"),
                   space=None, sampler=None, prune=False, fixed_by_profile=dict(getattr(module, "FIXED_BY_PROFILE", {})),
                   exercise=bool(getattr(module, "EXERCISE", True)), cells={k: dict(v) for k, v in module.CELLS.items()},
                   contrasts={k: dict(v) for k, v in module.CONTRASTS.items()},
                   secondary=tuple(getattr(module, "SECONDARY", ())), answers=dict(getattr(module, "ANSWERS", {})))


SETTINGS = {"FIXED", "FIXED_BY_PROFILE", "TRIALS", "OBJECTIVE", "EXERCISE"}  # the upper-case names a variant's module may set
DESIGN_SETTINGS = {"FIXED", "FIXED_BY_PROFILE", "OBJECTIVE", "EXERCISE", "CELLS", "CONTRASTS", "SECONDARY", "ANSWERS"}
REQUIRED = {"TRIALS", "space", "sampler"}


class VariantFileError(ValueError):
    """A variant's file that does not follow the format above: names the file and the name."""


def _names_used(code: CodeType) -> set[str]:
    """Global names a function's code reads, its nested comprehensions and lambdas included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names_used(const)
    return names


def check_names(module: ModuleType) -> None:
    """Refuse a variant's module with a missing part, or an upper-case name that is neither a setting nor used."""
    where = getattr(module, "__file__", module.__name__)
    missing = sorted(name for name in REQUIRED if not hasattr(module, name))
    if missing:
        raise VariantFileError(f"{where}: missing {', '.join(missing)}")
    used = _names_used(module.space.__code__) | _names_used(module.sampler.__code__)
    from pipeline.config import PROFILES
    unknown = sorted(set(getattr(module, "FIXED_BY_PROFILE", {})) - set(PROFILES))
    if unknown:
        raise VariantFileError(f"{where}: FIXED_BY_PROFILE names unknown profile(s) {', '.join(map(repr, unknown))}; "
                               f"the profiles are {', '.join(PROFILES)}")
    objectives = objective_choices()
    if getattr(module, "OBJECTIVE", "val/map") not in objectives:
        raise VariantFileError(f"{where}: OBJECTIVE {module.OBJECTIVE!r} is not a metric a trial logs; "
                               f"one of {', '.join(objectives)}")
    if not isinstance(getattr(module, "EXERCISE", True), bool):
        raise VariantFileError(f"{where}: EXERCISE must be True or False, not {module.EXERCISE!r}")
    for name in vars(module):
        if name.isupper() and name not in SETTINGS and name not in used:
            raise VariantFileError(f"{where}: unknown setting {name}; a variant sets {', '.join(sorted(SETTINGS))}, "
                                   "and any other upper-case constant must be used by space() or sampler()")


def check_design(module: ModuleType) -> None:
    """Refuse a designed variant whose cells or contrasts do not make a question: an unknown knob, a contrast over
    a cell that is not there, or weights that do not sum to 0; names the file and what is wrong."""
    from pipeline.config import RunConfig

    import difflib

    where = getattr(module, "__file__", module.__name__)
    if any(hasattr(module, name) for name in ("space", "sampler", "TRIALS")):
        raise VariantFileError(f"{where}: a variant with CELLS is a designed contrast, with no search: it sets no "
                               "TRIALS, space or sampler")
    for name in vars(module):  # helper constants are fine; a setting's typo (OBJECTVE) is not
        close = difflib.get_close_matches(name, SETTINGS | DESIGN_SETTINGS, n=1, cutoff=0.8) if name.isupper() else []
        if close and name not in DESIGN_SETTINGS:
            raise VariantFileError(f"{where}: {name} is not a setting of a designed contrast: did you mean "
                                   f"{close[0]}? It sets {', '.join(sorted(DESIGN_SETTINGS))}")
    knobs = {f.name for f in dataclasses.fields(RunConfig)}
    objectives = objective_choices()
    objective, secondary = getattr(module, "OBJECTIVE", "val/map"), list(getattr(module, "SECONDARY", ()))
    for metric in [objective, *secondary]:
        if metric not in objectives:
            raise VariantFileError(f"{where}: {metric!r} (OBJECTIVE or SECONDARY) is not a metric a trial logs; "
                                   f"one of {', '.join(objectives)}")
    if objective in secondary or len(set(secondary)) < len(secondary):
        raise VariantFileError(f"{where}: SECONDARY {tuple(secondary)!r} repeats a metric, or the OBJECTIVE "
                               f"{objective!r}: each secondary outcome is another metric, once")
    if not getattr(module, "CONTRASTS", None):
        raise VariantFileError(f"{where}: CELLS without CONTRASTS: name the differences that answer the question")
    if {} not in [dict(v) for v in module.CELLS.values()]:
        raise VariantFileError(f"{where}: no cell is the control ({{}}, the chapter's configuration)")
    for cell, overrides in module.CELLS.items():
        bad = sorted(set(overrides) - knobs)
        if bad:
            raise VariantFileError(f"{where}: cell {cell!r} sets unknown knob(s) {', '.join(bad)}; see `cli.py knobs`")
        _check_scaled(cell, overrides, where)
    for name, weights in module.CONTRASTS.items():
        missing = sorted(set(weights) - set(module.CELLS))
        if missing:
            raise VariantFileError(f"{where}: contrast {name!r} names cell(s) {', '.join(map(repr, missing))} that "
                                   f"CELLS does not have; the cells are {', '.join(map(repr, module.CELLS))}")
        if abs(sum(weights.values())) > 1e-9 or not any(weights.values()):
            raise VariantFileError(f"{where}: contrast {name!r}: its weights sum to {sum(weights.values()):g}, not 0 "
                                   "(a contrast compares cells: +1 for one, -1 for another)")
    check_answers(module, where)


def _check_scaled(cell: str, overrides: dict[str, Any], where: str) -> None:
    """A Scaled knob must be a number, with a positive finite factor."""
    from pipeline.config import knob_type

    for knob, value in overrides.items():
        if not isinstance(value, Scaled):
            continue
        factor = value.factor
        if isinstance(factor, bool) or not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise VariantFileError(f"{where}: cell {cell!r}: {knob} = Scaled({value.factor!r}): the factor must be a "
                                   "positive number")
        if knob_type(knob)[0] not in (int, float):
            raise VariantFileError(f"{where}: cell {cell!r}: {knob} is not a number, so it cannot be Scaled; "
                                   "give its value")


def check_answers(module: ModuleType, where: str) -> None:
    """ANSWERS maps contrasts of one cell against the control to variants that exist."""
    control = next(cell for cell, overrides in module.CELLS.items() if not overrides)
    for contrast, exercise in getattr(module, "ANSWERS", {}).items():
        if one_cell_against(module.CONTRASTS.get(contrast, {}), control) is None:
            raise VariantFileError(f"{where}: ANSWERS names {contrast!r}, which is not a contrast of one cell against "
                                   f"the control {control!r} (+1 for the cell, -1 for the control)")
        if exercise not in names() or not _is_searched_exercise(exercise):
            raise VariantFileError(f"{where}: ANSWERS maps {contrast!r} to {exercise!r}, which is not an exercise "
                                   f"with a search; those are {', '.join(n for n in names() if _is_searched_exercise(n))}")


def one_cell_against(weights: dict[str, float], control: str | None) -> str | None:
    """The cell of a contrast of one cell (+1) against the control (-1); None for any other contrast."""
    if sorted(weights.values()) != [-1, 1] or weights.get(control) != -1:
        return None
    return next(cell for cell, weight in weights.items() if weight == 1)


def _is_searched_exercise(name: str) -> bool:
    """Whether the variant's file runs a search for one of the chapter's exercises (read without load(), which
    would check a design's ANSWERS again)."""
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return not hasattr(module, "CELLS") and getattr(module, "EXERCISE", True) is True


def names() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def searches() -> list[str]:
    """The variants that run a search (all but the designed contrasts)."""
    return [name for name in names() if not load(name).is_design]


def exercises() -> list[str]:
    """The variants that answer one of the chapter's exercises (all but those with EXERCISE = False)."""
    return [name for name in names() if load(name).exercise]


def load(name: str) -> Variant:
    """The variant called ``name``; KeyError lists the valid names."""
    if name not in names():
        raise KeyError(f"unknown variant {name!r}; valid variants: {', '.join(names())}")
    return Variant.from_module(importlib.import_module(f"{__name__}.{name.replace('-', '_')}"))
